//! Container log files.
//!
//! Layout: `<log dir>/<namespace>_<pod name>_<pod uid>/<container>/<attempt>.log`
//! (the kubelet's layout), one file per run of a container, so the previous
//! run's output stays readable (`kubectl logs --previous`).
//!
//! Format: plain text, exactly the bytes the container wrote. The file is
//! opened `O_APPEND` and its descriptor handed to libcontainer as the
//! container's stdout and stderr, so the kernel writes into it directly: no
//! copying process or thread, nothing lost when the agent restarts, and
//! stdout and stderr interleave in write order. What this gives up against
//! CRI-style lines (`<RFC3339Nano> stdout F <line>`): per-line timestamps
//! (`kubectl logs --timestamps`, `--since`) and the stream of each line.
//!
//! Rotation ([`rotate`]) is copy-and-truncate, since the container keeps its
//! descriptor: a file over the size limit is copied to `<attempt>.log.1`
//! (older copies shift to `.2`, `.3`, ... and the oldest beyond the limit of
//! files is removed) and truncated in place; `O_APPEND` makes the
//! container's next write land at the new start. Bytes written between the
//! last copy and the truncation are lost: the copy is repeated until the
//! file stops growing, which keeps that window to one read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::{PodError, Result};
use super::sandbox::SandboxConfig;

/// The directory of a pod's logs.
pub fn pod_dir(log_dir: &Path, pod: &SandboxConfig) -> PathBuf {
    log_dir.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
}

/// The log file of one run of a container.
pub fn container_log(
    log_dir: &Path,
    pod: &SandboxConfig,
    container: &str,
    attempt: u32,
) -> PathBuf {
    pod_dir(log_dir, pod)
        .join(container)
        .join(format!("{attempt}.log"))
}

/// Opens (creating) a log file for appending, close-on-exec (libcontainer
/// duplicates it onto the container's stdout and stderr).
pub fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(PodError::io(format!("creating {}", dir.display())))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(PodError::io(format!("opening log file {}", path.display())))
}

/// The `n`th rotated copy of `log` (`<attempt>.log.<n>`).
pub fn rotated(log: &Path, n: usize) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `log` if it is larger than `max_bytes`, keeping at most
/// `max_files` files in all (the live one and `max_files - 1` copies; at
/// least one copy is kept). Returns whether it rotated.
pub fn rotate(log: &Path, max_bytes: u64, max_files: usize) -> io::Result<bool> {
    let mut file = match OpenOptions::new().read(true).write(true).open(log) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() <= max_bytes {
        return Ok(false);
    }
    let copies = max_files.saturating_sub(1).max(1);
    match fs::remove_file(rotated(log, copies)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for n in (1..copies).rev() {
        match fs::rename(rotated(log, n), rotated(log, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let target = rotated(log, 1);
    let mut copy = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o640)
        .open(&target)?;
    // Copy until a pass finds nothing new, then cut.
    let mut copied = 0u64;
    loop {
        file.seek(SeekFrom::Start(copied))?;
        let n = io::copy(&mut file, &mut copy)?;
        copied += n;
        if n == 0 {
            break;
        }
    }
    copy.flush()?;
    file.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_over_its_limit_is_copied_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let mut writer = open(&log).unwrap();
        writer.write_all(b"first\n").unwrap();
        assert!(!rotate(&log, 100, 3).unwrap(), "under the limit");
        writer.write_all(&[b'a'; 200]).unwrap();
        assert!(rotate(&log, 100, 3).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(fs::read(rotated(&log, 1)).unwrap().len(), 206);
        // The writer's next bytes land at the start of the live file.
        writer.write_all(b"after\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "after\n");

        writer.write_all(&[b'b'; 200]).unwrap();
        assert!(rotate(&log, 100, 3).unwrap());
        writer.write_all(&[b'c'; 200]).unwrap();
        assert!(rotate(&log, 100, 3).unwrap());
        // Three files in all: the live one and two copies, newest first.
        assert!(fs::read(rotated(&log, 1)).unwrap().starts_with(b"c"));
        assert!(fs::read(rotated(&log, 2)).unwrap().starts_with(b"after"));
        assert!(!rotated(&log, 3).exists());
        assert!(!rotate(&dir.path().join("missing.log"), 1, 2).unwrap());
    }
}
