//! `orchd` processes for end-to-end tests: masters (`orchd server`) and
//! workers (`orchd agent`) on loopback ports, each with a data dir of its
//! own, that a test can SIGKILL and start again.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orch_runtime::pod::cgroup;

/// A free loopback port (free when asked; the process binds it soon
/// after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An `orchd` process (server or agent) that can be killed and restarted
/// with the same arguments.
pub struct OrchdProcess {
    exe: PathBuf,
    args: Vec<String>,
    /// Its data dir.
    pub dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl OrchdProcess {
    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("process log");
        let child = Command::new(&self.exe)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("orchd starts");
        self.child = Some(child);
    }

    /// SIGKILL, and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for it to exit (SIGKILL after `timeout`);
    /// returns how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            while started.elapsed() < timeout {
                if let Ok(Some(_)) = child.try_wait() {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        started.elapsed()
    }

    /// Waits up to `timeout` for it to exit on its own; whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OrchdProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An `orchd server`.
pub struct Master {
    /// The process.
    pub process: OrchdProcess,
    /// `127.0.0.1:PORT` of its API.
    pub api: String,
    /// `127.0.0.1:PORT` of its store member.
    pub peer: String,
}

impl Master {
    /// Starts `orchd server` (without an agent) over `dir`, joining the
    /// cluster at `join` (a master's API address, with its token) if given.
    pub fn start(exe: &Path, dir: &Path, join: Option<(&str, &str)>) -> Master {
        Self::start_with(exe, dir, join, &[])
    }

    /// [`Master::start`] with more `orchd server` flags.
    pub fn start_with(
        exe: &Path,
        dir: &Path,
        join: Option<(&str, &str)>,
        extra: &[String],
    ) -> Master {
        let api = format!("127.0.0.1:{}", free_port());
        let peer = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = [
            "server",
            "--data-dir",
            &dir.display().to_string(),
            "--api-addr",
            &api,
            "--peer-addr",
            &peer,
            "--no-agent",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some((peer, token)) = join {
            args.extend(["--join".into(), peer.into(), "--token".into(), token.into()]);
        }
        args.extend(extra.iter().cloned());
        let log = dir.with_extension("log");
        let mut process = OrchdProcess {
            exe: exe.to_path_buf(),
            args,
            dir: dir.to_path_buf(),
            log,
            child: None,
        };
        process.spawn();
        let master = Master { process, api, peer };
        master.wait_ready();
        master
    }

    /// Waits until it has written its kubeconfig and its API answers.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.kubeconfig().exists() && std::net::TcpStream::connect(&self.api).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "orchd server on {} did not start:\n{}",
                self.api,
                self.process.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The address other masters give `--join` to join its cluster (its
    /// API's).
    pub fn join_address(&self) -> &str {
        &self.api
    }

    /// Its admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.process.dir.join("kubeconfig")
    }

    /// The cluster's join token.
    pub fn token(&self) -> String {
        fs::read_to_string(self.process.dir.join("token"))
            .expect("the master wrote its token")
            .trim()
            .to_string()
    }

    /// Peer TLS with a certificate of this master's cluster CA, as
    /// `orchd` commands on its host use.
    pub fn peer_tls(&self) -> orch_raft_store::network::PeerTls {
        let tls = self.process.dir.join("tls");
        let ca = orch_core::cluster_ca::ClusterCa {
            cert_pem: fs::read_to_string(tls.join("ca.crt")).expect("the master keeps its CA"),
            key_pem: fs::read_to_string(tls.join("ca.key")).expect("the master keeps its CA key"),
        };
        ca.peer_tls(&[std::net::IpAddr::from([127, 0, 0, 1])], &[])
            .expect("a peer certificate")
    }

    /// Its store member id.
    pub fn member_id(&self) -> u64 {
        fs::read_to_string(self.process.dir.join("member-id"))
            .expect("the master wrote its member id")
            .trim()
            .parse()
            .expect("a member id")
    }
}

/// An `orchd agent` with the busybox test image.
pub struct Worker {
    /// The process.
    pub process: OrchdProcess,
    /// Its Node name.
    pub name: String,
    /// The cgroup parent of its pods (unique per worker).
    pub cgroup_parent: String,
}

impl Worker {
    /// Imports the test image into `dir` with `orchd image import`, then
    /// starts `orchd agent` named `name` for the masters at `servers`.
    pub fn start(exe: &Path, dir: &Path, name: &str, servers: &[&str], token: &str) -> Worker {
        let layout = crate::agent::test_image_layout();
        let out = Command::new(exe)
            .args(["image", "import"])
            .arg(layout)
            .args(["--name", crate::agent::IMAGE, "--data-dir"])
            .arg(dir)
            .output()
            .expect("orchd image import runs");
        assert!(
            out.status.success(),
            "orchd image import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cgroup_parent = format!("orch-e2e-{}-{name}", std::process::id());
        let args: Vec<String> = [
            "agent",
            "--data-dir",
            &dir.display().to_string(),
            "--server",
            &servers.join(","),
            "--token",
            token,
            "--node-name",
            name,
            "--port",
            "0",
            "--cgroup-parent",
            &cgroup_parent,
            // Workers share this host: no bridge of the default name.
            "--pod-network",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut process = OrchdProcess {
            exe: exe.to_path_buf(),
            args,
            dir: dir.to_path_buf(),
            log: dir.with_extension("log"),
            child: None,
        };
        process.spawn();
        Worker {
            process,
            name: name.to_string(),
            cgroup_parent,
        }
    }

    /// The pod cgroups under its parent.
    pub fn pod_cgroups(&self) -> Vec<String> {
        let mut found = Vec::new();
        for dir in cgroup::existing_dirs(Path::new(&self.cgroup_parent)) {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }
}

impl Drop for Worker {
    /// Kills the agent and every process of its pods; removes its cgroups.
    fn drop(&mut self) {
        self.process.kill9();
        crate::agent::tear_down_node(&self.cgroup_parent, &self.process.dir);
    }
}
