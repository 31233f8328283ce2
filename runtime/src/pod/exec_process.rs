//! Running a process in a running container: exec probes, and later
//! `kubectl exec`.
//!
//! # How
//!
//! libcontainer's tenant builder (`ContainerBuilder::as_tenant`, what
//! `youki exec` uses) starts the process: it joins every namespace of the
//! container's init process (mount, PID, and the pod's network, IPC and UTS
//! through the init's `/proc/<pid>/ns/*`), moves it into the container's
//! cgroup, applies the capabilities, user, rlimits and no-new-privileges of
//! the process it is given, and returns once the process has exec'd (or
//! with the error that stopped it). Doing the same with `setns` by hand
//! would mean re-implementing the PID namespace double fork, cgroup joins,
//! capabilities and user switching; the tenant builder already does it the
//! way the container's own init got it.
//!
//! The process it runs is the container's own `process` from its bundle's
//! `config.json` (its environment, working directory, user, capabilities)
//! with the arguments replaced, the extra environment added and `terminal`
//! set as asked: written as a `process.json` for the builder's
//! `with_process`, as `runc exec --process` takes it. `HOME` is added from
//! the container's `/etc/passwd` when the environment lacks it.
//!
//! # Process model
//!
//! The build forks (intermediate process, then the exec'd process cloned
//! with `CLONE_PARENT`), so it runs on the runtime's worker thread like
//! every other libcontainer call (see [`super`]). The exec'd process is a
//! child of the agent; the runtime reaps it itself: a small thread per exec
//! blocks in `waitid(P_PID, pid, WEXITED | WNOWAIT)`, then takes the
//! process' lock and reaps it with `waitpid(pid)`. Signals are sent under
//! the same lock while the pid is not reaped, so a signal can never hit a
//! reused pid. If the build fails after the process was cloned, its pid
//! (from libcontainer's pid file) is reaped the same way.
//!
//! # Killing
//!
//! The exec'd process is a session leader (libcontainer's init calls
//! `setsid`). [`ExecProcess::kill`] sends `SIGKILL` to it and to every
//! process of the container's cgroup in its session, so `sh -c 'sleep 100'`
//! leaves nothing behind when a probe times out (a process that made a
//! session of its own escapes; it stays in the container's cgroup and dies
//! with the container).
//!
//! # Output
//!
//! Without a terminal, stdin (when asked for, else `/dev/null`), stdout and
//! stderr are pipes, handed to tokio as [`pipe::Sender`] and
//! [`pipe::Receiver`]. With a terminal, libcontainer makes a pseudo-terminal
//! in the container and sends its master over a console socket (a Unix
//! socket the runtime listens on); the master is the [`ExecTerminal`].

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};

use super::cgroup;
use super::container::{self, ContainerRecord, Places};
use super::error::PodError;
use super::sandbox::Sandbox;

/// How much of each of stdout and stderr [`super::PodRuntime::exec`] keeps.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// How long output is still read after the process has exited (a background
/// process may hold the pipes open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// What can go wrong running a process in a container.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The container or its pod is not there, or a runtime operation failed
    /// (boxed: libcontainer's errors are large).
    #[error(transparent)]
    Pod(Box<PodError>),
    /// The container exists but does not run (created, or exited).
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The request cannot be run (no arguments, NUL bytes, bad names).
    #[error("invalid exec request: {0}")]
    Invalid(String),
    /// libcontainer could not start the process (executable not found,
    /// permission denied, ...), with its message.
    #[error("starting {argv0:?} in container {id}: {message}")]
    Start {
        /// The container.
        id: String,
        /// The command.
        argv0: String,
        /// libcontainer's error.
        message: String,
    },
    /// The process did not exit within the timeout; it was killed.
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
    /// Setting up or using its pipes or terminal failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl From<PodError> for ExecError {
    fn from(e: PodError) -> ExecError {
        ExecError::Pod(Box::new(e))
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ExecError {
    let context = context.into();
    move |source| ExecError::Io { context, source }
}

fn sys_err(context: impl Into<String>) -> impl FnOnce(nix::Error) -> ExecError {
    let context = context.into();
    move |e| ExecError::Io {
        context,
        source: io::Error::from(e),
    }
}

/// A process to run in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The command and its arguments (`argv[0]` is looked up in the
    /// container's `PATH`).
    pub argv: Vec<String>,
    /// Environment added to (or replacing entries of) the container's.
    pub env: Vec<(String, String)>,
    /// Whether the caller writes to the process' stdin (else it reads
    /// `/dev/null`). With `tty`, stdin is always the terminal.
    pub stdin: bool,
    /// Run it on a pseudo-terminal (`kubectl exec -t`): stdin, stdout and
    /// stderr are the terminal, reached through [`ExecProcess::terminal`].
    pub tty: bool,
}

impl ExecRequest {
    /// A request for `argv` without stdin or terminal.
    pub fn command<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> ExecRequest {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code (128 + signal number if a signal killed it).
    pub exit_code: i32,
    /// Its stdout, at most [`OUTPUT_LIMIT`] bytes.
    pub stdout: Vec<u8>,
    /// Its stderr, at most [`OUTPUT_LIMIT`] bytes.
    pub stderr: Vec<u8>,
    /// Whether either was cut at [`OUTPUT_LIMIT`].
    pub truncated: bool,
}

/// The exec'd process' pid and whether it has been reaped: signals are only
/// sent under this lock while it is not.
#[derive(Debug)]
struct Reaper {
    pid: i32,
    reaped: Mutex<bool>,
    /// The container's cgroup (to find the rest of the process' session).
    cgroups_path: PathBuf,
}

impl Reaper {
    /// `SIGKILL` to the process and to the processes of its session in the
    /// container's cgroup.
    fn kill(&self) {
        {
            let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
            if !*reaped {
                let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            }
        }
        // The session's other members are the container's processes, not
        // the agent's children: their pids cannot be held, as with any kill
        // by pid read from /proc.
        let mut seen = HashSet::new();
        for _ in 0..3 {
            let mut found = false;
            for pid in cgroup::pids(&self.cgroups_path) {
                if pid != self.pid && session_of(pid) == Some(self.pid) && seen.insert(pid) {
                    found = true;
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            if !found {
                break;
            }
        }
    }

    fn signal(&self, signal: Signal) -> Result<(), ExecError> {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if *reaped {
            return Ok(());
        }
        match nix::sys::signal::kill(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(sys_err(format!("signalling pid {}", self.pid))(e)),
        }
    }
}

/// The session id of `pid` (field 6 of `/proc/<pid>/stat`).
fn session_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // state ppid pgrp session
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Starts the thread that waits for child `pid` and reaps it; the exit code
/// arrives on the returned channel.
fn watch_child(reaper: Arc<Reaper>) -> watch::Receiver<Option<i32>> {
    let (tx, rx) = watch::channel(None);
    let pid = reaper.pid;
    let run = move || {
        while let Err(nix::Error::EINTR) = waitid(
            Id::Pid(Pid::from_raw(pid)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {}
        let code = {
            let mut reaped = reaper.reaped.lock().unwrap_or_else(|e| e.into_inner());
            let status = loop {
                match waitpid(Pid::from_raw(pid), None) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other,
                }
            };
            *reaped = true;
            match status {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                other => {
                    tracing::warn!(pid, ?other, "unexpected wait status of an exec'd process");
                    -1
                }
            }
        };
        tracing::debug!(pid, exit_code = code, "exec'd process exited");
        tx.send_replace(Some(code));
    };
    if let Err(e) = std::thread::Builder::new()
        .name("orch-exec-wait".to_string())
        .stack_size(64 * 1024)
        .spawn(run)
    {
        // Without a waiter the process stays a zombie; say so loudly.
        tracing::error!(pid, error = %e, "spawning the exec waiter thread");
    }
    rx
}

/// A pseudo-terminal's master side: what the process reads as its input and
/// writes as its output.
#[derive(Debug)]
pub struct ExecTerminal {
    master: AsyncFd<OwnedFd>,
}

impl ExecTerminal {
    fn new(master: OwnedFd) -> Result<ExecTerminal, ExecError> {
        let flags = nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::F_GETFL)
            .map_err(sys_err("reading the terminal's flags"))?;
        nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(sys_err("making the terminal non-blocking"))?;
        Ok(ExecTerminal {
            // `AsyncFd::new` is deprecated for wrappers that can close the
            // descriptor while it is registered; an `OwnedFd` it owns
            // cannot, and `register` would need unsafe code.
            #[allow(deprecated)]
            master: AsyncFd::new(master).map_err(io_err("registering the terminal"))?,
        })
    }

    /// Sets the terminal's size (`kubectl exec -t` sends the client's).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), ExecError> {
        rustix::termios::tcsetwinsize(
            self.master.get_ref(),
            rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .map_err(|e| io_err("setting the terminal size")(e.into()))
    }
}

impl ExecTerminal {
    fn poll_read_master(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = std::task::ready!(self.master.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The other side closed: a pty master reads EIO then.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write_master(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = std::task::ready!(self.master.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Reading and writing need only a shared reference, so that one task can
/// read the terminal while another writes to it and resizes it.
impl AsyncRead for &ExecTerminal {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_master(cx, buf)
    }
}

impl AsyncWrite for &ExecTerminal {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_master(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ExecTerminal {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_master(cx, buf)
    }
}

impl AsyncWrite for ExecTerminal {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_master(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A process running in a container, with its stdio. Dropping it kills the
/// process (and its session) if it still runs, as `kill_on_drop` does; the
/// runtime reaps it either way.
#[derive(Debug)]
pub struct ExecProcess {
    /// Its stdin, if the request asked for it (dropping it closes it, the
    /// process then reads end-of-file).
    pub stdin: Option<pipe::Sender>,
    /// Its stdout (not with a terminal).
    pub stdout: Option<pipe::Receiver>,
    /// Its stderr (not with a terminal).
    pub stderr: Option<pipe::Receiver>,
    /// Its terminal, with `tty`.
    pub terminal: Option<ExecTerminal>,
    reaper: Arc<Reaper>,
    exit: watch::Receiver<Option<i32>>,
}

impl ExecProcess {
    /// Its pid (in the host's PID namespace).
    pub fn pid(&self) -> i32 {
        self.reaper.pid
    }

    /// Waits until it has exited; its exit code (128 + signal number if a
    /// signal killed it).
    pub async fn wait(&mut self) -> i32 {
        match self.exit.wait_for(|e| e.is_some()).await {
            Ok(code) => code.unwrap_or(-1),
            // The waiter thread is gone without a result (it could not be
            // spawned): nothing will ever tell.
            Err(_) => -1,
        }
    }

    /// Its exit code if it has exited.
    pub fn try_wait(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// Sends `signal` to it (nothing if it has exited).
    pub fn signal(&self, signal: Signal) -> Result<(), ExecError> {
        self.reaper.signal(signal)
    }

    /// `SIGKILL` to it and to every process of its session in the
    /// container.
    pub fn kill(&self) {
        self.reaper.kill()
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        if self.exit.borrow().is_none() {
            self.reaper.kill();
        }
    }
}

/// What the worker thread hands back: the process and the parent ends of
/// its stdio.
pub(crate) struct Started {
    reaper: Arc<Reaper>,
    exit: watch::Receiver<Option<i32>>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    terminal: Option<OwnedFd>,
}

impl Started {
    /// Kills the process (nobody wants it any more).
    pub(crate) fn kill(&self) {
        self.reaper.kill();
    }

    /// Turns the descriptors into tokio's (needs a runtime).
    pub(crate) fn into_process(self) -> Result<ExecProcess, ExecError> {
        let Started {
            reaper,
            exit,
            stdin,
            stdout,
            stderr,
            terminal,
        } = self;
        let mut process = ExecProcess {
            stdin: None,
            stdout: None,
            stderr: None,
            terminal: None,
            reaper,
            exit,
        };
        if let Some(fd) = stdin {
            process.stdin =
                Some(pipe::Sender::from_owned_fd(fd).map_err(io_err("registering stdin"))?);
        }
        if let Some(fd) = stdout {
            process.stdout =
                Some(pipe::Receiver::from_owned_fd(fd).map_err(io_err("registering stdout"))?);
        }
        if let Some(fd) = stderr {
            process.stderr =
                Some(pipe::Receiver::from_owned_fd(fd).map_err(io_err("registering stderr"))?);
        }
        if let Some(fd) = terminal {
            process.terminal = Some(ExecTerminal::new(fd)?);
        }
        Ok(process)
    }
}

fn pipe_pair(what: &str) -> Result<(OwnedFd, OwnedFd), ExecError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err(format!("creating the {what} pipe")))
}

/// The container's `process` with the request's arguments, environment and
/// terminal.
fn exec_process_spec(bundle: &Path, request: &ExecRequest) -> Result<Value, ExecError> {
    let path = bundle.join("config.json");
    let bytes = fs::read(&path).map_err(PodError::io(format!("reading {}", path.display())))?;
    let spec: Value = serde_json::from_slice(&bytes).map_err(|e| PodError::Record {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut process = spec
        .get("process")
        .cloned()
        .ok_or_else(|| PodError::Record {
            path: path.display().to_string(),
            reason: "no process".to_string(),
        })?;
    let mut env: Vec<String> = process
        .get("env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for (name, value) in &request.env {
        if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
            return Err(ExecError::Invalid(format!(
                "environment variable {name:?} is not NAME=value"
            )));
        }
        let prefix = format!("{name}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{name}={value}"));
    }
    process["args"] = Value::from(request.argv.clone());
    process["env"] = Value::from(env);
    process["terminal"] = Value::from(request.tty);
    if request.tty && process.get("consoleSize").is_none() {
        process["consoleSize"] = serde_json::json!({"height": 24, "width": 80});
    }
    Ok(process)
}

/// Removes what a tenant build leaves in libcontainer's container directory:
/// its notify socket and console socket link (one per exec, never reused).
fn remove_tenant_leftovers(container_dir: &Path) {
    for entry in fs::read_dir(container_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tenant-notify-") || name.starts_with("tenant-tty-") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Receives the terminal master libcontainer's process sends over the
/// console socket (one connection, one descriptor in `SCM_RIGHTS`).
fn receive_terminal(listener: &UnixListener) -> Result<OwnedFd, ExecError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    listener
        .set_nonblocking(true)
        .map_err(io_err("console socket"))?;
    // The process has exec'd when the build returns: it sent the master
    // before, so the connection and its message are queued already.
    let (stream, _) = listener
        .accept()
        .map_err(io_err("accepting on the console socket"))?;
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(&stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| io_err("receiving the terminal")(e.into()))?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(ExecError::Io {
        context: "the console socket carried no terminal".to_string(),
        source: io::Error::from(io::ErrorKind::InvalidData),
    })
}

/// Starts the process on the worker thread. Blocking.
pub(crate) fn start(
    places: &Places,
    sandbox: &Sandbox,
    id: &str,
    request: &ExecRequest,
) -> Result<Started, ExecError> {
    let argv0 = request
        .argv
        .first()
        .ok_or_else(|| ExecError::Invalid("no command".to_string()))?
        .clone();
    if request.argv.iter().any(|a| a.contains('\0')) {
        return Err(ExecError::Invalid(
            "an argument contains a NUL byte".to_string(),
        ));
    }
    let record: ContainerRecord = container::load_record(sandbox, id)?;
    let container_dir = places.libcontainer.join(id);
    if !container_dir.exists() {
        return Err(ExecError::NotRunning(id.to_string()));
    }
    let state = Container::load(container_dir.clone())
        .map_err(PodError::container(format!("loading container {id}")))?;
    if state.status() != ContainerStatus::Running {
        return Err(ExecError::NotRunning(id.to_string()));
    }

    // The process description and the pid file live beside the record; the
    // worker thread runs one exec at a time, so fixed names do.
    let record_dir = sandbox.containers_dir().join(id);
    let process_file = record_dir.join("exec-process.json");
    let pid_file = record_dir.join("exec.pid");
    let _ = fs::remove_file(&pid_file);
    let process = exec_process_spec(&record.bundle, request)?;
    super::sandbox::write_file(
        &process_file,
        &serde_json::to_vec(&process).map_err(|e| PodError::Record {
            path: process_file.display().to_string(),
            reason: e.to_string(),
        })?,
    )?;

    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(&places.libcontainer)
        .map_err(PodError::container(format!("container {id}: state root")))?
        .with_executor(super::exec::EnvSafeExecutor::default())
        .with_pid_file(Some(&pid_file))
        .map_err(PodError::container(format!("container {id}: pid file")))?;

    let mut parent = (None, None, None);
    let mut console: Option<(tempfile::TempDir, UnixListener)> = None;
    if request.tty {
        // A short path: Unix socket addresses are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("orch-tty")
            .tempdir()
            .map_err(io_err("creating the console socket directory"))?;
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).map_err(io_err("binding the console socket"))?;
        builder = builder.with_console_socket(Some(&path));
        console = Some((dir, listener));
    } else {
        if request.stdin {
            let (r, w) = pipe_pair("stdin")?;
            builder = builder.with_stdin(r);
            parent.0 = Some(w);
        } else {
            let null = File::open("/dev/null").map_err(io_err("opening /dev/null"))?;
            builder = builder.with_stdin(null);
        }
        let (r, w) = pipe_pair("stdout")?;
        builder = builder.with_stdout(w);
        parent.1 = Some(r);
        let (r, w) = pipe_pair("stderr")?;
        builder = builder.with_stderr(w);
        parent.2 = Some(r);
    }

    let built = builder
        .validate_id()
        .map_err(PodError::container(format!("container {id}: id")))?
        .as_tenant()
        .with_process(Some(&process_file))
        .with_detach(request.tty)
        .build();
    let _ = fs::remove_file(&process_file);
    remove_tenant_leftovers(&container_dir);
    let pid_from_file = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let _ = fs::remove_file(&pid_file);

    let pid = match built {
        Ok(pid) => pid.as_raw(),
        Err(e) => {
            // The process may have been cloned (it is our child) and failed:
            // reap it.
            if let Some(pid) = pid_from_file {
                let reaper = Arc::new(Reaper {
                    pid,
                    reaped: Mutex::new(false),
                    cgroups_path: record.cgroups_path.clone(),
                });
                reaper.kill();
                drop(watch_child(reaper));
            }
            let message = match e {
                libcontainer::error::LibcontainerError::IncorrectStatus(_) => {
                    return Err(ExecError::NotRunning(id.to_string()))
                }
                other => other.to_string(),
            };
            return Err(ExecError::Start {
                id: id.to_string(),
                argv0,
                message,
            });
        }
    };
    let reaper = Arc::new(Reaper {
        pid,
        reaped: Mutex::new(false),
        cgroups_path: record.cgroups_path.clone(),
    });
    let exit = watch_child(reaper.clone());
    let terminal = match &console {
        Some((_, listener)) => match receive_terminal(listener) {
            Ok(fd) => Some(fd),
            Err(e) => {
                reaper.kill();
                return Err(e);
            }
        },
        None => None,
    };
    tracing::debug!(container = %id, pid, argv0 = %argv0, tty = request.tty, "exec'd a process");
    Ok(Started {
        reaper,
        exit,
        stdin: parent.0,
        stdout: parent.1,
        stderr: parent.2,
        terminal,
    })
}

/// Starts `request` in container `id` through the runtime's worker thread.
/// If the caller goes away before the process is handed over, it is killed.
pub(crate) async fn spawn(
    runtime: &super::PodRuntime,
    id: &str,
    request: ExecRequest,
) -> Result<ExecProcess, ExecError> {
    let (tx, rx) = oneshot::channel::<Result<Started, ExecError>>();
    let id = id.to_string();
    runtime
        .jobs
        .send(Box::new(move |w: &super::Worker| {
            let result = (|| {
                let (uid, _, _) = super::parse_id(&id)?;
                let sandbox = w.sandbox(uid)?;
                start(&w.places, &sandbox, &id, &request)
            })();
            if let Err(Ok(started)) = tx.send(result) {
                started.kill();
            }
        }))
        .map_err(|_| PodError::WorkerGone)?;
    let started = rx.await.map_err(|_| PodError::WorkerGone)??;
    let kill_guard = KillGuard(Some(started.reaper.clone()));
    let process = started.into_process();
    kill_guard.disarm();
    process
}

/// Kills the process unless disarmed (a failed hand-over).
struct KillGuard(Option<Arc<Reaper>>);

impl KillGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(reaper) = &self.0 {
            reaper.kill();
        }
    }
}

/// What a reader task has read: the first bytes and whether more came.
type Captured = Arc<Mutex<(Vec<u8>, bool)>>;

/// Reads everything from `reader` into `into`, keeping the first `limit`
/// bytes.
async fn read_bounded(mut reader: pipe::Receiver, limit: usize, into: Captured) {
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut captured = into.lock().unwrap_or_else(|e| e.into_inner());
                let room = limit.saturating_sub(captured.0.len());
                if n > room {
                    captured.1 = true;
                }
                captured.0.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Runs `argv` in container `id`, waits at most `timeout` for it to exit
/// (killing it and its session then), and returns its exit code and output.
pub(crate) async fn run(
    runtime: &super::PodRuntime,
    id: &str,
    argv: Vec<String>,
    timeout: Duration,
) -> Result<ExecOutput, ExecError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let spawned = tokio::time::timeout_at(deadline, spawn(runtime, id, ExecRequest::command(argv)));
    let mut process = match spawned.await {
        Ok(result) => result?,
        // Dropping the spawn kills the process once it is started.
        Err(_) => return Err(ExecError::Timeout(timeout)),
    };
    let readers: Vec<(Captured, tokio::task::JoinHandle<()>)> =
        [process.stdout.take(), process.stderr.take()]
            .into_iter()
            .map(|r| {
                let captured = Captured::default();
                let task = match r {
                    Some(r) => tokio::spawn(read_bounded(r, OUTPUT_LIMIT, captured.clone())),
                    None => tokio::spawn(async {}),
                };
                (captured, task)
            })
            .collect();
    let exit_code = match tokio::time::timeout_at(deadline, process.wait()).await {
        Ok(code) => code,
        Err(_) => {
            process.kill();
            for (_, task) in &readers {
                task.abort();
            }
            // Give the waiter a moment to reap it, so nothing is left when
            // this returns (it is reaped regardless).
            let _ = tokio::time::timeout(Duration::from_secs(5), process.wait()).await;
            return Err(ExecError::Timeout(timeout));
        }
    };
    let mut output = ExecOutput {
        exit_code,
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    let drain_deadline = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
    for (i, (captured, mut task)) in readers.into_iter().enumerate() {
        if tokio::time::timeout_at(drain_deadline, &mut task)
            .await
            .is_err()
        {
            // A background process holds the pipe open: keep what came.
            task.abort();
        }
        let (bytes, truncated) =
            std::mem::take(&mut *captured.lock().unwrap_or_else(|e| e.into_inner()));
        output.truncated |= truncated;
        if i == 0 {
            output.stdout = bytes;
        } else {
            output.stderr = bytes;
        }
    }
    Ok(output)
}
