//! hostPath volumes: which host paths a pod may mount ([`HostPathPolicy`])
//! and the kubelet's `type` checks (`DirectoryOrCreate`, `File`, `Socket`,
//! ...).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Which host paths hostPath volumes may name.
///
/// The default allows every path except `/proc`, `/sys` and `/dev`, what is
/// under them, and their ancestors (`/` would expose them too, since
/// volumes are bind-mounted recursively). The agent adds its own state,
/// data and image directories with [`deny`](Self::deny), so no pod can
/// reach other pods' volumes or the containers' root filesystems. A
/// non-empty `allowed` list further restricts hostPaths to paths under one
/// of its prefixes. Paths are compared after resolving symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathPolicy {
    /// When not empty, a hostPath must be one of these or under one.
    pub allowed: Vec<PathBuf>,
    /// A hostPath may be none of these, under none and above none.
    pub denied: Vec<PathBuf>,
}

impl Default for HostPathPolicy {
    fn default() -> Self {
        HostPathPolicy {
            allowed: Vec::new(),
            denied: ["/proc", "/sys", "/dev"].map(PathBuf::from).to_vec(),
        }
    }
}

impl HostPathPolicy {
    /// Adds a denied path (an agent directory).
    pub fn deny(mut self, path: impl Into<PathBuf>) -> Self {
        self.denied.push(path.into());
        self
    }

    /// Adds an allowed prefix (making the allow-list effective).
    pub fn allow(mut self, path: impl Into<PathBuf>) -> Self {
        self.allowed.push(path.into());
        self
    }

    /// Why `path` (absolute, symlinks resolved) may not be mounted; `None`
    /// when it may.
    pub fn refusal(&self, path: &Path) -> Option<String> {
        for denied in &self.denied {
            let denied = resolve(denied).unwrap_or_else(|_| denied.clone());
            if path.starts_with(&denied) {
                return Some(format!("{} is denied", denied.display()));
            }
            if denied.starts_with(path) {
                return Some(format!("it contains {}, which is denied", denied.display()));
            }
        }
        let allowed = |p: &PathBuf| path.starts_with(resolve(p).unwrap_or_else(|_| p.clone()));
        if !self.allowed.is_empty() && !self.allowed.iter().any(allowed) {
            return Some("it is under no allowed host path prefix".to_string());
        }
        None
    }
}

/// The path with symlinks resolved, also when its last components do not
/// exist yet (the existing ancestor is resolved, the rest appended). The
/// path must be absolute and free of `..`.
pub fn resolve(path: &Path) -> io::Result<PathBuf> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "must be an absolute path without '..'",
        ));
    }
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    loop {
        match fs::canonicalize(&existing) {
            Ok(resolved) => {
                return Ok(missing.iter().rev().fold(resolved, |p, c| p.join(c)));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name() else {
                    return Err(e);
                };
                missing.push(name.to_os_string());
                existing.pop();
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies the kubelet's check of hostPath `type` to `path`, creating it
/// for the `...OrCreate` types (and, as container runtimes do, a missing
/// path of type `""` as a directory). The error text is the kubelet's.
pub fn check_type(path: &Path, kind: &str) -> Result<(), String> {
    let meta = fs::metadata(path);
    let exists = meta.is_ok();
    let ft = meta.as_ref().ok().map(|m| m.file_type());
    let is = |f: fn(&fs::FileType) -> bool| ft.as_ref().is_some_and(f);
    let fail = |what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        ))
    };
    match kind {
        "" if !exists => make_dir(path),
        "" => Ok(()),
        "DirectoryOrCreate" if !exists => make_dir(path),
        "DirectoryOrCreate" | "Directory" if is(fs::FileType::is_dir) => Ok(()),
        "DirectoryOrCreate" | "Directory" => fail("a directory"),
        "FileOrCreate" if !exists => make_file(path),
        "FileOrCreate" | "File" if is(fs::FileType::is_file) => Ok(()),
        "FileOrCreate" | "File" => fail("a file"),
        "Socket" if is(FileTypeExt::is_socket) => Ok(()),
        "Socket" => fail("a socket file"),
        "CharDevice" if is(FileTypeExt::is_char_device) => Ok(()),
        "CharDevice" => fail("a character device"),
        "BlockDevice" if is(FileTypeExt::is_block_device) => Ok(()),
        "BlockDevice" => fail("a block device"),
        other => Err(format!("{other} is an invalid volume type")),
    }
}

fn make_dir(path: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("creating directory {}: {e}", path.display()))
}

fn make_file(path: &Path) -> Result<(), String> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map(drop)
        .map_err(|e| format!("creating file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_denies_kernel_filesystems_and_their_ancestors() {
        let policy = HostPathPolicy::default().deny("/var/lib/orch");
        assert!(policy.refusal(Path::new("/proc/1")).is_some());
        assert!(policy.refusal(Path::new("/sys")).is_some());
        assert!(policy.refusal(Path::new("/")).is_some());
        assert!(policy.refusal(Path::new("/var/lib/orch/pods")).is_some());
        assert!(policy.refusal(Path::new("/var")).is_some());
        assert_eq!(policy.refusal(Path::new("/var/log")), None);
        assert_eq!(policy.refusal(Path::new("/tmp/x")), None);
        let strict = policy.allow("/srv");
        assert_eq!(strict.refusal(Path::new("/srv/data")), None);
        assert_eq!(
            strict.refusal(Path::new("/tmp/x")).unwrap(),
            "it is under no allowed host path prefix"
        );
    }

    #[test]
    fn resolve_follows_symlinks_of_existing_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(tmp.path()).unwrap();
        std::os::unix::fs::symlink("/proc", real.join("sneaky")).unwrap();
        assert_eq!(
            resolve(&real.join("sneaky/sys")).unwrap(),
            Path::new("/proc/sys")
        );
        assert_eq!(
            resolve(&real.join("new/dir")).unwrap(),
            real.join("new/dir")
        );
        assert!(resolve(Path::new("relative")).is_err());
        assert!(resolve(&real.join("a/../b")).is_err());
    }

    #[test]
    fn type_checks_match_the_kubelet() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("made/dir");
        check_type(&dir, "DirectoryOrCreate").unwrap();
        assert!(dir.is_dir());
        check_type(&dir, "Directory").unwrap();
        let file = tmp.path().join("f");
        check_type(&file, "FileOrCreate").unwrap();
        assert!(file.is_file());
        check_type(&file, "File").unwrap();
        assert_eq!(
            check_type(&file, "Directory").unwrap_err(),
            format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            )
        );
        assert_eq!(
            check_type(&dir, "Socket").unwrap_err(),
            format!(
                "hostPath type check failed: {} is not a socket file",
                dir.display()
            )
        );
        assert!(check_type(&tmp.path().join("missing"), "File").is_err());
        assert!(check_type(&file, "Bogus").is_err());
        let plain = tmp.path().join("plain");
        check_type(&plain, "").unwrap();
        assert!(plain.is_dir());
    }
}
