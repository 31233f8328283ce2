//! `store-bench`: throughput and latency of orch's replicated store, side by
//! side with etcd.
//!
//! The bench starts a cluster of orch store members as separate OS processes
//! (it re-executes itself with a hidden `__member` first argument), and with
//! `--compare-etcd` a cluster of the same size of Debian's `/usr/bin/etcd`,
//! both on loopback with data dirs in fresh temporary directories. It then runs
//! the same workload on each system in turn, one phase per client count:
//!
//! * puts: `--ops` puts of `--value-bytes` values to keys `bench/{:08}` drawn
//!   from `--keys` keys by a seeded RNG, split across N sequential clients;
//! * gets: linearizable gets of the same keys, same split;
//! * watch: one watcher on the prefix `bench/` while N clients put values
//!   whose first 16 bytes carry their send time; the latency of an event is
//!   its receive time minus its send time.
//!
//! It prints the exact setting, then one table with orch's and etcd's figures
//! per (operation, clients), and optionally writes them as JSON (`--json`).
//!
//! ```text
//! cargo run --release -p orch-benches --bin store-bench -- \
//!     --members 3 --clients 1,64 --ops 100000 --value-bytes 256 --compare-etcd
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use orch_raft_store::member::{run_member, MemberOptions};
use orch_raft_store::{Client as OrchClient, KeyRange, Kv, WatchRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};

/// The hidden first argument that turns this binary into one store member.
const MEMBER_ARG: &str = "__member";
/// Prefix of every benchmark key (and of the watch).
const KEY_PREFIX: &str = "bench/";
/// The key the watch phase writes to learn that its watcher is live.
const SYNC_KEY: &str = "bench/~sync";
/// Puts before the first measured phase, to open connections (not measured,
/// outside the `bench/` prefix).
const WARMUP_PUTS: usize = 200;
/// Bytes of a watch-phase value that carry the send time.
const STAMP_BYTES: usize = 16;
/// Longest latency the histograms hold, in microseconds (one hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// How long the watch phase waits for a missing event before giving up.
const WATCH_IDLE_LIMIT: Duration = Duration::from_secs(20);

/// Benchmark orch's replicated store, and optionally etcd, on this machine.
#[derive(Parser, Debug)]
#[command(name = "store-bench", version)]
struct Cli {
    /// Members per cluster (orch and etcd alike).
    #[arg(long, default_value_t = 3)]
    members: u64,
    /// Client counts, one phase each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Puts per put phase, and gets per get phase.
    #[arg(long, default_value_t = 100_000)]
    ops: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Number of distinct keys the workload draws from.
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// Puts per watch phase [default: ops/10, at least min(ops, 10000)].
    #[arg(long)]
    watch_ops: Option<usize>,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also start an etcd cluster and run the same workload on it.
    #[arg(long)]
    compare_etcd: bool,
    /// The etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Run orch members without fsync of the Raft log (orch only; etcd keeps fsync on).
    #[arg(long)]
    no_fsync: bool,
    /// Skip the get phases.
    #[arg(long)]
    skip_gets: bool,
    /// Skip the watch phases.
    #[arg(long)]
    skip_watch: bool,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Make the temporary data dirs under this directory [default: the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the data dirs and member logs instead of deleting them.
    #[arg(long)]
    keep_dirs: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let outcome = if args.get(1).map(String::as_str) == Some(MEMBER_ARG) {
        member_main(&args[2..])
    } else {
        let cli = Cli::parse();
        validate(&cli).and_then(|()| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            bench(&cli, &runtime)
        })
    };
    if let Err(e) = outcome {
        eprintln!("store-bench: error: {e:#}");
        std::process::exit(1);
    }
}

// --- member process ----------------------------------------------------------

/// `store-bench __member ID DATA_DIR LISTEN_ADDR [--bootstrap | --join ADDR] [--no-fsync]`
fn member_main(args: &[String]) -> Result<()> {
    let usage = "usage: store-bench __member ID DATA_DIR LISTEN_ADDR [--bootstrap | --join ADDR] [--no-fsync]";
    let [id, data_dir, listen, rest @ ..] = args else {
        bail!("{usage}");
    };
    let mut options = MemberOptions {
        id: id.parse().with_context(|| format!("member id {id:?}"))?,
        data_dir: PathBuf::from(data_dir),
        listen: listen
            .parse()
            .with_context(|| format!("listen address {listen:?}"))?,
        bootstrap: false,
        join: None,
        fsync: true,
    };
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--bootstrap" => options.bootstrap = true,
            "--join" => {
                options.join = Some(
                    rest.next()
                        .ok_or_else(|| anyhow!("--join needs an address"))?
                        .clone(),
                )
            }
            "--no-fsync" => options.fsync = false,
            other => bail!("unknown member argument {other:?}; {usage}"),
        }
    }
    if options.bootstrap && options.join.is_some() {
        bail!("--bootstrap and --join exclude each other");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime
        .block_on(run_member(options))
        .context("running the store member")
}

// --- settings ----------------------------------------------------------------

fn validate(cli: &Cli) -> Result<()> {
    if cli.members == 0 {
        bail!("--members must be at least 1");
    }
    if cli.clients.is_empty() || cli.clients.contains(&0) {
        bail!("--clients needs one or more counts, each at least 1");
    }
    if cli.ops == 0 || cli.keys == 0 {
        bail!("--ops and --keys must be at least 1");
    }
    if !cli.skip_watch && cli.value_bytes < STAMP_BYTES {
        bail!("the watch phase needs --value-bytes of at least {STAMP_BYTES} (or --skip-watch)");
    }
    if cli.compare_etcd {
        if !cli.etcd_bin.exists() {
            bail!(
                "{} not found: install it with `apt-get install -y etcd-server etcd-client`, or pass --etcd-bin",
                cli.etcd_bin.display()
            );
        }
        if etcd_binary_version(&cli.etcd_bin).is_none() {
            bail!(
                "`{} --version` did not print an etcd version",
                cli.etcd_bin.display()
            );
        }
    }
    Ok(())
}

fn watch_ops(cli: &Cli) -> usize {
    cli.watch_ops
        .unwrap_or_else(|| (cli.ops / 10).max(cli.ops.min(10_000)))
        .max(1)
}

/// The workload's operations, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Put,
    Get,
    Watch,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Watch => "watch",
        }
    }
}

/// Which system a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Orch,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Orch => "orch",
            System::Etcd => "etcd",
        }
    }
}

/// Per-task key indices of one phase, the same for both systems.
fn key_plan(seed: u64, keys: u32, ops: usize, clients: usize) -> Vec<Vec<u32>> {
    (0..clients)
        .map(|task| {
            let count = ops / clients + usize::from(task < ops % clients);
            let mut rng =
                StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(task as u64));
            (0..count).map(|_| rng.random_range(0..keys)).collect()
        })
        .collect()
}

fn key_of(index: u32) -> String {
    format!("{KEY_PREFIX}{index:08}")
}

/// A value of `len` bytes with a recognisable pattern.
fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

// --- processes -----------------------------------------------------------------

/// `count` distinct free loopback ports: bind port 0, read the port, and
/// release every listener only once all ports are chosen.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding a loopback port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// One server process and where its stderr goes.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Log length when the workload began (lines before it are startup chatter).
    log_mark: u64,
}

/// A set of server processes and their temporary directory. Dropping it stops
/// the processes (SIGTERM, then SIGKILL after a grace period) before the
/// directory is removed, on every path including errors and panics.
struct Cluster {
    system: System,
    procs: Vec<Proc>,
    /// Client addresses, in member order (`host:port` for orch, URLs for etcd).
    endpoints: Vec<String>,
    dir: Option<tempfile::TempDir>,
    keep_dir: bool,
}

impl Cluster {
    fn new(system: System, cli: &Cli) -> Result<Cluster> {
        let prefix = format!("store-bench-{}-", system.name());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let dir = match &cli.work_dir {
            Some(base) => {
                std::fs::create_dir_all(base)
                    .with_context(|| format!("creating {}", base.display()))?;
                builder.tempdir_in(base)
            }
            None => builder.tempdir(),
        }
        .context("creating a temporary directory")?;
        Ok(Cluster {
            system,
            procs: Vec::new(),
            endpoints: Vec::new(),
            dir: Some(dir),
            keep_dir: cli.keep_dirs,
        })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("dir is kept until drop").path()
    }

    /// Starts a process with stdout piped and stderr written to `NAME.log`.
    fn spawn(&mut self, name: &str, mut command: Command) -> Result<(usize, ChildStdout)> {
        let log = self.path().join(format!("{name}.log"));
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            log_mark: 0,
        });
        Ok((self.procs.len() - 1, stdout))
    }

    /// An error about process `index`, with the end of its log.
    fn failure(&mut self, index: usize, what: &str) -> anyhow::Error {
        let proc = &mut self.procs[index];
        let state = match proc.child.try_wait() {
            Ok(Some(status)) => format!("exited with {status}"),
            Ok(None) => "still running".to_string(),
            Err(e) => format!("state unknown: {e}"),
        };
        anyhow!(
            "{} {what} ({state}); end of {}:\n{}",
            proc.name,
            proc.log.display(),
            log_tail(&proc.log, 4000)
        )
    }

    /// Notes how long each log is, so that the report shows only what was
    /// logged during the workload.
    fn mark_logs(&mut self) {
        for proc in &mut self.procs {
            proc.log_mark = std::fs::metadata(&proc.log).map_or(0, |m| m.len());
        }
    }

    /// Summary of what the processes logged during the workload: line count
    /// and the first lines.
    fn log_report(&self) -> Vec<String> {
        let mut report = Vec::new();
        for proc in &self.procs {
            let bytes = std::fs::read(&proc.log).unwrap_or_default();
            let start = usize::try_from(proc.log_mark)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let text = String::from_utf8_lossy(&bytes[start..]);
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                continue;
            }
            report.push(format!(
                "  {} logged {} line(s) during the workload; first ones:",
                proc.name,
                lines.len()
            ));
            for line in lines.iter().take(5) {
                let mut line = line.to_string();
                if line.len() > 300 {
                    let mut cut = 300;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    line.push_str(" ...");
                }
                report.push(format!("    {line}"));
            }
        }
        report
    }

    /// Stops every process: SIGTERM to all, up to 10 s grace, then SIGKILL.
    fn stop(&mut self) {
        for proc in &mut self.procs {
            if matches!(proc.child.try_wait(), Ok(None)) {
                let term = Command::new("kill")
                    .args(["-TERM", &proc.child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if !matches!(term, Ok(status) if status.success()) {
                    let _ = proc.child.kill();
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for proc in &mut self.procs {
            loop {
                match proc.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!(
                            "store-bench: {} did not stop on SIGTERM; killing it",
                            proc.name
                        );
                        let _ = proc.child.kill();
                        let _ = proc.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            if self.keep_dir {
                let path = dir.keep();
                eprintln!(
                    "store-bench: kept {} data and logs in {}",
                    self.system.name(),
                    path.display()
                );
            }
        }
    }
}

fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no log)".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads a process's stdout on a thread; sends the first line that contains
/// `marker`, then keeps draining until the process closes stdout.
fn watch_stdout(stdout: ChildStdout, marker: &'static str) -> std_mpsc::Receiver<String> {
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(marker) {
                sent = true;
                let _ = tx.send(line);
            }
        }
    });
    rx
}

// --- orch cluster --------------------------------------------------------------

fn start_orch(cli: &Cli, runtime: &Runtime) -> Result<Cluster> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut cluster = Cluster::new(System::Orch, cli)?;
    let ports = free_ports(cli.members as usize)?;
    let mut seed_addr: Option<String> = None;
    for (id, port) in (1..=cli.members).zip(ports) {
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let data_dir = cluster.path().join(format!("member-{id}"));
        let mut command = Command::new(&exe);
        command
            .arg(MEMBER_ARG)
            .arg(id.to_string())
            .arg(&data_dir)
            .arg(listen.to_string());
        match &seed_addr {
            None => {
                command.arg("--bootstrap");
            }
            Some(seed) => {
                command.arg("--join").arg(seed);
            }
        }
        if cli.no_fsync {
            command.arg("--no-fsync");
        }
        let (index, stdout) = cluster.spawn(&format!("orch-member-{id}"), command)?;
        // A joining member prints its line once it is a voter.
        let line =
            match watch_stdout(stdout, " listening on ").recv_timeout(Duration::from_secs(120)) {
                Ok(line) => line,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    return Err(cluster.failure(index, "did not report listening within 120 s"))
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(cluster.failure(index, "closed stdout before listening"))
                }
            };
        let addr = line
            .rsplit(' ')
            .next()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| anyhow!("unexpected line from orch member {id}: {line:?}"))?
            .to_string();
        seed_addr.get_or_insert_with(|| addr.clone());
        cluster.endpoints.push(addr);
    }
    let client = OrchClient::new(cluster.endpoints.clone()).with_timeout(Duration::from_secs(5));
    let wanted = cli.members as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    runtime.block_on(async {
        loop {
            let mut ready = true;
            let mut leaders = Vec::new();
            let mut last = String::new();
            for endpoint in &cluster.endpoints {
                match client.status_of(endpoint).await {
                    Ok(status) => {
                        if status.voters.len() != wanted || status.leader.is_none() {
                            ready = false;
                        }
                        leaders.push(status.leader);
                        last = format!("{status:?}");
                    }
                    Err(e) => {
                        ready = false;
                        last = format!("{endpoint}: {e}");
                    }
                }
            }
            if ready && leaders.windows(2).all(|w| w[0] == w[1]) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("orch cluster not ready within 60 s: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    Ok(cluster)
}

// --- etcd cluster ----------------------------------------------------------------

fn start_etcd(cli: &Cli, runtime: &Runtime) -> Result<Cluster> {
    let mut cluster = Cluster::new(System::Etcd, cli)?;
    let free = free_ports(2 * cli.members as usize)?;
    let ports: Vec<(u16, u16)> = free.chunks(2).map(|pair| (pair[0], pair[1])).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("etcd-{}=http://127.0.0.1:{peer}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!("store-bench-{}", std::process::id());
    let mut outputs = Vec::new();
    for (i, (client_port, peer_port)) in ports.iter().enumerate() {
        let name = format!("etcd-{}", i + 1);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(&cli.etcd_bin);
        command
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(cluster.path().join(&name))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&token)
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .arg("--log-level")
            .arg("warn");
        let (_, stdout) = cluster.spawn(&name, command)?;
        outputs.push(stdout);
        cluster.endpoints.push(client_url);
    }
    // etcd writes nothing we need on stdout; drain it so it never blocks.
    for mut stdout in outputs {
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let members = cli.members as usize;
    let endpoints = cluster.endpoints.clone();
    loop {
        let Err(e) = runtime.block_on(etcd_healthy(&endpoints, members)) else {
            break;
        };
        let exited = (0..cluster.procs.len())
            .find(|&i| !matches!(cluster.procs[i].child.try_wait(), Ok(None)));
        if let Some(i) = exited {
            return Err(cluster.failure(i, "stopped while the cluster formed"));
        }
        if Instant::now() >= deadline {
            return Err(e.context("etcd cluster not healthy within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(cluster)
}

/// Each member answers status with a leader, knows every member, and serves
/// a linearizable read.
async fn etcd_healthy(endpoints: &[String], members: usize) -> Result<()> {
    for endpoint in endpoints {
        let mut client = etcd_connect(std::slice::from_ref(endpoint)).await?;
        let status = client.status().await?;
        if status.leader() == 0 {
            bail!("{endpoint}: no leader yet");
        }
        let list = client.member_list().await?;
        if list.members().len() != members {
            bail!("{endpoint}: {} members listed", list.members().len());
        }
        client.get("health", None).await?;
    }
    Ok(())
}

async fn etcd_connect(endpoints: &[String]) -> Result<etcd_client::Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(15));
    etcd_client::Client::connect(endpoints, Some(options))
        .await
        .context("connecting to etcd")
}

// --- the two clients -------------------------------------------------------------

/// One client of either system; cloned once per task.
#[derive(Clone)]
enum Store {
    Orch(Box<OrchClient>),
    Etcd(Box<etcd_client::Client>),
}

impl Store {
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<()> {
        match self {
            Store::Orch(client) => {
                client.put(key, value).await?;
            }
            Store::Etcd(client) => {
                client.put(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// A linearizable get; true if the key was found.
    async fn get(&mut self, key: String) -> Result<bool> {
        match self {
            Store::Orch(client) => Ok(client.get(key).await?.is_some()),
            Store::Etcd(client) => Ok(!client.get(key, None).await?.kvs().is_empty()),
        }
    }
}

// --- measurement -----------------------------------------------------------------

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The figures of one phase on one system.
struct Figures {
    /// Operations that succeeded (for watch: events delivered).
    ops: u64,
    /// Wall time of the phase.
    elapsed: Duration,
    /// Latency of each successful operation, in microseconds.
    latency: Histogram<u64>,
    /// Failed operations.
    errors: u64,
    /// The first failure, if any.
    first_error: Option<String>,
    /// Gets that found no key.
    misses: u64,
    /// Watch: events never delivered.
    missing: u64,
    /// Watch: puts completed per second by the writers.
    write_rate: Option<f64>,
}

impl Figures {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return f64::NAN;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ops": self.ops,
            "seconds": self.elapsed.as_secs_f64(),
            "ops_per_sec": self.throughput(),
            "p50_ms": self.quantile_ms(0.50),
            "p90_ms": self.quantile_ms(0.90),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
            "max_ms": if self.latency.is_empty() { f64::NAN } else { self.latency.max() as f64 / 1000.0 },
            "mean_ms": self.latency.mean() / 1000.0,
            "errors": self.errors,
            "first_error": self.first_error,
            "get_misses": self.misses,
            "watch_events_missing": self.missing,
            "watch_writer_puts_per_sec": self.write_rate,
        })
    }
}

/// What one task measured.
struct TaskOutcome {
    latency: Histogram<u64>,
    ok: u64,
    errors: u64,
    misses: u64,
    first_error: Option<String>,
}

impl TaskOutcome {
    fn new() -> Self {
        TaskOutcome {
            latency: histogram(),
            ok: 0,
            errors: 0,
            misses: 0,
            first_error: None,
        }
    }

    fn failed(&mut self, e: anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }
}

/// What a phase's writers put: a plain value, or one stamped with its send time.
#[derive(Clone, Copy)]
enum Payload {
    Plain,
    Stamped(Instant),
}

/// Runs puts or gets of the planned keys, one task per plan entry, each task
/// awaiting every operation before the next. Returns the merged figures.
async fn run_tasks(
    store: &Store,
    plan: Vec<Vec<u32>>,
    op: Op,
    value_bytes: usize,
    payload: Payload,
) -> Result<Figures> {
    let value = Arc::new(filler(value_bytes));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for keys in plan {
        let mut store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcome = TaskOutcome::new();
            for index in keys {
                let key = key_of(index);
                let begin = Instant::now();
                let result = match op {
                    Op::Get => match store.get(key).await {
                        Ok(found) => {
                            if !found {
                                outcome.misses += 1;
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    Op::Put | Op::Watch => {
                        let mut value = value.as_ref().clone();
                        if let Payload::Stamped(base) = payload {
                            let sent = base.elapsed().as_nanos();
                            value[..STAMP_BYTES].copy_from_slice(&sent.to_le_bytes());
                        }
                        store.put(key, value).await
                    }
                };
                match result {
                    Ok(()) => {
                        outcome.ok += 1;
                        outcome.latency.saturating_record(micros(begin.elapsed()));
                    }
                    Err(e) => outcome.failed(e),
                }
            }
            outcome
        }));
    }
    let mut total = TaskOutcome::new();
    for task in tasks {
        let outcome = task.await.context("a client task panicked")?;
        total
            .latency
            .add(&outcome.latency)
            .expect("same histogram bounds");
        total.ok += outcome.ok;
        total.errors += outcome.errors;
        total.misses += outcome.misses;
        if total.first_error.is_none() {
            total.first_error = outcome.first_error;
        }
    }
    Ok(Figures {
        ops: total.ok,
        elapsed: start.elapsed(),
        latency: total.latency,
        errors: total.errors,
        first_error: total.first_error,
        misses: total.misses,
        missing: 0,
        write_rate: None,
    })
}

/// A watch on `bench/` of either system, as a stream of (key, value) batches.
type EventBatches = futures::stream::BoxStream<'static, Result<Vec<(Vec<u8>, Vec<u8>)>>>;

async fn open_watch(store: &Store) -> Result<EventBatches> {
    match store {
        Store::Orch(client) => {
            let stream = client
                .watch(WatchRequest::new(KeyRange::prefix(KEY_PREFIX)))
                .await
                .context("starting the orch watch")?;
            Ok(stream
                .map(|item| {
                    item.map(|resp| {
                        resp.events
                            .into_iter()
                            .map(|e| (e.kv.key, e.kv.value))
                            .collect()
                    })
                    .map_err(anyhow::Error::from)
                })
                .boxed())
        }
        Store::Etcd(client) => {
            let mut client = client.as_ref().clone();
            let options = etcd_client::WatchOptions::new().with_prefix();
            let mut stream = client
                .watch(KEY_PREFIX, Some(options))
                .await
                .context("starting the etcd watch")?;
            // The first answer confirms the watch was created.
            let created = stream
                .message()
                .await?
                .ok_or_else(|| anyhow!("etcd watch stream ended before it was created"))?;
            if !created.created() || created.canceled() {
                bail!("etcd watch not created: {}", created.cancel_reason());
            }
            Ok(stream
                .map(|item| {
                    let resp = item?;
                    if resp.canceled() {
                        bail!("etcd watch canceled: {}", resp.cancel_reason());
                    }
                    Ok(resp
                        .events()
                        .iter()
                        .filter_map(|e| e.kv())
                        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                        .collect())
                })
                .boxed())
        }
    }
}

/// One watcher on `bench/` while the planned writers put stamped values.
async fn run_watch_phase(
    store: &Store,
    plan: Vec<Vec<u32>>,
    value_bytes: usize,
    base: Instant,
) -> Result<Figures> {
    let expected: u64 = plan.iter().map(|keys| keys.len() as u64).sum();
    let mut events = open_watch(store).await?;
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    // How many events to wait for: every planned put, until the writers are
    // done and tell how many succeeded.
    let (target_tx, mut target_rx) = watch::channel(expected);
    let watcher = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut latency = histogram();
        let mut received = 0u64;
        let mut last_receive = None;
        let mut error = None;
        loop {
            if received >= *target_rx.borrow_and_update() {
                break;
            }
            let next = tokio::select! {
                next = tokio::time::timeout(WATCH_IDLE_LIMIT, events.next()) => next,
                changed = target_rx.changed() => {
                    if changed.is_err() {
                        error = Some("the writers went away".to_string());
                        break;
                    }
                    continue;
                }
            };
            let next = match next {
                Ok(Some(Ok(batch))) => batch,
                Ok(Some(Err(e))) => {
                    error = Some(format!("{e:#}"));
                    break;
                }
                Ok(None) => {
                    error = Some("watch stream ended".to_string());
                    break;
                }
                Err(_) => {
                    error = Some(format!("no event for {} s", WATCH_IDLE_LIMIT.as_secs()));
                    break;
                }
            };
            let now = base.elapsed().as_nanos();
            let at = Instant::now();
            for (key, value) in next {
                if key == SYNC_KEY.as_bytes() {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    continue;
                }
                if ready.is_some() || value.len() < STAMP_BYTES {
                    continue;
                }
                let sent = u128::from_le_bytes(value[..STAMP_BYTES].try_into().expect("16 bytes"));
                let nanos = now.saturating_sub(sent);
                latency.saturating_record((u64::try_from(nanos / 1000).unwrap_or(u64::MAX)).max(1));
                received += 1;
                last_receive = Some(at);
            }
        }
        (latency, received, last_receive, error)
    });

    // Wait until the watcher is live: it must see this put.
    let mut sync = store.clone();
    sync.put(SYNC_KEY.to_string(), filler(value_bytes)).await?;
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| anyhow!("the watcher did not see the sync put within 30 s"))?
        .map_err(|_| anyhow!("the watcher stopped before the sync put arrived"))?;

    let phase_start = Instant::now();
    let writers = run_tasks(store, plan, Op::Watch, value_bytes, Payload::Stamped(base)).await;
    let _ = target_tx.send(writers.as_ref().map_or(0, |w| w.ops));
    let writers = writers?;
    let (latency, received, last_receive, watch_error) =
        watcher.await.context("the watcher panicked")?;
    let elapsed = last_receive.map_or(writers.elapsed, |at| {
        at.saturating_duration_since(phase_start)
    });
    let first_error = match (writers.first_error.clone(), watch_error) {
        (Some(w), Some(e)) => Some(format!("writer: {w}; watcher: {e}")),
        (Some(w), None) => Some(format!("writer: {w}")),
        (None, Some(e)) => Some(format!("watcher: {e}")),
        (None, None) => None,
    };
    Ok(Figures {
        ops: received,
        elapsed,
        latency,
        errors: writers.errors,
        first_error,
        misses: 0,
        missing: writers.ops.saturating_sub(received),
        write_rate: Some(writers.throughput()),
    })
}

/// Every phase of the workload on one system.
fn run_workload(
    cli: &Cli,
    runtime: &Runtime,
    store: &Store,
    system: System,
    base: Instant,
    results: &mut BTreeMap<(Op, usize), [Option<Figures>; 2]>,
) -> Result<()> {
    let slot = match system {
        System::Orch => 0,
        System::Etcd => 1,
    };
    runtime.block_on(async {
        let mut warm = store.clone();
        for index in 0..WARMUP_PUTS {
            warm.put(format!("warmup/{index:08}"), filler(cli.value_bytes))
                .await
                .context("warm-up put")?;
        }
        for (round, &clients) in cli.clients.iter().enumerate() {
            let seed = cli.seed.wrapping_add(round as u64 * 7919);
            let plan = key_plan(seed, cli.keys, cli.ops, clients);
            let mut phases = vec![Op::Put];
            if !cli.skip_gets {
                phases.push(Op::Get);
            }
            if !cli.skip_watch {
                phases.push(Op::Watch);
            }
            for op in phases {
                eprintln!(
                    "store-bench: {} {} with {clients} client(s) ...",
                    system.name(),
                    op.name()
                );
                let figures = match op {
                    Op::Put | Op::Get => {
                        run_tasks(store, plan.clone(), op, cli.value_bytes, Payload::Plain).await?
                    }
                    Op::Watch => {
                        let plan = key_plan(seed ^ 0x5a5a_5a5a, cli.keys, watch_ops(cli), clients);
                        run_watch_phase(store, plan, cli.value_bytes, base).await?
                    }
                };
                eprintln!(
                    "store-bench:   {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms, {} error(s)",
                    figures.throughput(),
                    figures.quantile_ms(0.5),
                    figures.quantile_ms(0.99),
                    figures.errors
                );
                results.entry((op, clients)).or_insert_with(|| [None, None])[slot] = Some(figures);
            }
        }
        Ok(())
    })
}

// --- the run -----------------------------------------------------------------

/// The file system type of the mount that holds `path`, from /proc/mounts.
fn fs_type(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount = fields.next()?;
            let kind = fields.next()?;
            path.starts_with(mount)
                .then(|| (mount.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, kind)| kind)
}

/// The version `etcd --version` prints, if it runs.
fn etcd_binary_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix("etcd Version:")
            .map(|v| v.trim().to_string())
    })
}

fn bench(cli: &Cli, runtime: &Runtime) -> Result<()> {
    let base = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let work_dir = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let orch_version = env!("CARGO_PKG_VERSION");
    let etcd_version = if cli.compare_etcd {
        etcd_binary_version(&cli.etcd_bin).unwrap_or_else(|| "unknown".into())
    } else {
        "-".to_string()
    };

    let clients = cli
        .clients
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut setting: Vec<(&str, String)> = vec![
        ("members per cluster", format!("{} (separate OS processes, loopback)", cli.members)),
        (
            "clients",
            format!("{clients} (one phase per count; each client awaits each op before its next)"),
        ),
        ("ops per put/get phase", cli.ops.to_string()),
        (
            "ops per watch phase",
            if cli.skip_watch {
                "- (watch skipped)".to_string()
            } else {
                format!("{} puts, one watcher on prefix {KEY_PREFIX}", watch_ops(cli))
            },
        ),
        ("value bytes", cli.value_bytes.to_string()),
        (
            "keyspace",
            format!("{} keys {KEY_PREFIX}{{:08}}, uniform, seed {}", cli.keys, cli.seed),
        ),
        (
            "orch fsync",
            if cli.no_fsync {
                "OFF (--no-fsync: Raft log appends are not synced; acknowledged writes can be lost on power failure)"
                    .to_string()
            } else {
                "on (every Raft log append is synced)".to_string()
            },
        ),
        (
            "etcd fsync",
            if cli.compare_etcd {
                "on (etcd default; --unsafe-no-fsync not passed)".to_string()
            } else {
                "- (etcd not run; pass --compare-etcd)".to_string()
            },
        ),
        ("machine cores", cores.to_string()),
        ("data dirs under", format!("{} ({})", work_dir.display(), fs_type(&work_dir))),
        (
            "orch version",
            format!("orch-raft-store {orch_version}; client orch_raft_store::Client"),
        ),
        (
            "etcd version",
            if cli.compare_etcd {
                format!("{etcd_version} ({}); client etcd-client crate", cli.etcd_bin.display())
            } else {
                "-".to_string()
            },
        ),
        ("gets", "linearizable on both systems".to_string()),
        (
            "watch latency",
            format!("watch receive time - put send time (carried in the value's first {STAMP_BYTES} bytes)"),
        ),
    ];
    let show = |label: &str, value: &str| println!("{label:<22}: {value}");
    println!("== store-bench setting ==");
    for (label, value) in &setting {
        show(label, value);
    }

    let mut results: BTreeMap<(Op, usize), [Option<Figures>; 2]> = BTreeMap::new();
    let mut notes = Vec::new();
    let mut log_reports = Vec::new();

    // orch
    eprintln!("store-bench: starting {} orch member(s) ...", cli.members);
    let mut cluster = start_orch(cli, runtime)?;
    let client = OrchClient::new(cluster.endpoints.clone());
    let status = runtime.block_on(client.status()).context("orch status")?;
    let line = format!(
        "members {}, leader {}; the client sends every request to its first reachable endpoint (member 1), \
         which forwards writes and read-index requests to the leader",
        cluster.endpoints.join(" "),
        status.leader.map_or("none".to_string(), |id| format!("member {id}"))
    );
    show("orch cluster", &line);
    setting.push(("orch cluster", line));
    cluster.mark_logs();
    run_workload(
        cli,
        runtime,
        &Store::Orch(Box::new(client)),
        System::Orch,
        base,
        &mut results,
    )?;
    log_reports.extend(cluster.log_report());
    drop(cluster);

    // etcd
    if cli.compare_etcd {
        eprintln!("store-bench: starting {} etcd member(s) ...", cli.members);
        let mut cluster = start_etcd(cli, runtime)?;
        let client = runtime.block_on(etcd_connect(&cluster.endpoints))?;
        let status = runtime
            .block_on(client.clone().status())
            .context("etcd status")?;
        let line = format!(
            "client URLs {}, server version {}; etcd-client balances requests over all endpoints",
            cluster.endpoints.join(" "),
            status.version()
        );
        show("etcd cluster", &line);
        setting.push(("etcd cluster", line));
        cluster.mark_logs();
        run_workload(
            cli,
            runtime,
            &Store::Etcd(Box::new(client)),
            System::Etcd,
            base,
            &mut results,
        )?;
        log_reports.extend(cluster.log_report());
        drop(cluster);
    }

    // Report.
    println!();
    let table = render_table(&results, cli.compare_etcd, &mut notes);
    println!("{table}");
    if !notes.is_empty() {
        println!("Notes:");
        for note in &notes {
            println!("  {note}");
        }
    }
    if !log_reports.is_empty() {
        println!("Server logs during the workload (stderr, warn level and above; --keep-dirs keeps the files):");
        for line in &log_reports {
            println!("{line}");
        }
    }

    if let Some(path) = &cli.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|((op, clients), figures)| {
                let [orch, etcd] = figures;
                serde_json::json!({
                    "op": op.name(),
                    "clients": clients,
                    "orch": orch.as_ref().map(Figures::json),
                    "etcd": etcd.as_ref().map(Figures::json),
                    "throughput_ratio_orch_over_etcd": ratio(orch, etcd, |f| f.throughput()),
                    "p99_ratio_orch_over_etcd": ratio(orch, etcd, |f| f.quantile_ms(0.99)),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "setting": {
                "members": cli.members,
                "clients": cli.clients,
                "ops": cli.ops,
                "watch_ops": watch_ops(cli),
                "value_bytes": cli.value_bytes,
                "keys": cli.keys,
                "seed": cli.seed,
                "orch_fsync": !cli.no_fsync,
                "etcd_fsync": cli.compare_etcd.then_some(true),
                "cores": cores,
                "data_dir_base": work_dir.display().to_string(),
                "data_dir_fs": fs_type(&work_dir),
                "orch_version": orch_version,
                "etcd_version": cli.compare_etcd.then_some(etcd_version.clone()),
                "lines": setting.iter().map(|(label, value)| (label.to_string(), serde_json::Value::from(value.as_str()))).collect::<serde_json::Map<_, _>>(),
            },
            "results": rows,
            "notes": notes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(())
}

fn ratio(
    orch: &Option<Figures>,
    etcd: &Option<Figures>,
    value: impl Fn(&Figures) -> f64,
) -> Option<f64> {
    let (orch, etcd) = (orch.as_ref()?, etcd.as_ref()?);
    let (a, b) = (value(orch), value(etcd));
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

fn render_table(
    results: &BTreeMap<(Op, usize), [Option<Figures>; 2]>,
    etcd: bool,
    notes: &mut Vec<String>,
) -> String {
    let mut out = String::new();
    let header = format!(
        "| {:<5} | {:>7} | {:>11} | {:>9} | {:>9} | {:>11} | {:>9} | {:>9} | {:>15} | {:>13} |",
        "op",
        "clients",
        "orch ops/s",
        "orch p50",
        "orch p99",
        "etcd ops/s",
        "etcd p50",
        "etcd p99",
        "ops/s orch/etcd",
        "p99 orch/etcd"
    );
    let rule: String = header
        .chars()
        .map(|c| if c == '|' { '|' } else { '-' })
        .collect();
    out.push_str(&header);
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    let dash = || "-".to_string();
    for ((op, clients), [orch, etcd_figures]) in results {
        let cols = |f: &Option<Figures>| match f {
            Some(f) => (
                format!("{:.0}", f.throughput()),
                format!("{:.2} ms", f.quantile_ms(0.5)),
                format!("{:.2} ms", f.quantile_ms(0.99)),
            ),
            None => (dash(), dash(), dash()),
        };
        let (o_t, o_50, o_99) = cols(orch);
        let (e_t, e_50, e_99) = cols(etcd_figures);
        let r_t =
            ratio(orch, etcd_figures, |f| f.throughput()).map_or_else(dash, |r| format!("{r:.2}x"));
        let r_99 = ratio(orch, etcd_figures, |f| f.quantile_ms(0.99))
            .map_or_else(dash, |r| format!("{r:.2}x"));
        out.push_str(&format!(
            "| {:<5} | {:>7} | {:>11} | {:>9} | {:>9} | {:>11} | {:>9} | {:>9} | {:>15} | {:>13} |\n",
            op.name(),
            clients,
            o_t,
            o_50,
            o_99,
            e_t,
            e_50,
            e_99,
            r_t,
            r_99
        ));
        for (system, figures) in [(System::Orch, orch), (System::Etcd, etcd_figures)] {
            let Some(f) = figures else { continue };
            let what = format!("{} {} with {} client(s)", system.name(), op.name(), clients);
            if f.errors > 0 {
                notes.push(format!(
                    "{what}: {} failed operation(s); first: {}",
                    f.errors,
                    f.first_error.as_deref().unwrap_or("?")
                ));
            } else if let Some(e) = &f.first_error {
                notes.push(format!("{what}: {e}"));
            }
            if f.misses > 0 {
                notes.push(format!("{what}: {} get(s) found no key", f.misses));
            }
            if f.missing > 0 {
                notes.push(format!("{what}: {} event(s) never delivered", f.missing));
            }
            if let Some(rate) = f.write_rate {
                notes.push(format!("{what}: writers put {rate:.0} ops/s while watched"));
            }
        }
    }
    if !etcd {
        notes.push("etcd not run: pass --compare-etcd for the etcd columns".into());
    }
    notes.push(
        "ops/s is completed operations per second over the phase (watch: events delivered per second); \
         p50/p99 are per-operation latencies (watch: put send to watch receive)"
            .into(),
    );
    out
}
