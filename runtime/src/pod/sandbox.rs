//! A pod's sandbox: the network, IPC and UTS namespaces all its containers
//! share, kept alive by bind mounts of their namespace files under the pod's
//! state directory (`<state>/pods/<uid>/ns/{net,ipc,uts}`), so containers join
//! them by path and a restarted agent finds them again.
//!
//! The namespaces are made on a short-lived thread of the agent: it unshares
//! them (namespace membership is per thread), sets the hostname, brings
//! loopback up over netlink, bind-mounts `/proc/thread-self/ns/*` onto the
//! files and ends. No process is left running for the sandbox (no "pause"
//! container): the bind mounts hold the namespaces.
//!
//! A `hostNetwork` pod's sandbox (marked by a `host-network` file) holds
//! its IPC namespace only: its containers stay in the host's network and
//! UTS namespaces, and its `/etc/hostname` and `/etc/hosts` are the host's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::error::{PodError, Result};

/// The namespaces a sandbox holds, with their file names under `ns/`.
pub(crate) const SHARED_NAMESPACES: [(&str, CloneFlags); 3] = [
    ("net", CloneFlags::CLONE_NEWNET),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
];

/// The file marking a `hostNetwork` pod's sandbox.
const HOST_NETWORK_MARK: &str = "host-network";

/// The namespaces a sandbox holds: all of [`SHARED_NAMESPACES`], or for a
/// `hostNetwork` pod only IPC.
fn owned_namespaces(host_network: bool) -> Vec<(&'static str, CloneFlags)> {
    SHARED_NAMESPACES
        .into_iter()
        .filter(|(kind, _)| !host_network || *kind == "ipc")
        .collect()
}

/// What a sandbox is made for: the pod's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// The pod's metadata.uid (names the sandbox's directories and cgroup).
    pub uid: String,
    /// The pod's name: the hostname inside the pod.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
}

/// A pod's sandbox on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod it belongs to.
    pub config: SandboxConfig,
    /// `<state>/pods/<uid>`.
    pub dir: PathBuf,
}

impl Sandbox {
    /// The file holding namespace `kind` (`net`, `ipc` or `uts`).
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        self.dir.join("ns").join(kind)
    }

    /// Whether the pod uses the host's network (and UTS) namespace.
    pub fn host_network(&self) -> bool {
        self.dir.join(HOST_NETWORK_MARK).exists()
    }

    /// The pod's network namespace file: its own, or the agent's (the
    /// host's) for a `hostNetwork` pod.
    pub fn netns_path(&self) -> PathBuf {
        if self.host_network() {
            PathBuf::from("/proc/self/ns/net")
        } else {
            self.ns_path("net")
        }
    }

    /// The namespaces the sandbox holds (and its containers join).
    pub(crate) fn namespaces(&self) -> Vec<(&'static str, CloneFlags)> {
        owned_namespaces(self.host_network())
    }

    /// The file bind-mounted as the containers' `/etc/hostname`.
    pub fn hostname_file(&self) -> PathBuf {
        self.dir.join("hostname")
    }

    /// The file bind-mounted as the containers' `/etc/hosts`.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// The file bind-mounted as the containers' `/etc/resolv.conf` when it
    /// exists (the agent writes it: [`Sandbox::write_resolv_conf`]).
    pub fn resolv_conf_file(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// Writes the pod's `/etc/resolv.conf` (unless it says this already).
    /// Containers started afterwards see it.
    pub fn write_resolv_conf(&self, content: &str) -> Result<()> {
        let path = self.resolv_conf_file();
        if fs::read_to_string(&path).is_ok_and(|c| c == content) {
            return Ok(());
        }
        write_file(&path, content.as_bytes())
    }

    /// The directory of the pod's container records.
    pub fn containers_dir(&self) -> PathBuf {
        self.dir.join("containers")
    }
}

/// Validates the pieces of a sandbox config that become paths or a hostname.
pub(crate) fn validate(config: &SandboxConfig) -> Result<()> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && s != "."
            && s != ".."
    };
    for (what, value) in [
        ("pod uid", &config.uid),
        ("pod name", &config.name),
        ("pod namespace", &config.namespace),
    ] {
        if !ok(value) {
            return Err(PodError::InvalidConfig(format!(
                "{what} {value:?} must be non-empty and made of letters, digits, '-' and '.'"
            )));
        }
    }
    Ok(())
}

/// Creates (or finds, if it exists and is complete) the sandbox of a pod in
/// `pods_dir/<uid>`; with `host_network`, one that leaves the pod in the
/// host's network and UTS namespaces.
pub(crate) fn create(
    pods_dir: &Path,
    config: &SandboxConfig,
    host_network: bool,
) -> Result<Sandbox> {
    validate(config)?;
    let sandbox = Sandbox {
        config: config.clone(),
        dir: pods_dir.join(&config.uid),
    };
    let ns_dir = sandbox.dir.join("ns");
    fs::create_dir_all(&ns_dir).map_err(PodError::io(format!("creating {}", ns_dir.display())))?;
    fs::create_dir_all(sandbox.containers_dir()).map_err(PodError::io(format!(
        "creating {}",
        sandbox.containers_dir().display()
    )))?;
    let mark = sandbox.dir.join(HOST_NETWORK_MARK);
    if host_network {
        write_file(&mark, b"")?;
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        write_file(&sandbox.hostname_file(), format!("{hostname}\n").as_bytes())?;
        let hosts = fs::read("/etc/hosts").unwrap_or_default();
        write_file(&sandbox.hosts_file(), &hosts)?;
    } else {
        match fs::remove_file(&mark) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PodError::io(format!("removing {}", mark.display()))(e)),
        }
        write_file(
            &sandbox.hostname_file(),
            format!("{}\n", config.name).as_bytes(),
        )?;
        write_file(
            &sandbox.hosts_file(),
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
                config.name
            )
            .as_bytes(),
        )?;
    }
    let record = serde_json::to_vec_pretty(config).map_err(|e| PodError::Record {
        path: sandbox.dir.join("pod.json").display().to_string(),
        reason: e.to_string(),
    })?;
    write_file(&sandbox.dir.join("pod.json"), &record)?;

    let owned = owned_namespaces(host_network);
    let mut mounted = 0;
    for (kind, _) in &owned {
        if is_ns_mounted(&sandbox.ns_path(kind))? {
            mounted += 1;
        }
    }
    if mounted == owned.len() {
        return Ok(sandbox);
    }
    if mounted > 0 {
        // A half-made sandbox (an agent died while creating it): start over.
        unmount_namespaces(&sandbox)?;
    }
    for (kind, _) in &owned {
        let path = sandbox.ns_path(kind);
        fs::File::create(&path).map_err(PodError::io(format!("creating {}", path.display())))?;
    }
    let for_thread = sandbox.clone();
    let made = std::thread::Builder::new()
        .name("orch-sandbox".to_string())
        .spawn(move || make_namespaces(&for_thread))
        .map_err(PodError::io("spawning the sandbox thread"))?
        .join()
        .unwrap_or_else(|_| {
            Err(PodError::InvalidConfig(
                "the sandbox thread panicked".to_string(),
            ))
        });
    if let Err(e) = made {
        let _ = unmount_namespaces(&sandbox);
        return Err(e);
    }
    Ok(sandbox)
}

/// Runs on a thread of its own, which it leaves in the new namespaces (the
/// thread ends right after).
fn make_namespaces(sandbox: &Sandbox) -> Result<()> {
    let owned = sandbox.namespaces();
    let flags = owned
        .iter()
        .fold(CloneFlags::empty(), |acc, (_, f)| acc | *f);
    nix::sched::unshare(flags).map_err(PodError::sys("unsharing the pod's namespaces"))?;
    if !flags.contains(CloneFlags::CLONE_NEWNET) {
        // A hostNetwork pod: the host's network and hostname stay as they are.
        return bind_namespaces(sandbox, &owned);
    }
    nix::unistd::sethostname(&sandbox.config.name)
        .map_err(PodError::sys("setting the pod's hostname"))?;
    let mut links = libcontainer::network::link::LinkClient::new(
        libcontainer::network::wrapper::create_network_client(),
    )
    .map_err(|source| PodError::Network {
        context: "opening a netlink socket".to_string(),
        source,
    })?;
    let lo = links.get_by_name("lo").map(|l| l.header.index).unwrap_or(1);
    links.set_up(lo).map_err(|source| PodError::Network {
        context: "bringing loopback up".to_string(),
        source,
    })?;
    bind_namespaces(sandbox, &owned)
}

/// Bind-mounts the calling thread's namespaces `owned` onto the sandbox's
/// files.
fn bind_namespaces(sandbox: &Sandbox, owned: &[(&str, CloneFlags)]) -> Result<()> {
    for (kind, _) in owned {
        let source = format!("/proc/thread-self/ns/{kind}");
        let target = sandbox.ns_path(kind);
        nix::mount::mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(PodError::sys(format!(
            "bind-mounting {source} on {}",
            target.display()
        )))?;
    }
    Ok(())
}

/// Whether the namespace file is a mount point (the namespace is held).
pub(crate) fn is_ns_mounted(path: &Path) -> Result<bool> {
    Ok(crate::image::is_mount_point(path)?)
}

/// Unmounts the sandbox's namespace files (the namespaces go away once no
/// process is in them).
pub(crate) fn unmount_namespaces(sandbox: &Sandbox) -> Result<()> {
    for (kind, _) in SHARED_NAMESPACES {
        let path = sandbox.ns_path(kind);
        while is_ns_mounted(&path)? {
            match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) => {}
                Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
                Err(e) => return Err(PodError::sys(format!("unmounting {}", path.display()))(e)),
            }
        }
    }
    Ok(())
}

/// Unmounts the namespaces and removes the sandbox's directory.
pub(crate) fn remove(sandbox: &Sandbox) -> Result<()> {
    unmount_namespaces(sandbox)?;
    match fs::remove_dir_all(&sandbox.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodError::io(format!("removing {}", sandbox.dir.display()))(
            e,
        )),
    }
}

/// Loads the sandbox recorded in `dir` (`<state>/pods/<uid>`).
pub(crate) fn load(dir: &Path) -> Result<Sandbox> {
    let path = dir.join("pod.json");
    let bytes = fs::read(&path).map_err(PodError::io(format!("reading {}", path.display())))?;
    let config: SandboxConfig = serde_json::from_slice(&bytes).map_err(|e| PodError::Record {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Sandbox {
        config,
        dir: dir.to_path_buf(),
    })
}

/// Writes a file through a temporary name and a rename.
pub(crate) fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).map_err(PodError::io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(PodError::io(format!("renaming to {}", path.display())))
}
