//! Cgroup paths, resource conversions and OOM detection.
//!
//! Every container's cgroup lives under an orch-owned parent, per pod, then
//! per container: `/<parent>/<pod uid>/<container>-<attempt>` (given to
//! libcontainer as `linux.cgroupsPath`, which it creates in every v1
//! hierarchy, or in the unified one on a v2 host). libcontainer removes the
//! container's own cgroup when the container is deleted; pod teardown removes
//! the pod's directory in every hierarchy.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::{PodError, Result};

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The CFS period orch sets with a CPU limit (Kubernetes' default), in µs.
pub const CPU_PERIOD_US: u64 = 100_000;

/// cpu.shares for a CPU request in millicores (Kubernetes' conversion:
/// 1 CPU = 1024 shares, at least 2).
pub fn cpu_shares(request_millis: u64) -> u64 {
    (request_millis.saturating_mul(1024) / 1000).max(2)
}

/// CFS quota (µs per [`CPU_PERIOD_US`]) for a CPU limit in millicores (at
/// least 1 ms, the kernel's minimum).
pub fn cpu_quota(limit_millis: u64) -> i64 {
    let quota = limit_millis.saturating_mul(CPU_PERIOD_US) / 1000;
    i64::try_from(quota.max(1000)).unwrap_or(i64::MAX)
}

/// Whether the host runs the unified (v2-only) cgroup hierarchy.
pub fn is_unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The container's cgroup path as given to libcontainer (`/orch/<uid>/<leaf>`).
pub fn container_path(parent: &str, pod_uid: &str, leaf: &str) -> PathBuf {
    PathBuf::from("/").join(parent).join(pod_uid).join(leaf)
}

/// The pod's cgroup path relative to each hierarchy (`orch/<uid>`).
pub fn pod_path(parent: &str, pod_uid: &str) -> PathBuf {
    PathBuf::from(parent).join(pod_uid)
}

/// The directories of the cgroup `rel` (relative to a hierarchy's root) that
/// exist now, one per hierarchy.
pub fn existing_dirs(rel: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(CGROUP_ROOT) else {
        return found;
    };
    if is_unified() {
        let dir = Path::new(CGROUP_ROOT).join(rel);
        if dir.is_dir() {
            found.push(dir);
        }
        return found;
    }
    for entry in entries.flatten() {
        // cpu and cpuacct are often symlinks to "cpu,cpuacct": skip the links.
        if entry.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
            continue;
        }
        let dir = entry.path().join(rel);
        if dir.is_dir() {
            found.push(dir);
        }
    }
    found
}

/// Removes the cgroup directory `rel` and everything below it in every
/// hierarchy (deepest first). A cgroup that still has processes cannot be
/// removed: the caller kills them first.
pub fn remove_tree(rel: &Path) -> Result<()> {
    for dir in existing_dirs(rel) {
        remove_dir_tree(&dir)?;
    }
    Ok(())
}

fn remove_dir_tree(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PodError::io(format!("listing {}", dir.display()))(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_dir_tree(&entry.path())?;
        }
    }
    // A cgroup whose last process just exited may be busy for a moment.
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => {
                return Err(PodError::io(format!("removing cgroup {}", dir.display()))(
                    e,
                ))
            }
        }
    }
}

/// How many times the kernel's OOM killer killed a process of the cgroup
/// `path` (libcontainer's `cgroupsPath`); 0 if it cannot tell (no cgroup, an
/// old kernel without the counter).
pub fn oom_kills(path: &Path) -> u64 {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let root = Path::new(CGROUP_ROOT);
    let (file, key) = if is_unified() {
        (root.join(rel).join("memory.events"), "oom_kill")
    } else {
        (
            root.join("memory").join(rel).join("memory.oom_control"),
            "oom_kill",
        )
    };
    let Ok(text) = fs::read_to_string(&file) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The processes in the cgroup `path` (libcontainer's `cgroupsPath`), from
/// the memory hierarchy (v1) or the unified one.
pub fn pids(path: &Path) -> Vec<i32> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let root = Path::new(CGROUP_ROOT);
    let dir = if is_unified() {
        root.join(rel)
    } else {
        root.join("memory").join(rel)
    };
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Sends SIGKILL to every process of the cgroup directory `dir` (a path
/// under a hierarchy, e.g. from [`existing_dirs`]) and of its children.
/// Best effort: for cleaning up after a failed test or a lost agent.
pub fn kill_tree(dir: &Path) {
    for pid in fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
    {
        if let Ok(pid) = pid.trim().parse() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            kill_tree(&entry.path());
        }
    }
}

/// What a cgroup's processes use, as cgroups count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use less inactive file cache (the kubelet's "working set"),
    /// in bytes.
    pub memory_working_set_bytes: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// The usage of the cgroup `rel` (relative to each hierarchy, e.g. a pod's
/// [`pod_path`]), including its children; `None` if it does not exist.
pub fn usage(rel: &Path) -> Option<Usage> {
    let root = Path::new(CGROUP_ROOT);
    if is_unified() {
        let dir = root.join(rel);
        let cpu_micros = stat_field(&dir.join("cpu.stat"), "usage_usec")?;
        let current = read_u64(&dir.join("memory.current"))?;
        let inactive = stat_field(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
        return Some(Usage {
            cpu_nanos: cpu_micros * 1000,
            memory_working_set_bytes: current.saturating_sub(inactive),
        });
    }
    let cpu_nanos = read_u64(&root.join("cpuacct").join(rel).join("cpuacct.usage"))
        .or_else(|| read_u64(&root.join("cpu,cpuacct").join(rel).join("cpuacct.usage")))?;
    let memory = root.join("memory").join(rel);
    let current = read_u64(&memory.join("memory.usage_in_bytes"))?;
    let inactive = stat_field(&memory.join("memory.stat"), "total_inactive_file").unwrap_or(0);
    Some(Usage {
        cpu_nanos,
        memory_working_set_bytes: current.saturating_sub(inactive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_conversions_match_kubernetes() {
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(250), 256);
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(cpu_quota(500), 50_000);
        assert_eq!(cpu_quota(2000), 200_000);
        assert_eq!(cpu_quota(1), 1000);
    }

    #[test]
    fn paths() {
        assert_eq!(
            container_path("orch", "u1", "web-0"),
            PathBuf::from("/orch/u1/web-0")
        );
        assert_eq!(pod_path("orch", "u1"), PathBuf::from("orch/u1"));
    }
}
