//! Pods on this host: a sandbox per pod (shared network, IPC and UTS
//! namespaces) and its containers as libcontainer containers.
//!
//! # Layout
//!
//! ```text
//! <state>/pods/<uid>/pod.json                 the pod's identity (uid, name, namespace)
//! <state>/pods/<uid>/ns/{net,ipc,uts}          bind mounts holding the pod's namespaces
//! <state>/pods/<uid>/hostname, hosts           bind-mounted as /etc/hostname, /etc/hosts
//! <state>/pods/<uid>/containers/<id>/          container.json (record), exit.json (once exited)
//! <state>/libcontainer/<id>/                   libcontainer's own state (state.json, ...)
//! <data>/<uid>/<name>-<attempt>/               bundle: config.json, rootfs/ upper/ work/ (overlay)
//! <logs>/<ns>_<pod>_<uid>/<name>/<attempt>.log stdout+stderr, plain text (see [`logs`])
//! cgroup /<parent>/<uid>/<name>-<attempt>      in every hierarchy (parent defaults to `orch`)
//! ```
//!
//! Container ids are `<pod uid>_<name>_<attempt>`: each restart is a new
//! libcontainer container with its own rootfs and log file.
//!
//! # Process model
//!
//! libcontainer forks: creating a container clones an intermediate process,
//! which clones the container's init process as a *sibling* (CLONE_PARENT),
//! so every container's init is a child of the agent process, and the agent
//! must reap it. Decisions:
//!
//! - All libcontainer calls run on one dedicated OS thread (`orch-pods`),
//!   fed through a channel by the async [`PodRuntime`] handle. libcontainer's
//!   builder is not `Send` (it holds `Rc`s), forks happen from one known
//!   thread, and process-wide side effects of a create (libcontainer marks
//!   the calling process non-dumpable) are serialized. Creates are thus one
//!   at a time (a create+start is a few tens of ms).
//! - The clones copy the agent's memory as it is, locks held by other
//!   threads included, and libcontainer's init process runs Rust code
//!   before it execs. Its default executor rewrites the process environment
//!   (std's environment write lock), which hangs the init process forever
//!   whenever another agent thread was reading the environment or spawning a
//!   `Command` at the moment of the clone (reproduced by the test
//!   `pods_create_while_other_threads_spawn_processes`). orch's executor
//!   (`exec.rs`) passes the environment to `execve` instead. Hazards that
//!   remain: a raw `clone3` runs no `atfork` handlers, so a glibc malloc
//!   arena lock held by another thread sharing the worker's arena, or the
//!   stderr lock if libcontainer logs in the child, would hang an init
//!   process the same way. If that is ever seen, the libcontainer calls move
//!   into a single-threaded helper process (containerd's shim model), which
//!   would also keep exit codes across agent restarts.
//! - Each container's init pid is watched by a small thread of its own
//!   (64 KiB stack) blocked in `waitid(P_PID, pid, WEXITED|WNOWAIT)`: it
//!   records the exit (code, signal, OOM kill from the cgroup) in `exit.json`
//!   *before* reaping the zombie with `waitpid(pid)`, so the pid cannot be
//!   reused before the record exists.
//! - Nothing in the agent may reap children it did not start: no
//!   `waitpid(-1)`, no `SIGCHLD` set to `SIG_IGN`. tokio's process support
//!   is fine (it waits on its own children's pids only), as is
//!   `std::process`.
//! - The agent can restart while containers run: their processes are
//!   reparented (to PID 1 or a subreaper) and keep running; logs keep
//!   flowing, since the log files are the containers' own stdout/stderr
//!   descriptors. [`PodRuntime::recover`] reloads every sandbox and
//!   container record and libcontainer state, and watches the adopted
//!   processes by polling `/proc/<pid>`. The exit code of a container that
//!   ends while it is not the agent's child is not knowable (`exit_code:
//!   None`); OOM kills still are (cgroup counters). A per-pod helper process
//!   (a shim, as containerd has) would keep exit codes across agent
//!   restarts; it is left for later.
//!
//! # Cleanup
//!
//! [`PodRuntime::teardown_pod`] stops every container (SIGTERM, the grace
//! period, then SIGKILL to the whole cgroup), deletes them (libcontainer
//! state, cgroups, overlay mounts, bundles), unmounts the namespace files,
//! removes the pod's cgroup directory in every hierarchy, its state and
//! data directories and, if asked, its logs.

pub mod cgroup;
mod container;
mod error;
mod exec;
pub mod exec_process;
pub mod logs;
pub mod sandbox;
pub mod spec;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

pub use container::{
    container_id, process_alive, ContainerInfo, ContainerRecord, ContainerState, ExitInfo,
};
pub use error::{PodError, Result};
pub use exec_process::{ExecError, ExecOutput, ExecProcess, ExecRequest, ExecTerminal};
pub use sandbox::{Sandbox, SandboxConfig};
pub use spec::{BindMount, ContainerConfig};

use crate::image::ImageStore;
use container::{Exits, Places};

/// Where the runtime keeps its things on the host.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Runtime state (tmpfs in production): `/run/orch`.
    pub state_dir: PathBuf,
    /// Container bundles and overlay upper/work directories: `/var/lib/orch/pods`.
    pub data_dir: PathBuf,
    /// Container logs: `/var/log/orch/pods`.
    pub log_dir: PathBuf,
    /// The cgroup parent of all pods: `orch`.
    pub cgroup_parent: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            state_dir: PathBuf::from("/run/orch"),
            data_dir: PathBuf::from("/var/lib/orch/pods"),
            log_dir: PathBuf::from("/var/log/orch/pods"),
            cgroup_parent: "orch".to_string(),
        }
    }
}

/// A pod found on the host by [`PodRuntime::recover`].
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Its sandbox.
    pub sandbox: Sandbox,
    /// Whether its namespaces are all still held.
    pub namespaces_present: bool,
    /// Its containers (every attempt still recorded).
    pub containers: Vec<ContainerInfo>,
}

type Job = Box<dyn FnOnce(&Worker) + Send>;

/// The state the worker thread works with.
struct Worker {
    places: Places,
    images: ImageStore,
    exits: Exits,
}

impl Worker {
    fn sandbox(&self, uid: &str) -> Result<Sandbox> {
        let dir = self.places.pods.join(uid);
        if !dir.join("pod.json").is_file() {
            return Err(PodError::NotFound(format!("pod sandbox {uid}")));
        }
        sandbox::load(&dir)
    }

    fn info(&self, sandbox: &Sandbox, record: ContainerRecord) -> Result<ContainerInfo> {
        let state = container::state(&self.places, &self.exits, sandbox, &record)?;
        Ok(ContainerInfo { record, state })
    }
}

/// The handle of the pod runtime: cheap to clone, usable from any task.
/// Every operation is carried out on the runtime's worker thread.
#[derive(Clone)]
pub struct PodRuntime {
    jobs: mpsc::Sender<Job>,
    exits: Exits,
    config: Arc<RuntimeConfig>,
}

impl std::fmt::Debug for PodRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRuntime")
            .field("config", &self.config)
            .finish()
    }
}

fn parse_id(id: &str) -> Result<(&str, &str, u32)> {
    let mut parts = id.rsplitn(3, '_');
    let attempt = parts.next().and_then(|a| a.parse().ok());
    let name = parts.next();
    let uid = parts.next();
    match (uid, name, attempt) {
        (Some(uid), Some(name), Some(attempt)) => Ok((uid, name, attempt)),
        _ => Err(PodError::NotFound(format!("container {id}"))),
    }
}

impl PodRuntime {
    /// Creates the runtime's directories and starts its worker thread.
    pub fn start(config: RuntimeConfig, images: ImageStore) -> Result<PodRuntime> {
        let places = Places {
            pods: config.state_dir.join("pods"),
            libcontainer: config.state_dir.join("libcontainer"),
            data: config.data_dir.clone(),
            logs: config.log_dir.clone(),
            cgroup_parent: config.cgroup_parent.clone(),
        };
        for dir in [
            &places.pods,
            &places.libcontainer,
            &places.data,
            &places.logs,
        ] {
            fs::create_dir_all(dir).map_err(PodError::io(format!("creating {}", dir.display())))?;
        }
        let exits: Exits = Arc::new(Mutex::new(Default::default()));
        let worker = Worker {
            places,
            images,
            exits: exits.clone(),
        };
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("orch-pods".to_string())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&worker);
                }
            })
            .map_err(PodError::io("spawning the pod runtime thread"))?;
        Ok(PodRuntime {
            jobs: tx,
            exits,
            config: Arc::new(config),
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Worker) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |w: &Worker| {
                let _ = tx.send(f(w));
            }))
            .map_err(|_| PodError::WorkerGone)?;
        rx.await.map_err(|_| PodError::WorkerGone)?
    }

    /// Creates the pod's sandbox (namespaces, hostname, hosts file), or
    /// returns the existing one.
    pub async fn create_sandbox(&self, config: SandboxConfig) -> Result<Sandbox> {
        self.create_sandbox_with(config, false).await
    }

    /// [`PodRuntime::create_sandbox`] for a pod that, with `host_network`,
    /// stays in the host's network and UTS namespaces (`hostNetwork`).
    pub async fn create_sandbox_with(
        &self,
        config: SandboxConfig,
        host_network: bool,
    ) -> Result<Sandbox> {
        self.call(move |w| sandbox::create(&w.places.pods, &config, host_network))
            .await
    }

    /// Creates and starts a container in the pod `pod_uid` (whose sandbox
    /// must exist): mounts its rootfs, writes its spec, builds and starts it.
    /// On failure nothing of it is left behind (but its log file).
    pub async fn run_container(
        &self,
        pod_uid: &str,
        config: ContainerConfig,
    ) -> Result<ContainerInfo> {
        let uid = pod_uid.to_string();
        self.call(move |w| {
            let sandbox = w.sandbox(&uid)?;
            container::run(&w.places, &w.images, &w.exits, &sandbox, &config)
        })
        .await
    }

    /// A container's record and state.
    pub async fn container(&self, id: &str) -> Result<ContainerInfo> {
        let id = id.to_string();
        self.call(move |w| {
            let (uid, _, _) = parse_id(&id)?;
            let sandbox = w.sandbox(uid)?;
            let record = container::load_record(&sandbox, &id)?;
            w.info(&sandbox, record)
        })
        .await
    }

    /// The containers of a pod (every recorded attempt).
    pub async fn pod_containers(&self, pod_uid: &str) -> Result<Vec<ContainerInfo>> {
        let uid = pod_uid.to_string();
        self.call(move |w| {
            let sandbox = w.sandbox(&uid)?;
            container::records(&sandbox)?
                .into_iter()
                .map(|r| w.info(&sandbox, r))
                .collect()
        })
        .await
    }

    /// Sends `signal` to a container's init process, or with `all` to every
    /// process in its cgroup.
    pub async fn signal(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let id = id.to_string();
        self.call(move |w| container::kill(&w.places, &id, signal, all))
            .await
    }

    /// Waits until the container has exited, at most `timeout`; its exit, or
    /// `None` if it still runs.
    pub async fn wait_exit(&self, id: &str, timeout: Duration) -> Result<Option<ExitInfo>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rx = self
                .exits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .map(|tx| tx.subscribe());
            if let Some(mut rx) = rx {
                let waited = tokio::time::timeout_at(deadline, rx.wait_for(|e| e.is_some())).await;
                return Ok(match waited {
                    Ok(Ok(exit)) => *exit,
                    Ok(Err(_)) | Err(_) => None,
                });
            }
            // Not watched by this process (yet): ask for its state.
            match self.container(id).await?.state {
                ContainerState::Exited(info) => return Ok(Some(info)),
                _ if tokio::time::Instant::now() >= deadline => return Ok(None),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Stops a container: `SIGTERM` to its init process, then, if it has not
    /// exited after `grace`, `SIGKILL` to every process of its cgroup. Returns
    /// its exit.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<ExitInfo> {
        if let ContainerState::Exited(info) = self.container(id).await?.state {
            return Ok(info);
        }
        if !grace.is_zero() {
            self.signal(id, Signal::SIGTERM, false).await?;
            if let Some(info) = self.wait_exit(id, grace).await? {
                return Ok(info);
            }
            tracing::info!(container = %id, grace_ms = grace.as_millis() as u64, "grace period over, killing");
        }
        self.signal(id, Signal::SIGKILL, true).await?;
        match self.wait_exit(id, Duration::from_secs(10)).await? {
            Some(info) => Ok(info),
            None => Err(PodError::Sys {
                context: format!("container {id} survived SIGKILL for 10 s"),
                source: nix::Error::ETIMEDOUT,
            }),
        }
    }

    /// Deletes a container (killing it if it still runs): its libcontainer
    /// state, cgroup, rootfs mount, bundle and record. Its log file stays.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |w| {
            let (uid, _, _) = parse_id(&id)?;
            let sandbox = w.sandbox(uid)?;
            container::delete(&w.places, &w.exits, &sandbox, &id)
        })
        .await
    }

    /// Tears a pod down: stops all its containers with `grace` (concurrently),
    /// deletes them, removes its namespaces, cgroups, state and data
    /// directories, and with `remove_logs` its logs. A pod that is not there
    /// is not an error.
    pub async fn teardown_pod(
        &self,
        pod_uid: &str,
        grace: Duration,
        remove_logs: bool,
    ) -> Result<()> {
        let containers = match self.pod_containers(pod_uid).await {
            Ok(c) => c,
            Err(PodError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let stops = containers
            .iter()
            .filter(|c| !matches!(c.state, ContainerState::Exited(_)))
            .map(|c| self.stop_container(&c.record.id, grace));
        for result in futures::future::join_all(stops).await {
            if let Err(e) = result {
                tracing::warn!(pod = %pod_uid, error = %e, "stopping a container at teardown");
            }
        }
        let uid = pod_uid.to_string();
        self.call(move |w| {
            let dir = w.places.pods.join(&uid);
            let sandbox = if dir.join("pod.json").is_file() {
                Some(sandbox::load(&dir)?)
            } else {
                None
            };
            if let Some(sandbox) = &sandbox {
                for record in container::records(sandbox)? {
                    container::delete(&w.places, &w.exits, sandbox, &record.id)?;
                }
                if remove_logs {
                    remove_dir_all(&logs::pod_dir(&w.places.logs, &sandbox.config))?;
                }
                sandbox::remove(sandbox)?;
            } else if dir.exists() {
                // A sandbox whose record was never written: its namespaces
                // may still be mounted.
                let partial = Sandbox {
                    config: SandboxConfig {
                        uid: uid.clone(),
                        name: String::new(),
                        namespace: String::new(),
                    },
                    dir: dir.clone(),
                };
                sandbox::remove(&partial)?;
            }
            cgroup::remove_tree(&cgroup::pod_path(&w.places.cgroup_parent, &uid))?;
            remove_dir_all(&w.places.data.join(&uid))?;
            Ok(())
        })
        .await
    }

    /// Runs `argv` in the running container `id` (joining its namespaces
    /// and cgroup, as its own process' user, environment and working
    /// directory), waits at most `timeout` for it to exit and returns its
    /// exit code and output (each at most [`exec_process::OUTPUT_LIMIT`]
    /// bytes). On timeout the process and its session are killed and
    /// [`ExecError::Timeout`] is returned. See [`exec_process`].
    pub async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> std::result::Result<ExecOutput, ExecError> {
        exec_process::run(self, id, argv, timeout).await
    }

    /// Starts a process in the running container `id` and hands over its
    /// stdio (pipes, or a terminal with `tty`) and its exit: what
    /// `kubectl exec` is served with. See [`exec_process`].
    pub async fn exec_streaming(
        &self,
        id: &str,
        request: ExecRequest,
    ) -> std::result::Result<ExecProcess, ExecError> {
        exec_process::spawn(self, id, request).await
    }

    /// Finds every pod and container a previous agent left on the host, and
    /// watches the exits of the containers still running (adopting them).
    pub async fn recover(&self) -> Result<Vec<PodInfo>> {
        self.call(|w| {
            let mut pods = Vec::new();
            let entries = match fs::read_dir(&w.places.pods) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(pods),
                Err(e) => {
                    return Err(PodError::io(format!(
                        "listing {}",
                        w.places.pods.display()
                    ))(e))
                }
            };
            for entry in entries.flatten() {
                let sandbox = match sandbox::load(&entry.path()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(dir = %entry.path().display(), error = %e, "skipping a pod directory");
                        continue;
                    }
                };
                let mut namespaces_present = true;
                for (kind, _) in sandbox.namespaces() {
                    namespaces_present &= sandbox::is_ns_mounted(&sandbox.ns_path(kind))?;
                }
                let mut containers = Vec::new();
                for record in container::records(&sandbox)? {
                    let info = w.info(&sandbox, record)?;
                    if let ContainerState::Running { pid } = info.state {
                        container::watch_exit(
                            &w.exits,
                            &info.record,
                            container::exit_path(&sandbox, &info.record.id),
                            pid,
                            false,
                        );
                    }
                    containers.push(info);
                }
                pods.push(PodInfo {
                    sandbox,
                    namespaces_present,
                    containers,
                });
            }
            pods.sort_by(|a, b| a.sandbox.config.uid.cmp(&b.sandbox.config.uid));
            Ok(pods)
        })
        .await
    }
}

fn remove_dir_all(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PodError::io(format!("removing {}", dir.display()))(e)),
    }
}
