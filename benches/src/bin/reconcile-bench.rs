//! `reconcile-bench`: the control loops of orch at cluster scale, with
//! hollow nodes standing in for kubelets.
//!
//! Starts `--masters` store members on loopback (fsync on unless
//! `--no-fsync`), an API server on each, and the standard control loops on
//! every master (only the Raft leader's run). Registers `--nodes` hollow
//! nodes through a follower's API, then creates Deployments totalling
//! `--pods` pods and waits until every pod is Running. A pod watch on a
//! follower timestamps each pod when it first appears, when it is first
//! seen bound to a node, and when it is first seen Running; from those:
//! scheduling latency and create→Running latency (p50/p99), and the time
//! until all pods run. Everything runs in one process, so the peak RSS
//! reported is that of all masters, the hollow nodes and the bench client
//! together.

/// The masters run in this process; mimalloc, as orch's binaries use it,
/// rather than glibc's malloc, which the profiles showed at a fifth of the
/// CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use orch_benches::{http_client, quantile_ms, request, HttpClient};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use orch_core::controller::{standard_loops, LeaderLoops, LoopSettings};
use orch_core::hollow::{HollowCluster, HollowConfig};
use orch_core::server::{serve, ApiServer, ServerHandle};
use orch_core::{Client, Registry};
use orch_raft_store::StoreNode;
use serde_json::{json, Value};

#[derive(Parser, Clone)]
#[command(
    name = "reconcile-bench",
    about = "Deployments to Running pods on hollow nodes: scheduling and start latency, throughput, memory"
)]
struct Args {
    /// Masters (store members, each with an API server and the loops).
    #[arg(long, default_value_t = 3)]
    masters: u64,
    /// Hollow nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Pods in total (spread over Deployments).
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
    /// Replicas per Deployment (the last one takes the remainder).
    #[arg(long, default_value_t = 100)]
    pods_per_deployment: usize,
    /// Concurrent Deployment creates.
    #[arg(long, default_value_t = 8)]
    creators: usize,
    /// Workers of the hollow nodes reporting pod status.
    #[arg(long, default_value_t = 256)]
    hollow_workers: usize,
    /// Lease renewal interval of every hollow node, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    renew_ms: u64,
    /// Node lifecycle's grace period for a stale Lease, in milliseconds
    /// (default: the loops' default). With thousands of nodes on a small
    /// machine, raise it together with --renew-ms, as kubelets renew every
    /// 10 s with a 40 s grace.
    #[arg(long)]
    node_grace_ms: Option<u64>,
    /// Hollow nodes talk HTTP to a follower's API server (failing over to
    /// the others) instead of calling its handlers in-process.
    #[arg(long)]
    hollow_http: bool,
    /// Give up if not every pod runs after this many seconds (default:
    /// 120 s plus 20 ms per pod).
    #[arg(long)]
    timeout_secs: Option<u64>,
    /// Turn fsync of the Raft log off (prints it).
    #[arg(long)]
    no_fsync: bool,
    /// Workers per control loop (default: the loops' default).
    #[arg(long)]
    loop_workers: Option<usize>,
}

/// A master: store member, API server, loops.
struct Master {
    store: StoreNode,
    server: Arc<ApiServer>,
    handle: ServerHandle,
    loops: LeaderLoops,
}

async fn start_masters(args: &Args, root: &std::path::Path) -> Result<Vec<Master>> {
    let stores = orch_benches::start_store_cluster(args.masters, root, !args.no_fsync).await?;
    let mut masters = Vec::new();
    for store in stores {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = ApiServer::new(Registry::new(store.clone()));
        let handle = serve(listener, server.clone())?;
        let mut settings = LoopSettings::default();
        if let Some(ms) = args.node_grace_ms {
            settings.node_monitor_grace = Duration::from_millis(ms);
        }
        if let Some(workers) = args.loop_workers {
            settings.workers = workers;
        }
        let loops = standard_loops(settings).run_on_leader(store.clone());
        masters.push(Master {
            store,
            server,
            handle,
            loops,
        });
    }
    Ok(masters)
}

fn deployment(name: &str, replicas: usize) -> Vec<u8> {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"bench": "reconcile"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "bench": "reconcile"}},
                "spec": {"containers": [{
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }]},
            },
        },
    })
    .to_string()
    .into_bytes()
}

/// When the watch first saw each pod: appear, bound, Running.
#[derive(Default, Clone, Copy)]
struct PodTimes {
    added: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
}

/// What the pod watch has seen so far.
struct Observed {
    pods: HashMap<String, PodTimes>,
    scheduling: Histogram<u64>,
    to_running: Histogram<u64>,
    bound: usize,
    running: usize,
    last_running: Option<Instant>,
    resource_version: String,
}

impl Observed {
    fn see(&mut self, event: &Value) {
        let object = &event["object"];
        if event["type"] == "BOOKMARK" || event["type"] == "ERROR" {
            return;
        }
        if let Some(rv) = object["metadata"]["resourceVersion"].as_str() {
            self.resource_version = rv.to_string();
        }
        if event["type"] == "DELETED" {
            return;
        }
        let Some(name) = object["metadata"]["name"].as_str() else {
            return;
        };
        let now = Instant::now();
        let times = self.pods.entry(name.to_string()).or_default();
        let added = *times.added.get_or_insert(now);
        if times.bound.is_none()
            && object["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        {
            times.bound = Some(now);
            self.bound += 1;
            let _ = self
                .scheduling
                .record(now.duration_since(added).as_micros() as u64);
        }
        if times.running.is_none() && object["status"]["phase"] == "Running" {
            times.running = Some(now);
            self.running += 1;
            self.last_running = Some(now);
            let _ = self
                .to_running
                .record(now.duration_since(added).as_micros() as u64);
        }
    }
}

/// Follows the bench pods from `resource_version` on, resuming after a
/// broken watch, until the process ends.
async fn watch_pods(client: HttpClient, addr: String, observed: Arc<Mutex<Observed>>) {
    loop {
        let rv = observed
            .lock()
            .expect("observed lock")
            .resource_version
            .clone();
        let url = format!(
            "http://{addr}/api/v1/namespaces/default/pods?watch=1&labelSelector=bench%3Dreconcile&resourceVersion={rv}"
        );
        let Ok(req) = hyper::Request::get(&url).body(Full::new(Bytes::new())) else {
            return;
        };
        let mut body = match client.request(req).await {
            Ok(resp) => resp.into_body(),
            Err(e) => {
                eprintln!("pod watch failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut buffer = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            let mut start = 0;
            let mut events = Vec::new();
            while let Some(end) = buffer[start..].iter().position(|b| *b == b'\n') {
                if let Ok(event) = serde_json::from_slice::<Value>(&buffer[start..start + end]) {
                    events.push(event);
                }
                start += end + 1;
            }
            buffer.drain(..start);
            let mut observed = observed.lock().expect("observed lock");
            for event in &events {
                observed.see(event);
            }
        }
        eprintln!("pod watch ended; resuming");
    }
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// No progress for a while: tells, from the API rather than the bench's
/// watch, how many pods exist and which ReplicaSets do not have the pods
/// they should.
async fn diagnose_stall(client: &Client, per_deployment: usize) {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;
    println!("no progress for 20 s; asking the API:");
    let pods = match client.list::<Pod>(None, None).await {
        Ok((pods, _)) => pods,
        Err(e) => {
            println!("  listing pods failed: {e}");
            return;
        }
    };
    let running = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    println!("  {} pods exist, {running} Running", pods.len());
    let mut owned: HashMap<String, usize> = HashMap::new();
    for pod in &pods {
        if let Some(owner) = pod.metadata.owner_references.iter().flatten().next() {
            *owned.entry(owner.uid.clone()).or_default() += 1;
        }
    }
    match client.list::<ReplicaSet>(None, None).await {
        Ok((sets, _)) => {
            for set in sets {
                let uid = set.metadata.uid.clone().unwrap_or_default();
                let want = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) as usize;
                let have = owned.get(&uid).copied().unwrap_or(0);
                if have != want || want != per_deployment {
                    println!(
                        "  ReplicaSet {}/{}: spec.replicas {want}, {have} pods, status {:?}",
                        set.metadata.namespace.as_deref().unwrap_or(""),
                        set.metadata.name.as_deref().unwrap_or(""),
                        set.status.as_ref().map(|s| (
                            s.replicas,
                            s.ready_replicas,
                            s.observed_generation
                        )),
                    );
                }
            }
        }
        Err(e) => println!("  listing replica sets failed: {e}"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.masters == 0 || args.nodes == 0 || args.pods == 0 || args.pods_per_deployment == 0 {
        bail!("--masters, --nodes, --pods and --pods-per-deployment must be at least 1");
    }
    let deployments = args.pods.div_ceil(args.pods_per_deployment);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let setting = format!(
        "masters {}, nodes {}, pods {}, deployments {} ({} pods each), fsync {}, cores {}, lease renewal {} ms, node grace {} ms, {} workers per loop, hollow nodes via {}",
        args.masters,
        args.nodes,
        args.pods,
        deployments,
        args.pods_per_deployment,
        if args.no_fsync { "OFF" } else { "on" },
        cores,
        args.renew_ms,
        args.node_grace_ms
            .unwrap_or(LoopSettings::default().node_monitor_grace.as_millis() as u64),
        args.loop_workers
            .unwrap_or(LoopSettings::default().workers),
        if args.hollow_http { "HTTP" } else { "in-process client" },
    );
    println!("reconcile-bench setting: {setting}");
    println!("everything in one process on loopback: store members, API servers, control loops (on the leader), hollow nodes, bench client");

    let root = tempfile::tempdir()?;
    let masters = start_masters(&args, root.path()).await?;
    let started = Instant::now();
    let leader = loop {
        if let Some(i) = masters
            .iter()
            .position(|m| m.loops.running_term().is_some())
        {
            break i;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("no master started the control loops within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Hollow nodes and the pod watch go through a follower, as remote
    // kubelets and clients would; creates go through every master.
    let follower = (0..masters.len()).find(|i| *i != leader).unwrap_or(leader);
    let addrs: Vec<String> = masters.iter().map(|m| m.handle.addr.to_string()).collect();
    println!(
        "control loops on master {} (the Raft leader); hollow nodes and the pod watch on master {}",
        leader + 1,
        follower + 1
    );

    // Hollow nodes: enough pod capacity for every pod.
    let per_node = args.pods.div_ceil(args.nodes);
    let hollow_client = if args.hollow_http {
        Client::http(addrs[follower].clone())
    } else {
        Client::in_process(masters[follower].server.clone())
    };
    let registering = Instant::now();
    let hollow = HollowCluster::start(
        hollow_client,
        HollowConfig {
            nodes: args.nodes,
            name_prefix: "hollow-".into(),
            cpu: "64".into(),
            memory: "512Gi".into(),
            pods: (per_node as u32 * 2).max(110),
            renew_interval: Duration::from_millis(args.renew_ms),
            workers: args.hollow_workers,
            failover: if args.hollow_http {
                (0..addrs.len())
                    .filter(|i| *i != follower)
                    .map(|i| addrs[i].clone())
                    .collect()
            } else {
                Vec::new()
            },
            ..HollowConfig::default()
        },
    )
    .await
    .context("registering hollow nodes")?;
    println!(
        "registered {} hollow nodes in {:.1} s",
        args.nodes,
        registering.elapsed().as_secs_f64()
    );

    let http = http_client(args.creators.max(4));

    // The watch starts at the current revision, before any bench pod.
    let (status, body) = request(
        &http,
        "GET",
        &format!(
            "http://{}/api/v1/namespaces/default/pods?limit=1",
            addrs[follower]
        ),
        Vec::new(),
    )
    .await?;
    if status != 200 {
        bail!("listing pods answered {status}");
    }
    let list: Value = serde_json::from_slice(&body)?;
    let observed = Arc::new(Mutex::new(Observed {
        pods: HashMap::with_capacity(args.pods),
        scheduling: Histogram::new(3)?,
        to_running: Histogram::new(3)?,
        bound: 0,
        running: 0,
        last_running: None,
        resource_version: list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string(),
    }));
    let watcher = tokio::spawn(watch_pods(
        http.clone(),
        addrs[follower].clone(),
        observed.clone(),
    ));

    // Deployments, created concurrently through every master.
    let began = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut creators = Vec::new();
    for worker in 0..args.creators.max(1) {
        let (http, next, args) = (http.clone(), next.clone(), args.clone());
        let url = format!(
            "http://{}/apis/apps/v1/namespaces/default/deployments",
            addrs[worker % addrs.len()]
        );
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= deployments {
                    return Ok::<_, anyhow::Error>(());
                }
                let replicas =
                    (args.pods - i * args.pods_per_deployment).min(args.pods_per_deployment);
                let body = deployment(&format!("bench-{i:05}"), replicas);
                let (status, answer) = request(&http, "POST", &url, body).await?;
                if status != 201 {
                    bail!(
                        "creating a Deployment answered {status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
        }));
    }
    for creator in creators {
        creator.await??;
    }
    let created = began.elapsed();
    println!(
        "created {deployments} Deployments in {:.1} s; waiting for {} pods to run",
        created.as_secs_f64(),
        args.pods
    );

    let timeout = Duration::from_secs(args.timeout_secs.unwrap_or(120 + args.pods as u64 / 50));
    let mut last_report = Instant::now();
    let mut last_progress = (0, 0, 0);
    let mut last_change = (Instant::now(), 0);
    let mut diagnosed = false;
    loop {
        let (added, bound, running) = {
            let o = observed.lock().expect("observed lock");
            (o.pods.len(), o.bound, o.running)
        };
        if running >= args.pods {
            break;
        }
        if running != last_change.1 {
            last_change = (Instant::now(), running);
        } else if !diagnosed && last_change.0.elapsed() > Duration::from_secs(20) {
            diagnosed = true;
            let inspector = Client::in_process(masters[follower].server.clone());
            diagnose_stall(&inspector, args.pods_per_deployment).await;
        }
        if began.elapsed() > timeout {
            let stats = hollow.stats();
            bail!(
                "TIMEOUT after {:.0} s: not every pod is Running ({added} pods created, {bound} bound to a node, {running} Running of {}; hollow nodes started {}, status errors {}, nodes re-reported Ready {} times). Are the scheduler and the ReplicaSet/Deployment controllers running? Nodes that keep going NotReady (lease renewals falling behind) get tainted and their pods evicted: raise --renew-ms and --node-grace-ms. setting: {setting}",
                began.elapsed().as_secs_f64(),
                args.pods,
                stats.pods_started,
                stats.pod_errors,
                stats.ready_reports,
            );
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            let rate = (running - last_progress.2) as f64 / last_report.elapsed().as_secs_f64();
            println!(
                "  {:>6.1} s: {added} pods created, {bound} bound, {running} Running ({rate:.0}/s)",
                began.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
            last_progress = (added, bound, running);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (scheduling, to_running, took) = {
        let o = observed.lock().expect("observed lock");
        let last = o.last_running.unwrap_or_else(Instant::now);
        (
            o.scheduling.clone(),
            o.to_running.clone(),
            last.duration_since(began),
        )
    };
    let hwm = proc_status_kib("VmHWM:");
    let rss = proc_status_kib("VmRSS:");
    let stats = hollow.stats();
    let mut hollow_side = Histogram::<u64>::new(3)?;
    for sample in hollow.take_start_latencies() {
        hollow_side.record(sample.as_micros() as u64)?;
    }

    println!("reconcile-bench setting: {setting}");
    println!(
        "all running : {} pods in {:.1} s = {:.0} pods/s (from the first Deployment create to the last pod seen Running; creates took {:.1} s)",
        args.pods,
        took.as_secs_f64(),
        args.pods as f64 / took.as_secs_f64(),
        created.as_secs_f64()
    );
    println!(
        "scheduling  : p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  (pod first seen → first seen bound, by a watch on master {})",
        quantile_ms(&scheduling, 0.5),
        quantile_ms(&scheduling, 0.99),
        scheduling.max() as f64 / 1000.0,
        follower + 1
    );
    println!(
        "create→Run  : p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  (pod first seen → first seen Running, same watch)",
        quantile_ms(&to_running, 0.5),
        quantile_ms(&to_running, 0.99),
        to_running.max() as f64 / 1000.0
    );
    println!(
        "hollow node : bound→Running written p50 {:>8.1} ms  p99 {:>8.1} ms  ({} pods started, {} status errors, {} lease renewals, {} lease errors)",
        quantile_ms(&hollow_side, 0.5),
        quantile_ms(&hollow_side, 0.99),
        stats.pods_started,
        stats.pod_errors,
        stats.lease_renewals,
        stats.lease_errors
    );
    let lease_seconds = registering.elapsed().as_secs_f64();
    println!(
        "leases      : {:.0} renewals/s achieved, {:.0}/s wanted ({} nodes every {} ms); nodes re-reported Ready {} times (marked NotReady meanwhile), pods {} times",
        stats.lease_renewals as f64 / lease_seconds,
        args.nodes as f64 * 1000.0 / args.renew_ms as f64,
        args.nodes,
        args.renew_ms,
        stats.ready_reports,
        stats.pod_ready_reports
    );
    for (name, metrics) in masters[leader].loops.metrics().all() {
        let s = metrics.snapshot();
        if s.reconciles > 0 {
            println!(
                "loop {name:<26}: {} reconciles, {} errors",
                s.reconciles, s.errors
            );
        }
    }
    println!(
        "memory      : peak RSS (VmHWM) {:.0} MiB, RSS now {:.0} MiB — one process: all {} masters + {} hollow nodes + bench client",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
        args.masters,
        args.nodes
    );

    watcher.abort();
    hollow.shutdown().await;
    for master in &masters {
        master.loops.stop();
    }
    for master in masters {
        master.handle.shutdown().await;
        master.store.shutdown().await;
    }
    Ok(())
}
