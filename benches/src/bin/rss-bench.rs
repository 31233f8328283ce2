//! `rss-bench`: the idle memory of orchd.
//!
//! Starts one `orchd server` with its embedded agent (a child process,
//! `orchd agent`) and one `orchd agent` worker (with the busybox test image,
//! built locally by scripts/build-test-image) on loopback, waits until
//! `orchd status` shows both Nodes Ready, lets them idle `--idle-secs`, then
//! reads VmRSS (and the peak, VmHWM) from /proc/PID/status, and PSS from
//! /proc/PID/smaps_rollup (the binary's pages the processes share divided
//! among them), of the server, its agent and the worker's agent. With `--pods N`, it then runs N idle
//! busybox pods (`sleep 3600`) on the worker, idles again and reads the
//! same figures (the containers' own processes are not counted).
//!
//! Prints the figures in MB (10^6 bytes), the settings, and the anchors:
//! k3s' server at 768-1,600 MB and its agent at about 270 MB; orch aims at
//! <= 60 MB for a server with its agent and <= 30 MB for an agent.
//!
//! ```sh
//! sudo cargo run --release -p orch-benches --bin rss-bench -- --idle-secs 20
//! ```
//!
//! Needs root (the agents set up cgroups and mounts). Uses the `orchd`
//! binary next to this one (built with `cargo build -p orchd`, `--release`
//! for a release build, if it is missing).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use orch_tests::orchd::{free_port, Worker};
use serde_json::json;

/// The embedded agent's Node name.
const SERVER_NODE: &str = "rss-server";
/// The worker's Node name.
const WORKER_NODE: &str = "rss-worker";

#[derive(Parser)]
#[command(
    name = "rss-bench",
    about = "Idle memory (RSS) of orchd server with its agent, and of orchd agent"
)]
struct Args {
    /// Seconds to idle once both Nodes are Ready, before reading RSS.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Then run this many idle busybox pods on the worker, idle again and
    /// read RSS again (0: skip).
    #[arg(long, default_value_t = 0)]
    pods: usize,
    /// The orchd binary (default: the one next to this benchmark, built if
    /// missing).
    #[arg(long)]
    orchd: Option<PathBuf>,
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The command line of `pid`.
fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The `orchd agent` processes whose parent is `parent` and whose command
/// line mentions `needle`.
fn agents_of(parent: u32, needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if parent_of(pid) != Some(parent) {
            continue;
        }
        let args = cmdline(pid);
        if args.get(1).map(String::as_str) == Some("agent")
            && args.iter().any(|a| a.contains(needle))
        {
            found.push(pid);
        }
    }
    found
}

/// Memory figures of one process, from /proc/PID/status.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// Resident set size, KiB.
    rss_kib: u64,
    /// Proportional set size (shared pages divided among their users,
    /// e.g. the orchd binary's pages the three processes share), KiB.
    pss_kib: u64,
    /// Peak resident set size, KiB.
    peak_kib: u64,
    /// Anonymous resident memory, KiB.
    anon_kib: u64,
    /// Threads.
    threads: u64,
}

fn memory_of(pid: u32) -> Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let pss_kib = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no Pss in /proc/{pid}/smaps_rollup"))?;
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        pss_kib,
        peak_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
        threads: field("Threads:")?,
    })
}

/// KiB in MB (10^6 bytes).
fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// An `orchd server` with its embedded agent, stopped (SIGTERM, then
/// SIGKILL) with its agent when dropped.
struct Server {
    child: Child,
    dir: PathBuf,
    api: String,
    log: PathBuf,
    /// The embedded agent's pod network (default bridge and its nftables
    /// table) did not exist before: remove it with the server.
    owns_pod_network: bool,
}

/// The bridge an embedded agent makes by default.
const DEFAULT_BRIDGE: &str = "orch0";

impl Server {
    fn start(orchd: &Path, dir: &Path) -> Result<Server> {
        let owns_pod_network = !Path::new("/sys/class/net").join(DEFAULT_BRIDGE).exists();
        let api = format!("127.0.0.1:{}", free_port());
        let log = dir.with_extension("log");
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(orchd)
            .arg("server")
            .arg("--data-dir")
            .arg(dir)
            .args(["--api-addr", &api])
            .args(["--peer-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--agent-port", &free_port().to_string()])
            .args(["--node-name", SERVER_NODE])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", orchd.display()))?;
        Ok(Server {
            child,
            dir: dir.to_path_buf(),
            api,
            log,
            owns_pod_network,
        })
    }

    /// Waits until it wrote its kubeconfig and its API accepts
    /// connections.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("orchd server exited ({status}):\n{}", self.log_text());
            }
            if self.dir.join("kubeconfig").exists()
                && std::net::TcpStream::connect(&self.api).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("orchd server did not start in 60 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its embedded agent's pid.
    fn agent_pid(&self) -> Result<u32> {
        let needle = self.dir.join("agent").display().to_string();
        agents_of(self.pid(), &needle)
            .into_iter()
            .next()
            .context("the server's embedded agent is not running")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let agents = agents_of(self.pid(), &self.dir.display().to_string());
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for agent in agents {
            // Still there (now a child of init) only if the server did not
            // stop it.
            if parent_of(agent).is_some() && cmdline(agent).get(1).is_some_and(|a| a == "agent") {
                let _ = kill(Pid::from_raw(agent as i32), Signal::SIGKILL);
            }
        }
        if self.owns_pod_network {
            let _ = Command::new("ip")
                .args(["link", "del", DEFAULT_BRIDGE])
                .stderr(std::process::Stdio::null())
                .status();
            for table in ["nat", "svc"] {
                let _ = Command::new("nft")
                    .args([
                        "delete",
                        "table",
                        "ip",
                        &format!("{DEFAULT_BRIDGE}-{table}"),
                    ])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

/// The Nodes `orchd status --data-dir dir` shows Ready.
fn ready_nodes(orchd: &Path, dir: &Path) -> Vec<String> {
    let Ok(out) = Command::new(orchd)
        .args(["status", "--data-dir"])
        .arg(dir)
        .output()
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip_while(|l| !l.starts_with("nodes:"))
        .skip(1)
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, "Ready"] => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

/// Waits until both Nodes are Ready.
fn wait_nodes_ready(orchd: &Path, server: &Server) -> Result<Duration> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    loop {
        let ready = ready_nodes(orchd, &server.dir);
        if [SERVER_NODE, WORKER_NODE]
            .iter()
            .all(|n| ready.iter().any(|r| r == n))
        {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "the Nodes were not Ready within 120 s (Ready: {ready:?}); server log:\n{}",
                server.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The three processes' memory, printed; returns the server+agent and
/// worker agent RSS in KiB.
fn report(what: &str, server: &Server, worker_pid: u32) -> Result<(u64, u64)> {
    let server_mem = memory_of(server.pid())?;
    let agent_pid = server.agent_pid()?;
    let agent_mem = memory_of(agent_pid)?;
    let worker_mem = memory_of(worker_pid)?;
    println!("{what}:");
    for (name, pid, m) in [
        ("orchd server", server.pid(), server_mem),
        ("  its agent (orchd agent)", agent_pid, agent_mem),
        ("orchd agent (worker)", worker_pid, worker_mem),
    ] {
        println!(
            "  {name:<26} pid {pid:<8} RSS {:>6.1} MB (PSS {:>6.1} MB, anonymous {:>6.1} MB, peak {:>6.1} MB), {} threads",
            mb(m.rss_kib),
            mb(m.pss_kib),
            mb(m.anon_kib),
            mb(m.peak_kib),
            m.threads
        );
    }
    let together = server_mem.rss_kib + agent_mem.rss_kib;
    println!(
        "  server with its agent: RSS {:.1} MB, PSS {:.1} MB (orch aims <= 60 MB; k3s server 768-1,600 MB)",
        mb(together),
        mb(server_mem.pss_kib + agent_mem.pss_kib)
    );
    println!(
        "  agent: RSS {:.1} MB, PSS {:.1} MB (orch aims <= 30 MB; k3s agent ~270 MB)",
        mb(worker_mem.rss_kib),
        mb(worker_mem.pss_kib)
    );
    Ok((together, worker_mem.rss_kib))
}

/// Runs `count` idle busybox pods on the worker and waits until they run.
async fn run_pods(client: &orch_core::Client, count: usize) -> Result<Duration> {
    let started = Instant::now();
    for i in 0..count {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("rss-{i}"), "labels": {"bench": "rss"}},
            "spec": {
                "nodeName": WORKER_NODE,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": orch_tests::agent::IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                }],
            },
        }))?;
        client
            .create(Some("default"), &pod)
            .await
            .map_err(|e| anyhow!("creating pod rss-{i}: {e}"))?;
    }
    let deadline = started + Duration::from_secs(120 + 2 * count as u64);
    loop {
        let (pods, _) = client
            .list::<Pod>(Some("default"), Some("bench=rss"))
            .await
            .map_err(|e| anyhow!("listing pods: {e}"))?;
        let running = pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == count {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "{running} of {count} pods Running after {:?}",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let orchd = orch_benches::orchd_binary(args.orchd.clone())?;
    if !nix::unistd::geteuid().is_root() {
        bail!("rss-bench needs root: the agents set up cgroups and mounts");
    }
    let profile = if cfg!(debug_assertions) {
        "debug build (figures not representative)"
    } else {
        "release build"
    };
    println!(
        "rss-bench setting: one orchd server with its embedded agent, one orchd agent worker, idle {} s once both Nodes are Ready, \
         then {}; {profile}; cores {}",
        args.idle_secs,
        if args.pods == 0 {
            "no pods (--pods 0)".to_string()
        } else {
            format!("{} idle busybox pods on the worker, idle again", args.pods)
        },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("orchd: {}", orchd.display());
    println!(
        "anchor: k3s server 768-1,600 MB, k3s agent ~270 MB; orch aims at <= 60 MB (server with its agent) and <= 30 MB (agent)"
    );

    let root = tempfile::tempdir()?;
    let mut server = Server::start(&orchd, &root.path().join("server"))?;
    server.wait_ready()?;
    let token = fs::read_to_string(server.dir.join("token"))
        .context("reading the server's token")?
        .trim()
        .to_string();
    let worker_dir = root.path().join("worker");
    let worker = Worker::start(&orchd, &worker_dir, WORKER_NODE, &[&server.api], &token);
    // The test image was imported into the worker's store; its layout
    // (built in a temp dir that is never dropped) is not needed any more.
    if let Some(dir) = orch_tests::agent::test_image_layout().parent() {
        let _ = fs::remove_dir_all(dir);
    }
    let worker_pid = agents_of(std::process::id(), &worker_dir.display().to_string())
        .into_iter()
        .next()
        .context("the worker's agent is not running")?;
    let ready = wait_nodes_ready(&orchd, &server)?;
    println!(
        "both Nodes Ready {:.1} s after the worker started",
        ready.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    report(
        &format!(
            "idle, {} s after both Nodes were Ready, no pods",
            args.idle_secs
        ),
        &server,
        worker_pid,
    )?;

    if args.pods > 0 {
        let ca = fs::read_to_string(server.dir.join("tls/ca.crt")).context("reading the CA")?;
        let client =
            orch_core::Client::https_servers(vec![server.api.clone()], Some(token.clone()), &ca)
                .map_err(|e| anyhow!("API client: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let took = runtime.block_on(run_pods(&client, args.pods))?;
        println!(
            "{} pods Running on {WORKER_NODE} {:.1} s after the first create",
            args.pods,
            took.as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(args.idle_secs));
        report(
            &format!(
                "idle, {} s after {} pods were Running on the worker",
                args.idle_secs, args.pods
            ),
            &server,
            worker_pid,
        )?;
    }
    // The worker (its pods and cgroups with it), then the server and its
    // agent, then the data dirs.
    drop(worker);
    drop(server);
    Ok(())
}
