//! Atomic updates of a volume's files, as the kubelet's AtomicWriter makes
//! them. In the volume's directory:
//!
//! ```text
//! ..2024_05_01_10_20_30.k3Xa9q/   the files of the current version
//! ..data -> ..2024_05_01_10_20_30.k3Xa9q
//! app.conf -> ..data/app.conf      one symlink per top-level entry
//! conf.d -> ..data/conf.d
//! ```
//!
//! An update writes the new version into a new timestamped directory, points
//! a new `..data_tmp` link at it and renames that over `..data` (a rename
//! is atomic), then adds and removes the top-level links and deletes the old
//! version. A reader going through the links sees either the whole old
//! version or the whole new one, never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The link to the current version's directory.
pub const DATA_LINK: &str = "..data";
/// The new link, renamed over [`DATA_LINK`].
const DATA_TMP_LINK: &str = "..data_tmp";
/// The longest relative path of a file.
const MAX_PATH: usize = 4096;
/// The longest name of one path element.
const MAX_NAME: usize = 255;

/// One file of a volume: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// The content.
    pub data: Vec<u8>,
    /// Permission bits (`0o644`).
    pub mode: u32,
}

/// A volume's files by relative path (`a.conf`, `dir/b.conf`).
pub type Payload = BTreeMap<String, FileProjection>;

/// Why a payload could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    /// A payload path is empty, absolute, contains `..` or starts with `..`.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file system step failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        /// The step (`writing`, `renaming`, ...).
        step: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AtomicWriteError {
    let path = path.to_path_buf();
    move |source| AtomicWriteError::Io { step, path, source }
}

/// Writes `payload` into `dir` atomically (see the module's doc); returns
/// whether anything changed (an identical payload writes nothing).
pub fn write(dir: &Path, payload: &Payload) -> Result<bool, AtomicWriteError> {
    let payload = clean_payload(payload)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("creating", dir))?;
    let old = current_version(dir);
    if let Some(old) = &old {
        if version_matches(&dir.join(old), &payload) {
            return Ok(false);
        }
    }
    let version = new_version_dir(dir)?;
    write_files(&dir.join(&version), &payload)?;
    swap_data_link(dir, &version)?;
    let visible = top_level_names(&payload);
    link_visible(dir, &visible)?;
    remove_stale(dir, &visible)?;
    if let Some(old) = old {
        let old = dir.join(old);
        fs::remove_dir_all(&old).map_err(io_err("removing", &old))?;
    }
    tracing::debug!(dir = %dir.display(), %version, files = payload.len(), "volume files updated");
    Ok(true)
}

/// The name of the directory `..data` points to, if any.
pub fn current_version(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join(DATA_LINK)).ok()?;
    Some(target.to_str()?.to_string())
}

/// A path of a payload made canonical (`./a//b` -> `a/b`), or refused as
/// the kubelet refuses it.
pub fn clean_path(path: &str) -> Result<String, AtomicWriteError> {
    let invalid = |reason| AtomicWriteError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.starts_with('/') {
        return Err(invalid("must be a relative path"));
    }
    if path.len() > MAX_PATH {
        return Err(invalid("must be at most 4096 characters"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if parts.contains(&"..") {
        return Err(invalid("must not contain '..'"));
    }
    if parts.iter().any(|p| p.len() > MAX_NAME) {
        return Err(invalid("file names must be at most 255 characters"));
    }
    if parts[0].starts_with("..") {
        return Err(invalid("must not start with '..'"));
    }
    Ok(parts.join("/"))
}

fn clean_payload(payload: &Payload) -> Result<Payload, AtomicWriteError> {
    payload
        .iter()
        .map(|(path, file)| Ok((clean_path(path)?, file.clone())))
        .collect()
}

/// True when the version directory holds exactly the payload's files, with
/// the same bytes and modes.
fn version_matches(version: &Path, payload: &Payload) -> bool {
    let mut found = BTreeMap::new();
    if collect_files(version, "", &mut found).is_err() {
        return false;
    }
    found.len() == payload.len()
        && payload.iter().all(|(path, file)| {
            found.get(path) == Some(&file.mode)
                && fs::read(version.join(path)).is_ok_and(|d| d == file.data)
        })
}

/// Regular files under `dir` by relative path, with their permission bits.
fn collect_files(dir: &Path, prefix: &str, out: &mut BTreeMap<String, u32>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = entry.metadata()?;
        if meta.is_dir() {
            collect_files(&entry.path(), &rel, out)?;
        } else {
            out.insert(rel, meta.permissions().mode() & 0o7777);
        }
    }
    Ok(())
}

/// Creates `..<UTC time>.<random>` in `dir`, mode 0755; returns its name.
fn new_version_dir(dir: &Path) -> Result<String, AtomicWriteError> {
    let prefix = format!("..{}.", timestamp(SystemTime::now()));
    let created = tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(6)
        .tempdir_in(dir)
        .map_err(io_err("creating a version directory in", dir))?
        .keep();
    fs::set_permissions(&created, fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", &created))?;
    let name = created.file_name().and_then(|n| n.to_str());
    Ok(name
        .expect("a name made of the prefix and ASCII")
        .to_string())
}

fn write_files(version: &Path, payload: &Payload) -> Result<(), AtomicWriteError> {
    for (path, file) in payload {
        let target = version.join(path);
        if let Some(parent) = target.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_err("creating", parent))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&target)
            .map_err(io_err("creating", &target))?;
        f.write_all(&file.data)
            .map_err(io_err("writing", &target))?;
        // The umask may have taken bits away.
        f.set_permissions(fs::Permissions::from_mode(file.mode))
            .map_err(io_err("setting the mode of", &target))?;
    }
    Ok(())
}

/// Points `..data` at `version` with one rename.
fn swap_data_link(dir: &Path, version: &str) -> Result<(), AtomicWriteError> {
    let tmp = dir.join(DATA_TMP_LINK);
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("removing", &tmp)(e)),
        _ => {}
    }
    std::os::unix::fs::symlink(version, &tmp).map_err(io_err("linking", &tmp))?;
    let data = dir.join(DATA_LINK);
    fs::rename(&tmp, &data).map_err(io_err("renaming", &data))
}

fn top_level_names(payload: &Payload) -> BTreeSet<String> {
    payload
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p).to_string())
        .collect()
}

/// Creates `name -> ..data/name` for each top-level entry lacking one.
fn link_visible(dir: &Path, names: &BTreeSet<String>) -> Result<(), AtomicWriteError> {
    for name in names {
        let link = dir.join(name);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        let target = Path::new(DATA_LINK).join(name);
        std::os::unix::fs::symlink(&target, &link).map_err(io_err("linking", &link))?;
    }
    Ok(())
}

/// Removes top-level entries (other than the `..` ones) the payload no
/// longer has.
fn remove_stale(dir: &Path, names: &BTreeSet<String>) -> Result<(), AtomicWriteError> {
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let entry = entry.map_err(io_err("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || names.contains(&name) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_err("removing", &path))?;
    }
    Ok(())
}

/// `2006_01_02_15_04_05` in UTC, the kubelet's format of version names.
fn timestamp(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}_{m:02}_{d:02}_{hh:02}_{mm:02}_{ss:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn payload(entries: &[(&str, &str, u32)]) -> Payload {
        entries
            .iter()
            .map(|(p, d, m)| (p.to_string(), file(d, *m)))
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("..2"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(clean_path("a").unwrap(), "a");
        assert_eq!(clean_path("./a//b/").unwrap(), "a/b");
        assert_eq!(
            clean_path("..a/b").unwrap_err().to_string(),
            "invalid path \"..a/b\": must not start with '..'"
        );
        assert!(clean_path("/etc/passwd").is_err());
        assert!(clean_path("a/../../b").is_err());
        assert!(clean_path("").is_err());
        assert!(clean_path("..").is_err());
        assert!(clean_path(&"x".repeat(256)).is_err());
        assert!(clean_path("a/..data").is_ok());
    }

    #[test]
    fn timestamps_are_utc_calendar_times() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970_01_01_00_00_00");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // leap day 2024
        assert_eq!(timestamp(t), "2024_02_29_12_34_56");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(t), "2000_02_29_00_00_00");
    }

    #[test]
    fn writes_link_through_data_and_swap_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let first = payload(&[("a.conf", "one", 0o644), ("d/b", "two", 0o400)]);
        assert!(write(&dir, &first).unwrap());
        assert_eq!(names(&dir), ["..data", "a.conf", "d"]);
        assert_eq!(
            fs::read_link(dir.join("a.conf")).unwrap(),
            Path::new("..data/a.conf")
        );
        assert_eq!(fs::read_to_string(dir.join("d/b")).unwrap(), "two");
        let mode = fs::metadata(dir.join("d/b")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let v1 = current_version(&dir).unwrap();
        assert!(v1.starts_with(".."), "{v1}");

        // The same payload writes nothing.
        assert!(!write(&dir, &first).unwrap());
        assert_eq!(current_version(&dir).unwrap(), v1);

        // A new payload: a new version, stale links gone, the old version removed.
        let second = payload(&[("a.conf", "uno", 0o644), ("c", "three", 0o600)]);
        assert!(write(&dir, &second).unwrap());
        let v2 = current_version(&dir).unwrap();
        assert_ne!(v1, v2);
        assert!(!dir.join(&v1).exists());
        assert_eq!(names(&dir), ["..data", "a.conf", "c"]);
        assert_eq!(fs::read_to_string(dir.join("a.conf")).unwrap(), "uno");

        // A mode change alone is a change.
        let third = payload(&[("a.conf", "uno", 0o600), ("c", "three", 0o600)]);
        assert!(write(&dir, &third).unwrap());

        // An empty payload leaves only the data link.
        assert!(write(&dir, &Payload::new()).unwrap());
        assert_eq!(names(&dir), ["..data"]);
    }

    #[test]
    fn invalid_payloads_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = payload(&[("../escape", "x", 0o644)]);
        assert!(matches!(
            write(tmp.path(), &bad),
            Err(AtomicWriteError::InvalidPath { .. })
        ));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
