//! One container of a pod through libcontainer: create and start, signal,
//! state, delete, and the exit watcher of its init process.
//!
//! Everything here is blocking and runs on the runtime's worker thread (see
//! the module docs of [`super`]), except the exit watchers, one small thread
//! per container blocked in `waitid` on that container's pid alone.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::cgroup;
use super::error::{PodError, Result};
use super::logs;
use super::sandbox::{self, Sandbox};
use super::spec::{self, ContainerConfig, SpecInputs};
use crate::image::{ImageStore, RootfsMount};

/// What the runtime records about a container, in
/// `<state>/pods/<uid>/containers/<id>/container.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// libcontainer's id: `<pod uid>_<name>_<attempt>`.
    pub id: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's name in the pod.
    pub name: String,
    /// Which run of the container this is (0 first, then one per restart).
    pub attempt: u32,
    /// The image reference it runs.
    pub image: String,
    /// Its bundle: `config.json`, and `rootfs/`, `upper/`, `work/` of its overlay.
    pub bundle: PathBuf,
    /// Its log file (stdout and stderr, plain text).
    pub log_path: PathBuf,
    /// Its cgroup (`linux.cgroupsPath`).
    pub cgroups_path: PathBuf,
    /// When it was started, in ms since the Unix epoch.
    pub started_at_ms: u64,
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code (128 + signal number for a killed process, as shells
    /// and Kubernetes report it); `None` if the process ended while no agent
    /// was its parent (after an agent restart), so its status was not seen.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer killed a process of the container's
    /// cgroup (Kubernetes' reason `OOMKilled`).
    pub oom_killed: bool,
    /// When the exit was seen, in ms since the Unix epoch.
    pub finished_at_ms: u64,
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, its process not started yet.
    Created,
    /// Its process runs.
    Running {
        /// The init process' pid (in the host's PID namespace).
        pid: i32,
    },
    /// Its process has ended.
    Exited(ExitInfo),
}

/// A container and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The runtime's record of it.
    pub record: ContainerRecord,
    /// Its state now.
    pub state: ContainerState,
}

/// The exit of every watched container, by id: `None` while it runs.
pub(crate) type Exits = Arc<Mutex<HashMap<String, watch::Sender<Option<ExitInfo>>>>>;

/// The id of a run of a container.
pub fn container_id(pod_uid: &str, name: &str, attempt: u32) -> String {
    format!("{pod_uid}_{name}_{attempt}")
}

/// The runtime's places on the host.
#[derive(Debug, Clone)]
pub(crate) struct Places {
    /// `<state>/pods`.
    pub pods: PathBuf,
    /// libcontainer's state root.
    pub libcontainer: PathBuf,
    /// `<data>`: container bundles and overlay directories.
    pub data: PathBuf,
    /// Log root.
    pub logs: PathBuf,
    /// The cgroup parent (`orch`).
    pub cgroup_parent: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn record_dir(sandbox: &Sandbox, id: &str) -> PathBuf {
    sandbox.containers_dir().join(id)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PodError::Record {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PodError::io(format!("reading {}", path.display()))(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| PodError::Record {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    sandbox::write_file(path, &bytes)
}

/// Creates and starts a container of the pod in `sandbox`.
pub(crate) fn run(
    places: &Places,
    images: &ImageStore,
    exits: &Exits,
    sandbox: &Sandbox,
    config: &ContainerConfig,
) -> Result<ContainerInfo> {
    spec::validate_name(&config.name)?;
    let uid = &sandbox.config.uid;
    let id = container_id(uid, &config.name, config.attempt);
    let rec_dir = record_dir(sandbox, &id);
    if rec_dir.exists() || places.libcontainer.join(&id).exists() {
        return Err(PodError::Exists(format!("container {id}")));
    }
    let bundle = places
        .data
        .join(uid)
        .join(format!("{}-{}", config.name, config.attempt));
    let record = ContainerRecord {
        id: id.clone(),
        pod_uid: uid.clone(),
        name: config.name.clone(),
        attempt: config.attempt,
        image: config.image.clone(),
        log_path: logs::container_log(&places.logs, &sandbox.config, &config.name, config.attempt),
        cgroups_path: cgroup::container_path(
            &places.cgroup_parent,
            uid,
            &format!("{}-{}", config.name, config.attempt),
        ),
        bundle,
        started_at_ms: now_ms(),
    };
    fs::create_dir_all(&rec_dir)
        .map_err(PodError::io(format!("creating {}", rec_dir.display())))?;
    write_json(&rec_dir.join("container.json"), &record)?;

    let result = create_and_start(places, images, exits, sandbox, config, &record);
    if let Err(e) = &result {
        tracing::warn!(container = %id, error = %e, "container start failed, cleaning up");
        if let Err(e) = delete(places, exits, sandbox, &id) {
            tracing::warn!(container = %id, error = %e, "cleaning up a failed container");
        }
    }
    result
}

fn create_and_start(
    places: &Places,
    images: &ImageStore,
    exits: &Exits,
    sandbox: &Sandbox,
    config: &ContainerConfig,
    record: &ContainerRecord,
) -> Result<ContainerInfo> {
    let mount = images.mount_rootfs(&config.image, &record.bundle)?;
    let image = images.image_config(&config.image)?;
    let spec = spec::build(
        config,
        &SpecInputs {
            sandbox,
            image: &image,
            rootfs: &mount.rootfs,
            cgroups_path: &record.cgroups_path,
        },
    )?;
    write_json(&record.bundle.join("config.json"), &spec)?;

    let log = logs::open(&record.log_path)?;
    let log2 = log
        .try_clone()
        .map_err(PodError::io("duplicating the log file descriptor"))?;
    let stdin = File::open("/dev/null").map_err(PodError::io("opening /dev/null"))?;

    let id = &record.id;
    let mut container = ContainerBuilder::new(id.clone(), SyscallType::default())
        .with_root_path(&places.libcontainer)
        .map_err(PodError::container(format!("container {id}: state root")))?
        .with_executor(super::exec::EnvSafeExecutor::default())
        .with_stdin(stdin)
        .with_stdout(log)
        .with_stderr(log2)
        .validate_id()
        .map_err(PodError::container(format!("container {id}: id")))?
        .as_init(&record.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(PodError::container(format!("creating container {id}")))?;
    let pid = container
        .pid()
        .ok_or_else(|| PodError::NotFound(format!("the init process of container {id}")))?;
    // Watch before start: a process that fails at once is still seen.
    watch_exit(exits, record, exit_path(sandbox, id), pid.as_raw(), true);
    container
        .start()
        .map_err(PodError::container(format!("starting container {id}")))?;
    tracing::debug!(container = %id, pid = pid.as_raw(), "container started");
    Ok(ContainerInfo {
        record: record.clone(),
        state: ContainerState::Running { pid: pid.as_raw() },
    })
}

/// Starts the exit watcher of a container's init process `pid`. `child`:
/// the process is this process' child (started by it); otherwise (adopted
/// after an agent restart) its exit is polled and its exit code is unknown.
pub(crate) fn watch_exit(
    exits: &Exits,
    record: &ContainerRecord,
    exit_file: PathBuf,
    pid: i32,
    child: bool,
) {
    let (tx, _) = watch::channel(None);
    {
        let mut map = exits.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&record.id).is_some_and(|s| s.borrow().is_none()) {
            return; // already watched
        }
        map.insert(record.id.clone(), tx.clone());
    }
    let cgroups_path = record.cgroups_path.clone();
    let id = record.id.clone();
    let spawned = std::thread::Builder::new()
        .name("orch-exit".to_string())
        .stack_size(64 * 1024)
        .spawn(move || {
            let (exit_code, signal) = if child {
                wait_child(pid)
            } else {
                wait_foreign(pid);
                (None, None)
            };
            let info = ExitInfo {
                exit_code,
                signal,
                oom_killed: cgroup::oom_kills(&cgroups_path) > 0,
                finished_at_ms: now_ms(),
            };
            // Recorded before the zombie is reaped: the pid cannot be reused
            // by then, so nobody mistakes another process for this container.
            if exit_file.parent().is_some_and(Path::is_dir) {
                if let Err(e) = write_json(&exit_file, &info) {
                    tracing::warn!(container = %id, error = %e, "recording the container's exit");
                }
            }
            if child {
                let _ = waitpid(Pid::from_raw(pid), None);
            }
            tracing::debug!(container = %id, ?info, "container exited");
            tx.send_replace(Some(info));
        });
    if let Err(e) = spawned {
        tracing::error!(container = %record.id, error = %e, "spawning the exit watcher");
    }
}

/// Waits (without reaping) until child `pid` exits; its exit code and signal.
fn wait_child(pid: i32) -> (Option<i32>, Option<i32>) {
    loop {
        match waitid(
            Id::Pid(Pid::from_raw(pid)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {
            Ok(WaitStatus::Exited(_, code)) => return (Some(code), None),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return (Some(128 + sig as i32), Some(sig as i32))
            }
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => {
                // ECHILD: not (or no longer) our child; fall back to polling.
                tracing::debug!(pid, error = %e, "waitid failed, polling the pid instead");
                wait_foreign(pid);
                return (None, None);
            }
        }
    }
}

/// Polls until `pid` is gone or a zombie.
fn wait_foreign(pid: i32) {
    while process_alive(pid) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Where a container's exit is recorded: `exit.json` beside its record.
pub(crate) fn exit_path(sandbox: &Sandbox, id: &str) -> PathBuf {
    record_dir(sandbox, id).join("exit.json")
}

/// Loads a container record by id from the sandbox.
pub(crate) fn load_record(sandbox: &Sandbox, id: &str) -> Result<ContainerRecord> {
    read_json(&record_dir(sandbox, id).join("container.json"))?
        .ok_or_else(|| PodError::NotFound(format!("container {id}")))
}

/// The records of all containers of a sandbox.
pub(crate) fn records(sandbox: &Sandbox) -> Result<Vec<ContainerRecord>> {
    let dir = sandbox.containers_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PodError::io(format!("listing {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("container.json");
        match read_json::<ContainerRecord>(&path) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "skipping a container record"),
        }
    }
    out.sort_by(|a, b| (&a.name, a.attempt).cmp(&(&b.name, b.attempt)));
    Ok(out)
}

/// The state of a container now.
pub(crate) fn state(
    places: &Places,
    exits: &Exits,
    sandbox: &Sandbox,
    record: &ContainerRecord,
) -> Result<ContainerState> {
    if let Some(info) = read_json::<ExitInfo>(&exit_path(sandbox, &record.id))? {
        return Ok(ContainerState::Exited(info));
    }
    let watched = exits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&record.id)
        .map(|tx| *tx.borrow());
    if let Some(Some(info)) = watched {
        return Ok(ContainerState::Exited(info));
    }
    let root = places.libcontainer.join(&record.id);
    if !root.exists() {
        return Ok(ContainerState::Exited(unknown_exit(record)));
    }
    let container = Container::load(root).map_err(PodError::container(format!(
        "loading container {}",
        record.id
    )))?;
    let pid = container.pid().map(|p| p.as_raw());
    Ok(match (container.status(), pid) {
        (ContainerStatus::Creating | ContainerStatus::Created, _) => ContainerState::Created,
        (_, Some(pid)) if process_alive(pid) => ContainerState::Running { pid },
        // Exited, and the watcher is about to record it.
        (_, Some(pid)) if watched.is_some() && pid > 0 => ContainerState::Running { pid },
        _ => ContainerState::Exited(unknown_exit(record)),
    })
}

fn unknown_exit(record: &ContainerRecord) -> ExitInfo {
    ExitInfo {
        exit_code: None,
        signal: None,
        oom_killed: cgroup::oom_kills(&record.cgroups_path) > 0,
        finished_at_ms: now_ms(),
    }
}

/// Sends `signal` to the container's init process (`all`: to every process
/// of its cgroup). A container that has exited already is not an error.
pub(crate) fn kill(places: &Places, id: &str, signal: Signal, all: bool) -> Result<()> {
    let root = places.libcontainer.join(id);
    if !root.exists() {
        return Ok(());
    }
    let mut container =
        Container::load(root).map_err(PodError::container(format!("loading container {id}")))?;
    if container.status() == ContainerStatus::Stopped && !all {
        return Ok(());
    }
    match container.kill(signal, all) {
        Ok(()) => Ok(()),
        Err(libcontainer::error::LibcontainerError::IncorrectStatus(_)) => Ok(()),
        Err(e) => Err(PodError::container(format!("signalling container {id}"))(e)),
    }
}

/// Deletes a container: kills what is left of it, removes libcontainer's
/// state and the container's cgroup, unmounts and removes its rootfs and
/// bundle, and forgets its record. Its log file stays.
pub(crate) fn delete(places: &Places, exits: &Exits, sandbox: &Sandbox, id: &str) -> Result<()> {
    let rec_dir = record_dir(sandbox, id);
    let record = read_json::<ContainerRecord>(&rec_dir.join("container.json"))?;
    let root = places.libcontainer.join(id);
    if root.exists() {
        match Container::load(root.clone()) {
            Ok(mut c) => c
                .delete(true)
                .map_err(PodError::container(format!("deleting container {id}")))?,
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "unreadable libcontainer state, removing it");
                fs::remove_dir_all(&root)
                    .map_err(PodError::io(format!("removing {}", root.display())))?;
            }
        }
    }
    if let Some(record) = &record {
        let mut tries = 0;
        while !cgroup::pids(&record.cgroups_path).is_empty() && tries < 40 {
            tries += 1;
            std::thread::sleep(Duration::from_millis(25));
        }
        cgroup::remove_tree(
            record
                .cgroups_path
                .strip_prefix("/")
                .unwrap_or(&record.cgroups_path),
        )?;
        RootfsMount::for_container(&record.bundle).remove()?;
        match fs::remove_dir_all(&record.bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PodError::io(format!(
                    "removing {}",
                    record.bundle.display()
                ))(e))
            }
        }
    }
    match fs::remove_dir_all(&rec_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(PodError::io(format!("removing {}", rec_dir.display()))(e)),
    }
    exits.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    Ok(())
}
