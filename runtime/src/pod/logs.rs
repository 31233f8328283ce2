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
//! Rotation, when it comes, has to be copy-and-truncate (the container keeps
//! its descriptor).

use std::fs::{self, File, OpenOptions};
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
