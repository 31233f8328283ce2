//! `service-bench`: orch's service proxy (kube-proxy's nftables mode) on
//! one node: how fast an EndpointSlice change reaches the kernel, and what
//! a ClusterIP costs a client against hitting the pod IP directly.
//!
//! Everything runs in a network namespace of its own (`orchbench-<pid>`),
//! so the host's network is never touched: the bench creates it, runs
//! itself again inside (`ip netns exec`, internal flag `--inside-netns`),
//! and deletes it afterwards, with the tables and links in it, also when
//! the run fails. Inside:
//!
//! - a single master in this process (API server over HTTP on loopback,
//!   fsync on, no controllers), `--services` Services (ClusterIP, port
//!   `http` 80 -> 8080, no selector) each with one EndpointSlice of
//!   `--endpoints` ready endpoints at fake addresses of 10.200.0.0/16,
//!   written by the bench itself;
//! - orch's service proxy ([`ServiceProxy`] over [`ServiceCaches`], the
//!   informers an agent runs, talking HTTP to the API server), whose
//!   `applied_revision` says up to which API revision the kernel rules
//!   reflect every Service and EndpointSlice.
//!
//! Measured:
//!
//! 1. initial sync: from starting the informers and the proxy until the
//!    rules of every Service are in the kernel (full table, one `nft`
//!    transaction);
//! 2. sync latency: `--changes` times, one endpoint address of a random
//!    Service's slice is replaced through the API; the time from just
//!    before the write until `applied_revision` reaches the write's
//!    revision (and, apart, from the write's acknowledgement). Changes are
//!    `--interval-ms` apart. At the end `nft -j list table` is read back
//!    to check that the last change is in the kernel;
//! 3. throughput: a "pod" namespace (`orchbench-<pid>-pod`, made by the
//!    outer process) behind a veth pair (10.201.0.1 here, 10.201.0.2
//!    there) runs a small HTTP/1.1 server (hyper, answering `ok`, in a
//!    thread that entered that namespace). A load generator (hyper,
//!    `--connections` concurrent connections, `--seconds` per measurement
//!    after `--warmup` seconds, `--rounds` rounds alternating which path
//!    goes first) GETs the pod directly and through a ClusterIP (DNAT in
//!    the nat output hook), and prints requests/s, p50/p99/max request
//!    latency, SYN retransmissions and the ratio. Modes: keep-alive
//!    connections from the node's address (10.201.0.1, outside the
//!    cluster CIDRs, so also masqueraded, as kube-proxy does); a new
//!    connection per request from the node; a new connection per request
//!    from a pod address (10.201.0.129, inside a cluster CIDR: DNAT only).
//!    Each path of each mode has a server port and a Service of its own,
//!    so one measurement's TIME_WAIT sockets and conntrack entries never
//!    meet another's connections.
//!
//! The anchor is kube-proxy's nftables mode: orch aims at p99 <= 50 ms rule
//! sync at 1,000 Services and <= 10% throughput loss through a ClusterIP.
//! kube-proxy itself is not run (the bench says whether it is installed);
//! the settings, the machine (cores, nft version, kernel, build profile)
//! and every figure are printed.
//!
//! Run as root (network namespaces, nftables):
//! `cargo run --release -p orch-benches --bin service-bench -- --services 1000 --endpoints 10`.

/// The master runs in this process; mimalloc, as orch's binaries use it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use orch_benches::quantile_ms;
use orch_core::controller::endpoints::SERVICE_NAME_LABEL;
use orch_core::controller::informer::revision_of;
use orch_core::controller::Cache;
use orch_core::{Client, ControlPlane, ControlPlaneConfig};
use orch_runtime::agent::service_proxy::{ProxyConfig, ServiceProxy};
use orch_runtime::agent::services::ServiceCaches;
use orch_runtime::net::Cidr;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The namespace of the bench's objects.
const NAMESPACE: &str = "default";
/// The cluster CIDR the fake endpoints live in.
const CLUSTER_CIDR: &str = "10.200.0.0/16";
/// A second cluster CIDR, holding the client's "pod" source address.
const CLIENT_POD_CIDR: &str = "10.201.0.128/25";
/// The client's address as a pod (in CLIENT_POD_CIDR, on the host side
/// of the veth): traffic from it to a ClusterIP is not masqueraded.
const POD_SOURCE: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 129);
/// The host side of the veth pair (this namespace).
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The pod side of the veth pair (the pod namespace), where the server is.
const POD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
/// The fake endpoints' port, and the first port of the pod's server.
const POD_PORT: u16 = 8080;
/// The Services' port.
const SERVICE_PORT: u16 = 80;
/// The proxy's bridge name (its table is `ip orchbench-svc`).
const BRIDGE: &str = "orchbench";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "service-bench",
    about = "Service proxy: EndpointSlice change -> rules in the kernel, and ClusterIP vs pod IP throughput"
)]
struct Args {
    /// Services (ClusterIP, one port each).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints in each Service's EndpointSlice.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// EndpointSlice changes timed (one endpoint address replaced each).
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Pause between two changes, in milliseconds.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Concurrent writers creating the Services and slices.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of load before each measurement, not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Rounds of the throughput measurements (pod IP and ClusterIP
    /// alternate which goes first).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Worker threads of the pod's HTTP server.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Skip the new-connection-per-request measurements (keep-alive only).
    #[arg(long)]
    keepalive_only: bool,
    /// Seed of the choice of Services and endpoints to change.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Internal: this process runs inside the bench's network namespace.
    #[arg(long, hide = true)]
    inside_netns: bool,
    /// Internal: the pod's network namespace (under /run/netns).
    #[arg(long, hide = true)]
    pod_netns: Option<String>,
    /// Internal: the master's data dir (made and removed by the outer process).
    #[arg(long, hide = true)]
    data_dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.inside_netns {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "error".into()),
            )
            .init();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(inside(args));
    }
    let code = outside()?;
    std::process::exit(code);
}

// ---------------------------------------------------------------------------
// Outside: the namespaces, and this binary again inside them.

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The network namespaces made so far; deleted when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) -> Result<()> {
        run("ip", &["netns", "add", name])?;
        self.0.push(name.to_string());
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            if let Err(e) = run("ip", &["netns", "delete", name]) {
                eprintln!("service-bench: cleaning up: {e}");
            }
        }
    }
}

/// Makes the namespaces, runs this binary inside, cleans up; returns the
/// inner run's exit code.
fn outside() -> Result<i32> {
    let bench = format!("orchbench-{}", std::process::id());
    let pod = format!("{bench}-pod");
    let data = tempfile::Builder::new().prefix("service-bench").tempdir()?;
    let mut namespaces = Namespaces(Vec::new());
    namespaces
        .add(&bench)
        .and_then(|()| namespaces.add(&pod))
        .context("making the bench's network namespaces (needs root)")?;
    let me = std::env::current_exe()?;
    let mut child_args: Vec<OsString> = vec!["netns".into(), "exec".into(), bench.clone().into()];
    child_args.push(me.into_os_string());
    child_args.extend(std::env::args_os().skip(1));
    child_args.extend([
        "--inside-netns".into(),
        "--pod-netns".into(),
        pod.clone().into(),
        "--data-dir".into(),
        data.path().as_os_str().to_owned(),
    ]);
    // Ctrl-C reaches the inner process too; this one waits for it and
    // cleans up.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        let mut child = tokio::process::Command::new("ip")
            .args(&child_args)
            .spawn()
            .context("running the bench inside its namespace")?;
        tokio::select! {
            status = child.wait() => Ok::<_, anyhow::Error>(status?),
            _ = tokio::signal::ctrl_c() => {
                eprintln!("service-bench: interrupted; cleaning up");
                Ok(child.wait().await?)
            }
        }
    })?;
    drop(namespaces);
    drop(data);
    Ok(status.code().unwrap_or(1))
}

// ---------------------------------------------------------------------------
// Inside.

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("histogram")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(d.as_micros().max(1) as u64);
}

fn api<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The `n`th fake endpoint address: 10.200.0.1 upwards, wrapping inside
/// 10.200.0.0/16 (addresses may repeat across Services, never in a slice).
fn fake_address(n: usize) -> Ipv4Addr {
    let host = 1 + (n % 65_534) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + host)
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn service(name: &str, target_port: u16) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"type": "ClusterIP", "ports": [
            {"name": "http", "port": SERVICE_PORT, "targetPort": target_port, "protocol": "TCP"}
        ]},
    }))?)
}

fn slice(service: &str, addresses: &[Ipv4Addr], port: u16) -> Result<EndpointSlice> {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": service, "namespace": NAMESPACE,
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))?)
}

/// Creates a Service and its slice (endpoints `addresses`:`port`);
/// returns the slice as written.
async fn create_pair(
    client: &Client,
    name: &str,
    addresses: &[Ipv4Addr],
    port: u16,
) -> Result<EndpointSlice> {
    client
        .create(Some(NAMESPACE), &service(name, port)?)
        .await
        .map_err(api)
        .with_context(|| format!("creating Service {name}"))?;
    client
        .create(Some(NAMESPACE), &slice(name, addresses, port)?)
        .await
        .map_err(api)
        .with_context(|| format!("creating EndpointSlice {name}"))
}

/// Waits until the proxy's rules reflect revision `revision`.
async fn applied(proxy: &mut watch::Receiver<u64>, revision: u64, timeout: Duration) -> Result<()> {
    tokio::time::timeout(timeout, proxy.wait_for(|r| *r >= revision))
        .await
        .with_context(|| format!("rules not applied up to revision {revision} in {timeout:?}"))?
        .context("the service proxy stopped")?;
    Ok(())
}

/// The veth pair to the pod namespace, and the route of the service CIDR.
fn pod_network(pod: &str) -> Result<()> {
    run(
        "ip",
        &[
            "link",
            "add",
            "bench-host",
            "type",
            "veth",
            "peer",
            "name",
            "bench-pod",
        ],
    )?;
    run("ip", &["link", "set", "bench-pod", "netns", pod])?;
    run(
        "ip",
        &[
            "addr",
            "add",
            &format!("{HOST_ADDR}/24"),
            "dev",
            "bench-host",
        ],
    )?;
    // The client's "pod" address (in a cluster CIDR), beside the node's.
    run(
        "ip",
        &[
            "addr",
            "add",
            &format!("{POD_SOURCE}/24"),
            "dev",
            "bench-host",
        ],
    )?;
    run("ip", &["link", "set", "bench-host", "up"])?;
    run(
        "ip",
        &[
            "-n",
            pod,
            "addr",
            "add",
            &format!("{POD_ADDR}/24"),
            "dev",
            "bench-pod",
        ],
    )?;
    run("ip", &["-n", pod, "link", "set", "bench-pod", "up"])?;
    // A node reaches ClusterIPs through its default route; this one only
    // needs the service CIDR's.
    run("ip", &["route", "add", "10.96.0.0/12", "dev", "bench-host"])?;
    // Room for the new-connection-per-request load (this namespace only).
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")
        .context("widening the local port range of the bench namespace")?;
    Ok(())
}

/// Starts the pod's HTTP server on POD_ADDR, at each of `ports`, in
/// network namespace `pod`: a thread that enters it and runs a runtime of
/// its own there (sockets belong to the namespace they are made in).
fn start_server(pod: &str, threads: usize, ports: Vec<u16>) -> Result<()> {
    let path = Path::new("/run/netns").join(pod);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("pod-server".into())
        .spawn(move || {
            let started = (|| -> Result<(tokio::runtime::Runtime, Vec<std::net::TcpListener>)> {
                let ns = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("entering the pod's network namespace")?;
                // Worker threads are made by this thread, in its namespace.
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name("pod-server")
                    .enable_all()
                    .build()?;
                let mut listeners = Vec::new();
                for port in ports {
                    let listener = std::net::TcpListener::bind(SocketAddr::from((POD_ADDR, port)))
                        .with_context(|| format!("binding {POD_ADDR}:{port} in the pod"))?;
                    listener.set_nonblocking(true)?;
                    listeners.push(listener);
                }
                Ok((runtime, listeners))
            })();
            let (runtime, listeners) = match started {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut accepting = Vec::new();
                for listener in listeners {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => accepting.push(tokio::spawn(serve(l))),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                futures::future::join_all(accepting).await;
            });
        })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the pod's server did not start")?
}

/// Answers `ok` to every HTTP/1.1 request on `listener`'s connections.
async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What one load measurement saw.
struct Load {
    requests: u64,
    errors: u64,
    syn_retransmits: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Load {
    fn new() -> Self {
        Load {
            requests: 0,
            errors: 0,
            syn_retransmits: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
        }
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn add(&mut self, other: &Load) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.syn_retransmits += other.syn_retransmits;
        self.elapsed += other.elapsed;
        let _ = self.latency.add(&other.latency);
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 connection from `source` to `target`.
async fn connect(
    source: Ipv4Addr,
    target: SocketAddr,
) -> Result<(Sender, tokio::task::JoinHandle<()>)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

async fn get(sender: &mut Sender, host: &str, close: bool) -> Result<()> {
    sender.ready().await?;
    let mut request = hyper::Request::get("/").header(hyper::header::HOST, host);
    if close {
        request = request.header(hyper::header::CONNECTION, "close");
    }
    let response = sender.send_request(request.body(Empty::new())?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() || &body[..] != b"ok" {
        bail!("unexpected answer {status}");
    }
    Ok(())
}

/// This namespace's count of retransmitted SYNs (`TcpExt:
/// TCPSynRetrans`): a SYN lost or refused costs its connection a second.
fn syn_retransmits() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPSynRetrans")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// `connections` clients GETting `target` from `source` for `duration`,
/// over keep-alive connections or a new connection per request.
async fn load(
    source: Ipv4Addr,
    target: SocketAddr,
    connections: usize,
    duration: Duration,
    keepalive: bool,
) -> Load {
    let syn_before = syn_retransmits();
    let started = Instant::now();
    let deadline = started + duration;
    let host = target.to_string();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut requests, mut errors) = (0u64, 0u64);
            let mut open: Option<(Sender, tokio::task::JoinHandle<()>)> = None;
            while Instant::now() < deadline {
                let begun = Instant::now();
                if open.is_none() {
                    match connect(source, target).await {
                        Ok(c) => open = Some(c),
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    }
                }
                let (sender, _) = open.as_mut().expect("connected");
                match get(sender, &host, !keepalive).await {
                    Ok(()) => {
                        requests += 1;
                        record(&mut latency, begun.elapsed());
                        if !keepalive {
                            if let Some((sender, conn)) = open.take() {
                                drop(sender);
                                let _ = conn.await;
                            }
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        open = None;
                    }
                }
            }
            (requests, errors, latency)
        }));
    }
    let mut out = Load::new();
    for task in tasks {
        if let Ok((requests, errors, latency)) = task.await {
            out.requests += requests;
            out.errors += errors;
            let _ = out.latency.add(&latency);
        }
    }
    out.elapsed = started.elapsed();
    out.syn_retransmits = syn_retransmits().saturating_sub(syn_before);
    out
}

/// A warm-up, then the measurement, of `mode` against `target`.
async fn measure(args: &Args, mode: &Mode, target: SocketAddr) -> Load {
    if args.warmup > 0.0 {
        load(
            mode.source,
            target,
            args.connections,
            Duration::from_secs_f64(args.warmup),
            mode.keepalive,
        )
        .await;
    }
    load(
        mode.source,
        target,
        args.connections,
        Duration::from_secs_f64(args.seconds),
        mode.keepalive,
    )
    .await
}

/// Every address a `dnat` statement in `v` translates to: its `addr`, or
/// the addresses of the map it draws from (`address . port` elements).
fn dnat_addresses(v: &Value, out: &mut Vec<String>) {
    fn addresses_in(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.parse::<Ipv4Addr>().is_ok() => out.push(s.clone()),
            Value::Object(map) => map.values().for_each(|v| addresses_in(v, out)),
            Value::Array(items) => items.iter().for_each(|v| addresses_in(v, out)),
            _ => {}
        }
    }
    match v {
        Value::Object(map) => {
            if let Some(addr) = map.get("dnat").and_then(|d| d.get("addr")) {
                addresses_in(addr, out);
            }
            map.values().for_each(|v| dnat_addresses(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| dnat_addresses(v, out)),
        _ => {}
    }
}

/// What the kernel's table says: its chains and rules, and whether the
/// endpoints of Service `name` include `present` and exclude `gone`.
struct TableCheck {
    chains: usize,
    rules: usize,
    service_ips: usize,
    has_present: bool,
    has_gone: bool,
}

fn check_table(table: &str, name: &str, present: Ipv4Addr, gone: Ipv4Addr) -> Result<TableCheck> {
    let listing: Value = serde_json::from_str(&run("nft", &["-j", "list", "table", "ip", table])?)
        .context("parsing `nft -j list table`")?;
    // The Service's own chain (endpoints in a dnat map) and, with session
    // affinity, its endpoints' chains.
    let prefixes = [
        format!("svc-{NAMESPACE}/{name}/"),
        format!("ep-{NAMESPACE}/{name}/"),
    ];
    let mut check = TableCheck {
        chains: 0,
        rules: 0,
        service_ips: 0,
        has_present: false,
        has_gone: false,
    };
    for item in listing["nftables"].as_array().into_iter().flatten() {
        if item.get("chain").is_some() {
            check.chains += 1;
        }
        if let Some(map) = item.get("map") {
            if map["name"] == "service-ips" {
                check.service_ips = map["elem"].as_array().map_or(0, Vec::len);
            }
        }
        let Some(rule) = item.get("rule") else {
            continue;
        };
        check.rules += 1;
        if !rule["chain"]
            .as_str()
            .is_some_and(|c| prefixes.iter().any(|p| c.starts_with(p.as_str())))
        {
            continue;
        }
        let mut addresses = Vec::new();
        dnat_addresses(&rule["expr"], &mut addresses);
        check.has_present |= addresses.contains(&present.to_string());
        check.has_gone |= addresses.contains(&gone.to_string());
    }
    Ok(check)
}

fn cores() -> String {
    run("nproc", &[])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews
/// every figure).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn kube_proxy() -> Option<String> {
    run("sh", &["-c", "command -v kube-proxy"])
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn inside(args: Args) -> Result<()> {
    let pod = args.pod_netns.clone().context("--pod-netns")?;
    let data_dir = args.data_dir.clone().context("--data-dir")?;
    if args.services == 0 || args.endpoints == 0 || args.connections == 0 {
        bail!("--services, --endpoints and --connections must be at least 1");
    }
    let proxy_config = ProxyConfig::new(BRIDGE);
    let table = proxy_config.table.clone();
    let nft_version = run("nft", &["--version"])?.trim().to_string();
    let kernel = run("uname", &["-r"])?.trim().to_string();
    let build = if cfg!(debug_assertions) {
        "debug (unoptimized: figures are pessimistic)"
    } else {
        "release"
    };
    println!("service-bench settings:");
    println!(
        "  services {}, endpoints/service {} (fake addresses in {CLUSTER_CIDR}, port {POD_PORT}), created by {} concurrent writers",
        args.services, args.endpoints, args.writers
    );
    println!(
        "  changes {} (one endpoint address of a random Service's slice replaced, seed {}), {} ms apart",
        args.changes, args.seed, args.interval_ms
    );
    println!(
        "  load: hyper HTTP/1.1 client, {} connections, {} s per measurement after {} s warm-up, {} round(s), modes: {}; pod server (hyper) {} threads",
        args.connections,
        args.seconds,
        args.warmup,
        args.rounds,
        modes(&args)
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join("; "),
        args.server_threads
    );
    println!(
        "  client sources: the node {HOST_ADDR} (outside the cluster CIDRs: ClusterIP traffic DNATed and masqueraded, as kube-proxy does), a pod address {POD_SOURCE} (in {CLIENT_POD_CIDR}: DNATed only)"
    );
    println!(
        "  1 master in process (API over HTTP on loopback, no controllers), fsync on; proxy table ip {table}, gather {} ms, table check every {} s; cluster CIDRs {CLUSTER_CIDR}, {CLIENT_POD_CIDR}",
        proxy_config.gather.as_millis(),
        proxy_config.resync.as_secs()
    );
    println!(
        "  network namespace {} (pod: {pod}, veth {HOST_ADDR} <-> {POD_ADDR}), cores {}, {nft_version}, kernel {kernel}, {build} build, load average {}",
        run("ip", &["netns", "identify"])
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cores(),
        load_average()
    );
    println!(
        "anchor: kube-proxy nftables mode's sync latency; orch aims at p99 <= 50 ms rule sync at 1,000 Services and <= 10% throughput loss through the ClusterIP"
    );
    match kube_proxy() {
        Some(path) => println!(
            "peer: kube-proxy found at {path}, but this bench does not run it: no peer figures"
        ),
        None => {
            println!("peer: kube-proxy is not installed on this machine: no peer figures measured")
        }
    }
    println!();

    pod_network(&pod)?;
    let ports = modes(&args)
        .iter()
        .flat_map(|m| [m.direct_port, m.service_port])
        .collect();
    start_server(&pod, args.server_threads, ports)?;

    // The master.
    let mut config = ControlPlaneConfig::local(1, data_dir.join("master"));
    config.loops = None;
    let plane = ControlPlane::start_single(config).await.map_err(api)?;
    let client = Client::http(plane.api.addr.to_string());

    // The Services and their slices.
    let created = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..args.writers.max(1) {
        let (client, next) = (client.clone(), next.clone());
        let (services, endpoints) = (args.services, args.endpoints);
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= services {
                    return Ok::<_, anyhow::Error>(written);
                }
                let addresses: Vec<Ipv4Addr> = (0..endpoints)
                    .map(|j| fake_address(i * endpoints + j))
                    .collect();
                written.push((
                    i,
                    create_pair(&client, &service_name(i), &addresses, POD_PORT).await?,
                ));
            }
        }));
    }
    let mut slices: Vec<Option<EndpointSlice>> = vec![None; args.services];
    for writer in writers {
        for (i, written) in writer.await?? {
            slices[i] = Some(written);
        }
    }
    let mut slices: Vec<EndpointSlice> = slices.into_iter().map(|s| s.expect("written")).collect();
    let last_write = slices
        .iter()
        .map(|s| revision_of(&s.metadata))
        .max()
        .unwrap_or(0);
    let creation = created.elapsed();
    println!(
        "created {} Services + {} EndpointSlices in {:.2} s ({:.0} objects/s)",
        args.services,
        args.services,
        creation.as_secs_f64(),
        2.0 * args.services as f64 / creation.as_secs_f64()
    );

    // The proxy, and its first full sync.
    let stop = CancellationToken::new();
    let started = Instant::now();
    let caches = ServiceCaches::start(&client, &stop);
    let cluster = [CLUSTER_CIDR, CLIENT_POD_CIDR]
        .into_iter()
        .map(|c| Cidr::parse(c).with_context(|| format!("cluster CIDR {c}")))
        .collect::<Result<Vec<_>>>()?;
    let (_cluster_tx, cluster_rx) = watch::channel(cluster);
    let slice_cache = caches.slices.clone();
    let proxy = ServiceProxy::new(proxy_config, caches, cluster_rx);
    let mut view = ProxyView {
        table,
        applied: proxy.applied_revision(),
        slice_cache,
    };
    let proxy_task = tokio::spawn(proxy.run(stop.clone()));
    let outcome = measure_all(&args, &client, &mut view, &mut slices, last_write, started).await;
    println!("load average at the end: {}", load_average());
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), proxy_task).await;
    plane.shutdown().await;
    outcome
}

/// What the bench watches of the running proxy.
struct ProxyView {
    /// Its table.
    table: String,
    /// Its applied revision.
    applied: watch::Receiver<u64>,
    /// Its informer's cache of slices.
    slice_cache: Cache<EndpointSlice>,
}

/// Everything measured once the proxy runs.
async fn measure_all(
    args: &Args,
    client: &Client,
    view: &mut ProxyView,
    slices: &mut [EndpointSlice],
    last_write: u64,
    started: Instant,
) -> Result<()> {
    let table = view.table.clone();
    let applied_rx = &mut view.applied;
    applied(applied_rx, last_write, Duration::from_secs(600)).await?;
    let initial = started.elapsed();
    println!(
        "initial sync: {:.1} ms (informers list {} Services + {} slices, full table of {} Service ports / {} endpoints in one nft transaction)",
        initial.as_secs_f64() * 1e3,
        args.services,
        args.services,
        args.services,
        args.services * args.endpoints
    );

    // Sync latency.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut fresh = args.services * args.endpoints;
    let mut from_write = histogram();
    let mut write = histogram();
    let mut watch_delay = histogram();
    let mut proxy_part = histogram();
    let mut last = None;
    for _ in 0..args.changes {
        let i = rng.random_range(0..slices.len());
        let name = service_name(i);
        let mut changed = slices[i].clone();
        let j = rng.random_range(0..changed.endpoints.len());
        let in_slice = |a: &Ipv4Addr| {
            changed
                .endpoints
                .iter()
                .any(|e| e.addresses.contains(&a.to_string()))
        };
        let mut address = fake_address(fresh);
        while in_slice(&address) {
            fresh += 1;
            address = fake_address(fresh);
        }
        fresh += 1;
        let old = std::mem::replace(
            &mut changed.endpoints[j].addresses,
            vec![address.to_string()],
        );
        // Only the bench writes: the next revision the slice informer sees
        // is this write's.
        let next = view.slice_cache.revision() + 1;
        let cache = view.slice_cache.clone();
        let seen = tokio::spawn(async move {
            cache.wait_for_revision(next, Duration::from_secs(30)).await;
            Instant::now()
        });
        let t0 = Instant::now();
        let written = client
            .replace(Some(NAMESPACE), &name, &changed)
            .await
            .map_err(api)
            .with_context(|| format!("updating EndpointSlice {name}"))?;
        let acked = Instant::now();
        let revision = revision_of(&written.metadata);
        applied(applied_rx, revision, Duration::from_secs(30)).await?;
        let done = Instant::now();
        let seen = seen.await?;
        record(&mut from_write, done - t0);
        record(&mut write, acked - t0);
        record(&mut watch_delay, seen.saturating_duration_since(t0));
        record(&mut proxy_part, done.saturating_duration_since(seen));
        slices[i] = written;
        let old: Ipv4Addr = old.first().context("an endpoint address")?.parse()?;
        last = Some((name, address, old));
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    if args.changes > 0 {
        println!();
        println!(
            "{:<58} {:>8} {:>8} {:>8}",
            "sync latency", "p50 ms", "p99 ms", "max ms"
        );
        sync_line(
            &format!(
                "slice write sent -> rules in kernel ({} changes)",
                args.changes
            ),
            &from_write,
        );
        sync_line(
            "  of which: API write (sent -> acknowledged, fsync)",
            &write,
        );
        sync_line("  write sent -> the proxy's informer has it", &watch_delay);
        sync_line(
            "  informer has it -> rules in kernel (gather+compute+nft)",
            &proxy_part,
        );
    }
    let (name, present, gone) = last.unwrap_or_else(|| {
        let first = &slices[0].endpoints[0].addresses[0];
        (
            service_name(0),
            first.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
            Ipv4Addr::UNSPECIFIED,
        )
    });
    let check = check_table(&table, &name, present, gone)?;
    println!(
        "kernel check (nft -j list table ip {table}): {} chains, {} rules, {} service-ips elements; {name} dnats to {present}: {}, to the replaced {gone}: {}",
        check.chains,
        check.rules,
        check.service_ips,
        if check.has_present { "yes" } else { "NO" },
        if check.has_gone { "STILL" } else { "no" },
    );
    if !check.has_present || check.has_gone {
        bail!("the kernel's rules do not hold the last change");
    }

    // Throughput.
    let mut targets = Vec::new();
    for mode in modes(args) {
        let name = format!("bench-{}", mode.slug);
        let written = create_pair(client, &name, &[POD_ADDR], mode.service_port).await?;
        applied(
            applied_rx,
            revision_of(&written.metadata),
            Duration::from_secs(30),
        )
        .await?;
        let service: Service = client.get(Some(NAMESPACE), &name).await.map_err(api)?;
        let cluster_ip: Ipv4Addr = service
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .with_context(|| format!("{name} has no ClusterIP"))?
            .parse()?;
        let direct = SocketAddr::from((POD_ADDR, mode.direct_port));
        let through = SocketAddr::from((cluster_ip, SERVICE_PORT));
        for addr in [direct, through] {
            let (mut sender, _conn) =
                tokio::time::timeout(Duration::from_secs(5), connect(mode.source, addr))
                    .await
                    .with_context(|| format!("connecting to {addr}"))??;
            get(&mut sender, &addr.to_string(), false)
                .await
                .with_context(|| format!("GET http://{addr}/"))?;
        }
        targets.push((mode, name, direct, through));
    }
    println!();
    println!(
        "throughput: {} connections, {} s per measurement after {} s warm-up, {} round(s) (pod IP and ClusterIP alternate which goes first; figures are the rounds' totals)",
        args.connections, args.seconds, args.warmup, args.rounds
    );
    for (mode, name, direct, through) in &targets {
        println!(
            "  {}: from {} to pod IP http://{direct}/ vs ClusterIP http://{through}/ (Service {name} -> {POD_ADDR}:{})",
            mode.name, mode.source, mode.service_port
        );
    }
    println!(
        "{:<48} {:>10} {:>7} {:>7} {:>9} {:>6} {:>7} {:>15}",
        "measurement",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "SYN rtx",
        "ClusterIP/pod"
    );
    for (mode, _, direct, through) in &targets {
        let (mut pod, mut svc) = (Load::new(), Load::new());
        for round in 0..args.rounds {
            if round % 2 == 0 {
                pod.add(&measure(args, mode, *direct).await);
                svc.add(&measure(args, mode, *through).await);
            } else {
                svc.add(&measure(args, mode, *through).await);
                pod.add(&measure(args, mode, *direct).await);
            }
        }
        load_line(&format!("pod IP    {}", mode.name), &pod, None);
        load_line(&format!("ClusterIP {}", mode.name), &svc, Some(&pod));
    }
    Ok(())
}

/// One way of loading the server, with pod ports of its own.
struct Mode {
    keepalive: bool,
    name: &'static str,
    slug: &'static str,
    /// The client's address: the node's (masqueraded on the way to a
    /// ClusterIP) or one in the cluster CIDRs (not masqueraded).
    source: Ipv4Addr,
    /// The port hit directly.
    direct_port: u16,
    /// The port behind the mode's Service.
    service_port: u16,
}

/// The load modes `args` asks for. Each path of each mode has a server
/// port of its own, so one measurement's TIME_WAIT sockets and conntrack
/// entries never collide with another's connections.
fn modes(args: &Args) -> Vec<Mode> {
    let mut modes = vec![(true, "keep-alive, from the node", "keepalive", HOST_ADDR)];
    if !args.keepalive_only {
        modes.push((
            false,
            "new conn/request, from the node",
            "new-conn",
            HOST_ADDR,
        ));
        modes.push((
            false,
            "new conn/request, from a pod address",
            "new-conn-pod",
            POD_SOURCE,
        ));
    }
    modes
        .into_iter()
        .zip((POD_PORT + 1..).step_by(2))
        .map(|((keepalive, name, slug, source), port)| Mode {
            keepalive,
            name,
            slug,
            source,
            direct_port: port,
            service_port: port + 1,
        })
        .collect()
}

fn sync_line(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<58} {:>8.2} {:>8.2} {:>8.2}",
        quantile_ms(h, 0.5),
        quantile_ms(h, 0.99),
        h.max() as f64 / 1000.0
    );
}

fn load_line(name: &str, load: &Load, base: Option<&Load>) {
    let ratio = base
        .map(|b| {
            let r = load.rate() / b.rate();
            format!("{r:.3} ({:+.1}%)", (r - 1.0) * 100.0)
        })
        .unwrap_or_default();
    println!(
        "{name:<48} {:>10.0} {:>7.3} {:>7.3} {:>9.3} {:>6} {:>7} {:>15}",
        load.rate(),
        quantile_ms(&load.latency, 0.5),
        quantile_ms(&load.latency, 0.99),
        load.latency.max() as f64 / 1000.0,
        load.errors,
        load.syn_retransmits,
        ratio
    );
}
