//! `failover-bench`: how long writes stop when the leader master dies, and
//! whether any acknowledged write is lost.
//!
//! Starts `--masters` real `orchd server --no-agent` processes on loopback
//! (the first bootstraps the cluster, the others join it with its token;
//! orchd always fsyncs its Raft log), then a steady write load: `--writers`
//! tasks, each creating ConfigMaps `fb-<writer>-<seq>` in namespace
//! `default` one after another through the masters' HTTPS API (each
//! writer's client starts at a different master and fails over between
//! them). A create that fails is retried until it is acknowledged; a 409
//! AlreadyExists on a retry means an earlier attempt was applied, and counts
//! as acknowledged.
//!
//! Each of `--rounds` rounds finds the leader with `orchd status`, lets the
//! load run `--steady-ms`, SIGKILLs the leader, waits until a write sent
//! after the kill is acknowledged, lets the load run on the survivors, restarts
//! the killed master and waits until `orchd status` shows every master a
//! voter again, with a leader. The round's write unavailability is the
//! longest interval in the round in which no writer got a write
//! acknowledged (it covers the election and the clients' failover, and any
//! stall when the killed master comes back).
//!
//! At the end the load stops, every ConfigMap is listed, and acknowledged
//! writes missing from the list are counted as lost: there must be none
//! (the exit code is 1 otherwise). Prints the settings, the rounds, p50/p99/
//! max of the unavailability, and the anchors: etcd's default election
//! timeout (1 s) and the Kubernetes controller-manager's leader lease
//! (15 s); orch aims at p99 <= 1 s.
//!
//! ```sh
//! cargo run --release -p orch-benches --bin failover-bench -- --masters 3 --rounds 20
//! ```
//!
//! Uses the `orchd` binary next to this one (built with `cargo build -p
//! orchd`, `--release` for a release build, if it is missing).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::ConfigMap;
use orch_benches::quantile_ms;
use orch_tests::orchd::Master;
use serde_json::json;

/// The namespace the writers create their ConfigMaps in.
const NAMESPACE: &str = "default";
/// The label every ConfigMap of the load carries.
const LABEL: &str = "bench=failover";
/// The pause before a failed create is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long the cluster has to become whole again, or to acknowledge a
/// write after a kill.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    name = "failover-bench",
    about = "Kill the leader master under a steady write load: write unavailability and lost acknowledged writes"
)]
struct Args {
    /// Masters (`orchd server --no-agent` processes); at least 3, so that a
    /// majority survives the loss of the leader.
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Leader kills.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Concurrent writers, each creating ConfigMaps one after another.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Steady load before each kill, and on the survivors before the killed
    /// master is restarted, in ms.
    #[arg(long, default_value_t = 1000)]
    steady_ms: u64,
    /// Time limit of one create attempt, in ms; then it is tried again.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Another flag for every `orchd server` (repeatable), e.g.
    /// `--server-arg=--election-timeout-ms=500`.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Keep the masters' data dirs and logs (the path is printed).
    #[arg(long)]
    keep: bool,
    /// The orchd binary (default: the one next to this benchmark, built if
    /// missing).
    #[arg(long)]
    orchd: Option<PathBuf>,
}

/// What `orchd status` says of the store's members.
#[derive(Debug, Default)]
struct Status {
    /// Member ids that are voters (the leader included).
    voters: Vec<u64>,
    /// Member ids that are learners.
    learners: Vec<u64>,
    /// The leader, if the member asked knows one.
    leader: Option<u64>,
    /// The Raft term.
    term: u64,
}

/// Parses `orchd status` output: `members:` lines (`id addr role`), then
/// `leader:   <id> (term N)` or `leader:   none (term N)`.
fn parse_status(text: &str) -> Option<Status> {
    let mut status = Status::default();
    let mut in_members = false;
    let mut saw_leader_line = false;
    for line in text.lines() {
        if line.starts_with("members:") {
            in_members = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("leader:") {
            in_members = false;
            saw_leader_line = true;
            let mut words = rest.split_whitespace();
            status.leader = words.next().and_then(|id| id.parse().ok());
            status.term = words
                .next()
                .filter(|w| *w == "(term")
                .and_then(|_| words.next())
                .and_then(|n| n.trim_end_matches(')').parse().ok())
                .unwrap_or(0);
            continue;
        }
        if in_members {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [id, _addr, role] = words.as_slice() {
                let id: u64 = id.parse().ok()?;
                match *role {
                    "leader" | "voter" => status.voters.push(id),
                    "learner" => status.learners.push(id),
                    _ => return None,
                }
            }
        }
    }
    saw_leader_line.then_some(status)
}

/// `orchd status --data-dir dir`, parsed; `None` if it fails or times out.
async fn status_of(orchd: &Path, dir: &Path) -> Option<Status> {
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(orchd)
            .args(["status", "--data-dir"])
            .arg(dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !output.status.success() {
        return None;
    }
    parse_status(&String::from_utf8_lossy(&output.stdout))
}

/// The cluster as the benchmark drives it.
struct Cluster {
    orchd: PathBuf,
    masters: Vec<Master>,
    /// Each master's member id, in the order of `masters`.
    ids: Vec<u64>,
}

impl Cluster {
    /// Waits until `orchd status`, asked through master `index`, shows
    /// every master a voter, no learner, and a leader that is one of them.
    async fn wait_whole(&self, index: usize) -> Result<Status> {
        let deadline = Instant::now() + PATIENCE;
        let dir = self.masters[index].process.dir.clone();
        loop {
            if let Some(status) = status_of(&self.orchd, &dir).await {
                let all_voters = status.voters.len() == self.ids.len()
                    && self.ids.iter().all(|id| status.voters.contains(id));
                let leader_known = status.leader.is_some_and(|l| self.ids.contains(&l));
                if all_voters && status.learners.is_empty() && leader_known {
                    return Ok(status);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster did not become whole within {PATIENCE:?}; `orchd status` of {}:\n{}",
                    dir.display(),
                    orchd_status_text(&self.orchd, &dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines each master logged (for a failure report).
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (master, id) in self.masters.iter().zip(&self.ids) {
            let log = master.process.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!(
                "--- master {id} ({}), last lines of its log:\n{}\n",
                master.api,
                tail.join("\n")
            ));
        }
        out
    }
}

/// The raw `orchd status` output (or its error), for messages.
fn orchd_status_text(orchd: &Path, dir: &Path) -> String {
    match Command::new(orchd)
        .args(["status", "--data-dir"])
        .arg(dir)
        .output()
    {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("orchd status did not run: {e}"),
    }
}

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
struct Ack {
    /// When the attempt that was acknowledged was sent.
    sent: Instant,
    /// When it was acknowledged.
    at: Instant,
}

/// The write load's shared state.
struct Load {
    /// Set to stop the writers (an unacknowledged object is abandoned).
    stop: AtomicBool,
    /// Every acknowledged write.
    acks: Mutex<Vec<Ack>>,
    /// Per writer: its writes `0..n` are acknowledged.
    acked: Vec<AtomicU64>,
    /// Failed attempts (retried), by reason.
    retried: Mutex<BTreeMap<String, u64>>,
    /// The error that stopped a writer, if one did.
    failure: Mutex<Option<String>>,
}

impl Load {
    fn new(writers: usize) -> Self {
        Load {
            stop: AtomicBool::new(false),
            acks: Mutex::new(Vec::new()),
            acked: (0..writers).map(|_| AtomicU64::new(0)).collect(),
            retried: Mutex::new(BTreeMap::new()),
            failure: Mutex::new(None),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn retry(&self, reason: &str) {
        *self
            .retried
            .lock()
            .expect("retry counts")
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// A copy of the acknowledged writes.
    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("acks").clone()
    }

    /// Whether a write sent after `t` was acknowledged (one in flight at
    /// `t` may have been committed before).
    fn acked_after(&self, t: Instant) -> bool {
        self.acks
            .lock()
            .expect("acks")
            .iter()
            .rev()
            .take(64)
            .any(|a| a.sent > t)
    }

    /// Fails if a writer stopped on an error.
    fn check(&self) -> Result<()> {
        match &*self.failure.lock().expect("failure") {
            Some(e) => Err(anyhow!("a writer failed: {e}")),
            None => Ok(()),
        }
    }

    /// Waits until a write sent after `t` is acknowledged.
    async fn wait_ack_after(&self, t: Instant, what: &str) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while !self.acked_after(t) {
            self.check()?;
            if Instant::now() > deadline {
                bail!("no write was acknowledged within {PATIENCE:?} {what}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// Stops the writers when dropped (also on an error).
struct StopOnDrop(Arc<Load>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// The name of writer `w`'s `seq`th ConfigMap.
fn object_name(w: usize, seq: u64) -> String {
    format!("fb-{w}-{seq}")
}

fn config_map(w: usize, seq: u64) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": object_name(w, seq), "labels": {"bench": "failover"}},
        "data": {"writer": w.to_string(), "seq": seq.to_string()},
    }))?)
}

/// Writer `w`: creates its ConfigMaps one after another until stopped,
/// each retried until acknowledged.
async fn writer(load: Arc<Load>, w: usize, client: orch_core::Client, timeout: Duration) {
    if let Err(e) = write_until_stopped(&load, w, &client, timeout).await {
        *load.failure.lock().expect("failure") = Some(format!("writer {w}: {e:#}"));
    }
}

async fn write_until_stopped(
    load: &Load,
    w: usize,
    client: &orch_core::Client,
    timeout: Duration,
) -> Result<()> {
    let mut seq = 0u64;
    while !load.stopped() {
        let object = config_map(w, seq)?;
        let mut attempt = 0u32;
        loop {
            let sent = Instant::now();
            let answer = tokio::time::timeout(timeout, client.create(Some(NAMESPACE), &object));
            let acked = match answer.await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) if e.code == 409 && e.reason == "AlreadyExists" && attempt > 0 => true,
                Ok(Err(e)) if e.code >= 500 || e.code == 429 => {
                    load.retry(e.reason);
                    false
                }
                Ok(Err(e)) => bail!("creating {}: {e}", object_name(w, seq)),
                Err(_) => {
                    load.retry("Timeout");
                    false
                }
            };
            if acked {
                let at = Instant::now();
                load.acks.lock().expect("acks").push(Ack { sent, at });
                load.acked[w].store(seq + 1, Ordering::Relaxed);
                break;
            }
            if load.stopped() {
                return Ok(());
            }
            attempt += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        seq += 1;
    }
    Ok(())
}

/// The longest interval in `[from, to]` without an acknowledgement, and
/// when it began.
fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> (Duration, Instant) {
    let mut times: Vec<Instant> = acks
        .iter()
        .map(|a| a.at)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    times.push(to);
    let mut previous = from;
    let mut longest = (Duration::ZERO, from);
    for t in times {
        if t - previous > longest.0 {
            longest = (t - previous, previous);
        }
        previous = t;
    }
    longest
}

/// `t` relative to `origin`, in signed milliseconds.
fn offset_ms(t: Instant, origin: Instant) -> f64 {
    if t >= origin {
        (t - origin).as_secs_f64() * 1e3
    } else {
        -((origin - t).as_secs_f64() * 1e3)
    }
}

/// One round's figures.
struct Round {
    killed: u64,
    killed_term: u64,
    new_leader: u64,
    new_term: u64,
    /// The longest interval without an acknowledged write.
    unavailable: Duration,
    /// When it began, relative to the kill (ms).
    gap_start_ms: f64,
    /// From the kill to the first acknowledgement of a write sent after
    /// it.
    first_write: Duration,
    /// From the restart of the killed master until every master is a
    /// voter again.
    rejoin: Duration,
    /// Writes acknowledged during the round.
    writes: usize,
}

async fn round(
    cluster: &mut Cluster,
    load: &Load,
    steady: Duration,
    prefer: usize,
) -> Result<Round> {
    let before = cluster.wait_whole(prefer).await?;
    let killed = before.leader.context("a whole cluster has a leader")?;
    let index = cluster
        .ids
        .iter()
        .position(|id| *id == killed)
        .context("the leader is none of the masters")?;
    let round_start = Instant::now();
    tokio::time::sleep(steady).await;
    load.check()?;

    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.masters[index].process.kill9());
    load.wait_ack_after(killed_at, "after the leader was killed")
        .await?;
    tokio::time::sleep(steady).await;

    let restarted_at = Instant::now();
    tokio::task::block_in_place(|| {
        let master = &mut cluster.masters[index];
        master.process.restart();
        master.wait_ready();
    });
    let after = cluster.wait_whole(index).await?;
    let rejoin = restarted_at.elapsed();
    let whole_at = Instant::now();
    load.wait_ack_after(whole_at, "after the killed master rejoined")
        .await?;
    let round_end = Instant::now();

    let acks = load.acks();
    let (unavailable, gap_start) = longest_gap(&acks, round_start, round_end);
    let first_write = acks
        .iter()
        .filter(|a| a.sent > killed_at)
        .map(|a| a.at - killed_at)
        .min()
        .unwrap_or_default();
    let writes = acks
        .iter()
        .filter(|a| a.at >= round_start && a.at <= round_end)
        .count();
    Ok(Round {
        killed,
        killed_term: before.term,
        new_leader: after.leader.unwrap_or(0),
        new_term: after.term,
        unavailable,
        gap_start_ms: offset_ms(gap_start, killed_at),
        first_write,
        rejoin,
        writes,
    })
}

/// Lists the load's ConfigMaps (one list; retried a few times).
async fn listed_names(client: &orch_core::Client) -> Result<HashSet<String>> {
    let mut last = String::new();
    for _ in 0..10 {
        match tokio::time::timeout(
            Duration::from_secs(120),
            client.list::<ConfigMap>(Some(NAMESPACE), Some(LABEL)),
        )
        .await
        {
            Ok(Ok((items, _))) => {
                return Ok(items
                    .into_iter()
                    .filter_map(|cm| cm.metadata.name)
                    .collect())
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("listing the ConfigMaps failed: {last}")
}

/// The acknowledged writes missing from `names`.
fn missing(load: &Load, names: &HashSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    for (w, acked) in load.acked.iter().enumerate() {
        for seq in 0..acked.load(Ordering::Relaxed) {
            let name = object_name(w, seq);
            if !names.contains(&name) {
                missing.push(name);
            }
        }
    }
    missing
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("histogram")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.masters < 3 {
        bail!("--masters must be at least 3: a majority has to survive the leader's loss");
    }
    if args.writers == 0 || args.rounds == 0 {
        bail!("--writers and --rounds must be at least 1");
    }
    let orchd = orch_benches::orchd_binary(args.orchd.clone())?;
    let profile = if cfg!(debug_assertions) {
        "debug build (figures not representative)"
    } else {
        "release build"
    };
    println!(
        "failover-bench setting: masters {}, rounds {}, writers {}, steady load {} ms before each kill and before each restart, \
         create time limit {} ms (then retried), fsync on (orchd always syncs its Raft log), {profile}, cores {}",
        args.masters,
        args.rounds,
        args.writers,
        args.steady_ms,
        args.request_timeout_ms,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "orchd: {} (orchd server --no-agent{} processes on loopback, SIGKILL of the leader; writers: ConfigMap creates over HTTPS)",
        orchd.display(),
        args.server_arg
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    println!(
        "anchor: etcd's default election timeout 1 s; Kubernetes controller-manager leader lease 15 s; orch aims at p99 <= 1 s"
    );

    let root = tempfile::tempdir()?;
    let started = Instant::now();
    let mut cluster = tokio::task::block_in_place(|| -> Result<Cluster> {
        let extra = &args.server_arg;
        let first = Master::start_with(&orchd, &root.path().join("m1"), None, extra);
        let token = first.token();
        let mut masters = vec![first];
        for i in 2..=args.masters {
            let join = masters[0].join_address().to_string();
            masters.push(Master::start_with(
                &orchd,
                &root.path().join(format!("m{i}")),
                Some((&join, &token)),
                extra,
            ));
        }
        let ids = masters.iter().map(Master::member_id).collect();
        Ok(Cluster {
            orchd: orchd.clone(),
            masters,
            ids,
        })
    })?;
    let result = run(&args, &mut cluster, started).await;
    if result.is_err() {
        eprintln!("{}", cluster.log_tails());
    }
    drop(cluster);
    if args.keep {
        println!("data dirs and logs kept in {}", root.keep().display());
    }
    result
}

async fn run(args: &Args, cluster: &mut Cluster, started: Instant) -> Result<()> {
    cluster.wait_whole(0).await?;
    println!(
        "cluster of {} masters up in {:.1} s",
        cluster.masters.len(),
        started.elapsed().as_secs_f64()
    );
    let first_dir = cluster.masters[0].process.dir.clone();
    let ca = std::fs::read_to_string(first_dir.join("tls/ca.crt"))
        .with_context(|| format!("reading {}", first_dir.join("tls/ca.crt").display()))?;
    let token = cluster.masters[0].token();
    let apis: Vec<String> = cluster.masters.iter().map(|m| m.api.clone()).collect();
    let client_from = |start: usize| -> Result<orch_core::Client> {
        let mut addrs = apis.clone();
        addrs.rotate_left(start % apis.len());
        orch_core::Client::https_servers(addrs, Some(token.clone()), &ca)
            .map_err(|e| anyhow!("API client: {e}"))
    };

    let load = Arc::new(Load::new(args.writers));
    let _stop = StopOnDrop(load.clone());
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let mut writers = Vec::new();
    for w in 0..args.writers {
        writers.push(tokio::spawn(writer(
            load.clone(),
            w,
            client_from(w)?,
            timeout,
        )));
    }
    let load_start = Instant::now();
    let steady = Duration::from_millis(args.steady_ms);

    let mut rounds = Vec::new();
    let mut prefer = 0;
    for r in 1..=args.rounds {
        let round = round(cluster, &load, steady, prefer).await?;
        println!(
            "round {r:>3}: killed leader {} (term {}); new leader {} (term {}); writes unavailable {:>8.1} ms \
             (longest gap, from kill {:+.1} ms); first write after kill {:>8.1} ms; rejoined in {:>6.1} ms; {} writes",
            round.killed,
            round.killed_term,
            round.new_leader,
            round.new_term,
            ms(round.unavailable),
            round.gap_start_ms,
            ms(round.first_write),
            ms(round.rejoin),
            round.writes
        );
        prefer = cluster
            .ids
            .iter()
            .position(|id| *id == round.killed)
            .unwrap_or(0);
        rounds.push(round);
    }

    load.stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await?;
    }
    load.check()?;
    let load_time = load_start.elapsed();
    let acknowledged: u64 = load.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();

    let names = listed_names(&client_from(0)?).await?;
    let mut lost = missing(&load, &names);
    if !lost.is_empty() {
        // Listed again, in case the first list was answered before the
        // last writes were visible to it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        lost = missing(&load, &listed_names(&client_from(1)?).await?);
    }

    let mut unavailable = histogram();
    let mut first_write = histogram();
    for round in &rounds {
        unavailable.record(round.unavailable.as_micros().max(1) as u64)?;
        first_write.record(round.first_write.as_micros().max(1) as u64)?;
    }
    println!();
    println!(
        "write unavailability over {} leader kills (longest interval without an acknowledged write):",
        rounds.len()
    );
    println!(
        "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        quantile_ms(&unavailable, 0.5),
        quantile_ms(&unavailable, 0.99),
        unavailable.max() as f64 / 1e3
    );
    println!(
        "first write after the kill: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        quantile_ms(&first_write, 0.5),
        quantile_ms(&first_write, 0.99),
        first_write.max() as f64 / 1e3
    );
    let retried = load.retried.lock().expect("retry counts").clone();
    println!(
        "writes acknowledged: {acknowledged} in {:.1} s ({:.0}/s); retried attempts: {}",
        load_time.as_secs_f64(),
        acknowledged as f64 / load_time.as_secs_f64(),
        if retried.is_empty() {
            "none".to_string()
        } else {
            retried
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!(
        "objects listed: {} ({} applied but never acknowledged: abandoned when the load stopped)",
        names.len(),
        names.len().saturating_sub(acknowledged as usize)
    );
    println!("lost acknowledged writes: {}", lost.len());
    println!(
        "anchor: etcd election timeout 1,000 ms (default); Kubernetes controller-manager lease 15,000 ms; orch target p99 <= 1,000 ms: {}",
        if quantile_ms(&unavailable, 0.99) <= 1000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    if !lost.is_empty() {
        let shown: Vec<&str> = lost.iter().take(20).map(String::as_str).collect();
        bail!(
            "{} acknowledged writes are missing, e.g. {}",
            lost.len(),
            shown.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_output_is_parsed() {
        let text = "members:\n  1                    127.0.0.1:2380           leader\n  \
                    77                   127.0.0.1:2381           voter\n  \
                    78                   127.0.0.1:2382           learner\n\
                    leader:   1 (term 3)\nrevision: 12\nnodes:\n  (none)\n";
        let status = parse_status(text).unwrap();
        assert_eq!(status.voters, [1, 77]);
        assert_eq!(status.learners, [78]);
        assert_eq!(status.leader, Some(1));
        assert_eq!(status.term, 3);
        let none = parse_status("members:\nleader:   none (term 4)\n").unwrap();
        assert_eq!(none.leader, None);
        assert_eq!(none.term, 4);
        assert!(parse_status("error").is_none());
    }

    #[test]
    fn the_longest_gap_is_found() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let acks = [at(10), at(20), at(500), at(510)].map(|t| Ack { sent: t, at: t });
        let (gap, start) = longest_gap(&acks, t0, at(600));
        assert_eq!(gap, Duration::from_millis(480));
        assert_eq!(start, at(20));
        let (gap, _) = longest_gap(&[], t0, at(100));
        assert_eq!(gap, Duration::from_millis(100));
    }
}
