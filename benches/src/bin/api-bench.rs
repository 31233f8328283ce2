//! `api-bench`: the Kubernetes API server of orch under load.
//!
//! Starts `--masters` store members on loopback (fsync on), an API server
//! on each, then: creates `--objects` pods with `--clients` concurrent
//! clients spread over the masters (creates/s, p50/p99 latency); lists all
//! of them through the API (latency of a full list); and measures watch
//! event delay, from the moment a create is sent to the moment a watcher on
//! another master receives its ADDED event (p50/p99).

/// The masters run in this process; mimalloc, as orch's binaries use it,
/// rather than glibc's malloc, which the profiles showed at a fifth of the
/// CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use orch_benches::{http_client, quantile_ms, request, HttpClient};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use orch_core::server::{serve, ApiServer};
use orch_core::Registry;
use orch_raft_store::StoreNode;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "api-bench",
    about = "Load the orch API server: creates, lists, watch delay"
)]
struct Args {
    /// Store members, each with an API server.
    #[arg(long, default_value_t = 3)]
    masters: u64,
    /// Concurrent clients creating pods.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Pods to create.
    #[arg(long, default_value_t = 50_000)]
    objects: usize,
    /// Pods created while watching, for the watch delay.
    #[arg(long, default_value_t = 5_000)]
    watch_objects: usize,
    /// How many full lists to time.
    #[arg(long, default_value_t = 5)]
    lists: usize,
    /// Turn fsync of the Raft log off (prints it).
    #[arg(long)]
    no_fsync: bool,
}

fn pod(name: &str, sent_nanos: u128) -> Vec<u8> {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}, "annotations": {"bench/sent": sent_nanos.to_string()}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"],
                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    })
    .to_string()
    .into_bytes()
}

async fn start_masters(
    args: &Args,
    root: &std::path::Path,
) -> Result<(
    Vec<StoreNode>,
    Vec<String>,
    Vec<orch_core::server::ServerHandle>,
)> {
    let nodes = orch_benches::start_store_cluster(args.masters, root, !args.no_fsync).await?;
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for node in &nodes {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let handle = serve(listener, ApiServer::new(Registry::new(node.clone())))?;
        addrs.push(handle.addr.to_string());
        servers.push(handle);
    }
    Ok((nodes, addrs, servers))
}

async fn create_phase(
    client: &HttpClient,
    addrs: &[String],
    clients: usize,
    objects: usize,
    prefix: &str,
    epoch: Instant,
) -> Result<(Histogram<u64>, Duration)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let phase_start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let client = client.clone();
        let next = next.clone();
        let url = format!(
            "http://{}/api/v1/namespaces/default/pods",
            addrs[worker % addrs.len()]
        );
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= objects {
                    return Ok::<_, anyhow::Error>(hist);
                }
                let started = Instant::now();
                let body = pod(
                    &format!("{prefix}-{i:06}"),
                    started.duration_since(epoch).as_nanos(),
                );
                let (status, answer) = request(&client, "POST", &url, body).await?;
                if status != 201 {
                    bail!(
                        "create answered {status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
                hist.record(started.elapsed().as_micros() as u64)?;
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for task in tasks {
        all.add(task.await??)?;
    }
    Ok((all, phase_start.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!("api-bench setting: masters {}, clients {}, objects {}, watch objects {}, fsync {}, cores {}",
        args.masters, args.clients, args.objects, args.watch_objects,
        if args.no_fsync { "OFF" } else { "on" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("everything in one process on loopback: store members, API servers (HTTP/1.1 JSON) and clients");
    let root = tempfile::tempdir()?;
    let (nodes, addrs, servers) = start_masters(&args, root.path()).await?;
    let client = http_client(args.clients);

    // Creates.
    let (creates, took) = create_phase(
        &client,
        &addrs,
        args.clients,
        args.objects,
        "p",
        Instant::now(),
    )
    .await?;
    println!(
        "create  : {:>8.0} creates/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} pods in {:.1} s)",
        args.objects as f64 / took.as_secs_f64(),
        quantile_ms(&creates, 0.5),
        quantile_ms(&creates, 0.99),
        args.objects,
        took.as_secs_f64()
    );

    // Full lists.
    let mut lists = Histogram::<u64>::new(3)?;
    let mut count = 0;
    for i in 0..args.lists {
        let url = format!(
            "http://{}/api/v1/namespaces/default/pods",
            addrs[i % addrs.len()]
        );
        let started = Instant::now();
        let (status, body) = request(&client, "GET", &url, Vec::new()).await?;
        lists.record(started.elapsed().as_micros() as u64)?;
        if status != 200 {
            bail!("list answered {status}");
        }
        let list: Value = serde_json::from_slice(&body).context("list body")?;
        count = list["items"].as_array().map_or(0, |i| i.len());
    }
    println!(
        "list    : {count} pods per list  p50 {:>7.1} ms  max {:>7.1} ms  ({} lists)",
        quantile_ms(&lists, 0.5),
        lists.max() as f64 / 1000.0,
        args.lists
    );

    // Watch delay: watch on the last master while clients create through all.
    let rv = {
        let (_, body) = request(
            &client,
            "GET",
            &format!("http://{}/api/v1/namespaces/default/pods?limit=1", addrs[0]),
            Vec::new(),
        )
        .await?;
        let list: Value = serde_json::from_slice(&body)?;
        list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string()
    };
    let watch_url = format!(
        "http://{}/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}",
        addrs[addrs.len() - 1]
    );
    let watch_req = hyper::Request::get(&watch_url).body(Full::new(Bytes::new()))?;
    let mut watch_body = client.request(watch_req).await?.into_body();
    let epoch = Instant::now();
    let watch_objects = args.watch_objects;
    let watcher = tokio::spawn(async move {
        let mut delays = Histogram::<u64>::new(3).expect("histogram");
        let mut buffer = Vec::new();
        let mut seen = 0;
        while seen < watch_objects {
            let Some(frame) = watch_body.frame().await else {
                break;
            };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let event: Value = serde_json::from_slice(&line)?;
                if event["type"] == "ADDED" {
                    if let Some(sent) =
                        event["object"]["metadata"]["annotations"]["bench/sent"].as_str()
                    {
                        let sent: u128 = sent.parse().unwrap_or(0);
                        let now = epoch.elapsed().as_nanos();
                        delays.record(((now.saturating_sub(sent)) / 1000) as u64)?;
                        seen += 1;
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(delays)
    });
    // Creates carry their send time relative to the watcher's epoch.
    let (_, _) = create_phase(
        &client,
        &addrs,
        args.clients,
        args.watch_objects,
        "w",
        epoch,
    )
    .await?;
    let delays = tokio::time::timeout(Duration::from_secs(60), watcher).await???;
    println!(
        "watch   : event delay p50 {:>7.2} ms  p99 {:>7.2} ms  ({} ADDED events, watcher on master {}, creates through all)",
        quantile_ms(&delays, 0.5),
        quantile_ms(&delays, 0.99),
        delays.len(),
        addrs.len()
    );

    for server in servers {
        server.shutdown().await;
    }
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}
