//! The pod network's pieces against the real kernel, as root: a bridge, a
//! pod's veth into a network namespace with its address and default route,
//! masquerading of traffic leaving the cluster (seen by a peer outside),
//! and peer routes replaced and removed. Each test uses address ranges and
//! interface names of its own and removes what it made, also when it fails.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use nix::sched::CloneFlags;
use orch_runtime::net::masquerade::{self, Masquerade};
use orch_runtime::net::routes::{self, PeerRoutes, RouteSet};
use orch_runtime::net::veth::{self, PodInterface};
use orch_runtime::net::{bridge, netlink, nft, sysctl, Cidr};

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace held by a thread of its own, which runs closures
/// inside it; the namespace goes away with the thread (when dropped).
struct Netns {
    path: PathBuf,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Netns {
    fn new() -> Netns {
        let (jobs, incoming) = mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            while let Ok(job) = incoming.recv() {
                job();
            }
        });
        let tid = tid_rx.recv().expect("namespace thread started");
        Netns {
            path: PathBuf::from(format!("/proc/self/task/{tid}/ns/net")),
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// Runs `f` inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .unwrap();
        rx.recv().expect("job ran")
    }

    /// Starts a thread that lives in the namespace and serves `port`: each
    /// connection is answered with the address it came from.
    fn serve_peer_address(&self, port: u16) {
        let listener = self.run(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let peer = stream.peer_addr().map(|a| a.ip().to_string());
                let _ = stream.write_all(peer.unwrap_or_default().as_bytes());
            }
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Deletes the named links of the host when dropped (the test's bridge and
/// veths), also when the test fails.
struct LinkGuard(Vec<String>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let host = netlink::connect().unwrap();
                for name in names {
                    if let Ok(Some(link)) = netlink::link_by_name(&host, &name).await {
                        let _ = host.link().del(link.header.index).execute().await;
                    }
                }
            });
        })
        .join()
        .unwrap();
    }
}

/// Deletes an nftables table when dropped.
struct TableGuard(String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        let table = self.0.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { nft::remove_table(&table).await })
        })
        .join()
        .unwrap()
        .unwrap();
    }
}

/// A short name unique to this process and `tag` (Linux allows 15 bytes).
fn ifname(tag: &str) -> String {
    format!("ot{}{tag}", std::process::id() % 100_000)
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Connects to `addr` (from the calling thread's namespace) and returns
/// what the server answered.
fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[path = "../../tests/src/veth_link.rs"]
mod veth_link;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_namespace_gets_a_veth_an_address_and_a_default_route() {
    let br = ifname("b");
    let pod_veth = ifname("v");
    let _links = LinkGuard(vec![br.clone(), pod_veth.clone()]);
    let host = netlink::connect().unwrap();
    let gateway = Ipv4Addr::new(10, 231, 0, 1);
    let index = bridge::ensure(&host, &br, gateway, 24).await.unwrap();
    assert_eq!(
        bridge::ensure(&host, &br, gateway, 24).await.unwrap(),
        index,
        "ensuring twice finds the same bridge"
    );
    assert!(bridge::has_address(&host, index, gateway, 24)
        .await
        .unwrap());

    let pod = Netns::new();
    let interface = PodInterface {
        netns: pod.path.clone(),
        host_name: pod_veth.clone(),
        address: Ipv4Addr::new(10, 231, 0, 2),
        prefix: 24,
        gateway,
    };
    veth::attach(&host, index, &interface).await.unwrap();
    veth::attach(&host, index, &interface)
        .await
        .expect("attaching again changes nothing");
    let link = netlink::link_by_name(&host, &pod_veth)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(netlink::link_controller(&link), Some(index));

    // The host reaches the pod through the bridge.
    pod.serve_peer_address(8080);
    let seen = fetch("10.231.0.2:8080".parse().unwrap()).unwrap();
    assert_eq!(seen, "10.231.0.1", "the host's address on the bridge");

    // The pod reaches an address beyond the bridge through its default
    // route: the host's own listener on another address of the host.
    let host_addr = {
        let local = routes::local_addresses(&host).await.unwrap();
        *local
            .iter()
            .find(|ip| !ip.is_loopback() && !ip.octets().starts_with(&[10, 231]))
            .expect("the host has an address besides loopback and the bridge")
    };
    let listener = TcpListener::bind((host_addr, 0)).unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, peer)) = listener.accept() {
            let _ = s.write_all(peer.ip().to_string().as_bytes());
        }
    });
    let seen = pod.run(move || fetch(target)).unwrap();
    assert_eq!(seen, "10.231.0.2", "the pod's own address, not masqueraded");

    assert!(veth::detach(&host, &pod_veth).await.unwrap());
    assert!(!exists(&pod_veth));
    assert!(!veth::detach(&host, &pod_veth).await.unwrap());
    let inside = netlink::connect_in(&pod.path).await.unwrap();
    assert!(netlink::link_by_name(&inside, "eth0")
        .await
        .unwrap()
        .is_none());
    assert!(bridge::delete(&host, &br).await.unwrap());
    assert!(!exists(&br));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_leaving_the_cluster_is_masqueraded() {
    let br = ifname("b");
    let pod_veth = ifname("v");
    let out = ifname("o");
    let _links = LinkGuard(vec![br.clone(), pod_veth.clone(), out.clone()]);
    let table = masquerade::table_name(&br);
    let _table = TableGuard(table.clone());
    sysctl::enable_ip_forward().unwrap();
    let host = netlink::connect().unwrap();
    let gateway = Ipv4Addr::new(10, 232, 0, 1);
    let index = bridge::ensure(&host, &br, gateway, 24).await.unwrap();
    let pod = Netns::new();
    veth::attach(
        &host,
        index,
        &PodInterface {
            netns: pod.path.clone(),
            host_name: pod_veth.clone(),
            address: Ipv4Addr::new(10, 232, 0, 2),
            prefix: 24,
            gateway,
        },
    )
    .await
    .unwrap();
    // Something outside the cluster, behind the host.
    let outside = Netns::new();
    veth_link::link_to_namespace(
        &host,
        &out,
        &outside.path,
        Ipv4Addr::new(198, 18, 232, 1),
        Ipv4Addr::new(198, 18, 232, 2),
    )
    .await;
    outside.serve_peer_address(8080);

    let rules = Masquerade {
        table: table.clone(),
        pod_cidr: Cidr::parse("10.232.0.0/24").unwrap(),
        cluster: vec![Cidr::parse("10.232.0.0/16").unwrap()],
    };
    rules.apply().await.unwrap();
    rules.apply().await.expect("applying again is fine");
    let listing = nft::list_table(&table)
        .await
        .unwrap()
        .expect("table exists");
    assert!(listing.contains("masquerade"), "{listing}");
    assert_eq!(listing.matches("\"rule\"").count(), 1, "{listing}");

    let seen = pod
        .run(|| fetch("198.18.232.2:8080".parse().unwrap()))
        .unwrap();
    assert_eq!(
        seen, "198.18.232.1",
        "the pod's traffic leaves with the host's address"
    );

    nft::remove_table(&table).await.unwrap();
    assert!(nft::list_table(&table).await.unwrap().is_none());
    nft::remove_table(&table)
        .await
        .expect("removing a missing table is fine");
}

async fn route_via(host: &rtnetlink::Handle, destination: Cidr) -> Option<Ipv4Addr> {
    routes::gateway_of(host, destination).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_routes_are_replaced_and_removed_after_a_restart() {
    let link = ifname("r");
    let _links = LinkGuard(vec![link.clone()]);
    let host = netlink::connect().unwrap();
    let peers = Netns::new();
    veth_link::link_to_namespace(
        &host,
        &link,
        &peers.path,
        Ipv4Addr::new(198, 18, 233, 1),
        Ipv4Addr::new(198, 18, 233, 2),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("routes.json");
    let other = Cidr::parse("10.233.7.0/24").unwrap();
    let gone = Cidr::parse("10.233.8.0/24").unwrap();

    let mut routes = PeerRoutes::open(host.clone(), &state).unwrap();
    let mut want = RouteSet::new();
    want.insert(other, Ipv4Addr::new(198, 18, 233, 2));
    want.insert(gone, Ipv4Addr::new(198, 18, 233, 2));
    let report = routes.sync(&want, false).await.unwrap();
    assert_eq!(report.replaced.len(), 2, "{report:?}");
    assert_eq!(
        route_via(&host, other).await,
        Some(Ipv4Addr::new(198, 18, 233, 2))
    );

    // The node's address changes: the route is replaced.
    want.insert(other, Ipv4Addr::new(198, 18, 233, 3));
    let report = routes.sync(&want, false).await.unwrap();
    assert_eq!(
        report.replaced,
        vec![(other, Ipv4Addr::new(198, 18, 233, 3))]
    );
    assert_eq!(
        route_via(&host, other).await,
        Some(Ipv4Addr::new(198, 18, 233, 3))
    );

    // A gateway that is not reachable is reported, not fatal.
    let mut unreachable = want.clone();
    unreachable.insert(
        Cidr::parse("10.233.9.0/24").unwrap(),
        Ipv4Addr::new(203, 0, 113, 9),
    );
    let report = routes.sync(&unreachable, false).await.unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");

    // A new agent over the same state removes what the old one made and
    // is no longer wanted.
    drop(routes);
    let mut routes = PeerRoutes::open(host.clone(), &state).unwrap();
    assert_eq!(routes.installed().len(), 2);
    want.remove(&gone);
    let report = routes.sync(&want, true).await.unwrap();
    assert_eq!(report.deleted, vec![(gone, Ipv4Addr::new(198, 18, 233, 2))]);
    assert_eq!(route_via(&host, gone).await, None);
    routes.sync(&RouteSet::new(), false).await.unwrap();
    assert_eq!(route_via(&host, other).await, None);
}

/// Not a check: prints how long giving a pod its network takes (address,
/// veth pair into its namespace, eth0 address and route) and taking it
/// away, over `ORCH_NET_PODS` (100) namespaces. Run with
/// `cargo nextest run -p orch-runtime --test net --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn attach_and_detach_latency() {
    let pods: usize = std::env::var("ORCH_NET_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let br = ifname("b");
    let mut names: Vec<String> = (0..pods)
        .map(|i| format!("ot{}x{i}", std::process::id() % 10_000))
        .collect();
    names.push(br.clone());
    let _links = LinkGuard(names.clone());
    let host = netlink::connect().unwrap();
    let cidr = orch_runtime::net::cidr::parse_pod_cidr("10.234.0.0/16").unwrap();
    let gateway = orch_runtime::net::cidr::gateway(&cidr);
    let index = bridge::ensure(&host, &br, gateway, 16).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ipam = orch_runtime::net::ipam::Ipam::open(dir.path()).unwrap();
    let namespaces: Vec<Netns> = (0..pods).map(|_| Netns::new()).collect();
    let mut attach = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let started = std::time::Instant::now();
        let uid = format!("pod-{i}");
        let address = ipam.allocate(&cidr, &uid).unwrap();
        veth::attach(
            &host,
            index,
            &PodInterface {
                netns: ns.path.clone(),
                host_name: names[i].clone(),
                address,
                prefix: cidr.prefix,
                gateway,
            },
        )
        .await
        .unwrap();
        attach.push(started.elapsed());
    }
    let mut detach = Vec::new();
    for (i, name) in names.iter().take(pods).enumerate() {
        let started = std::time::Instant::now();
        veth::detach(&host, name).await.unwrap();
        ipam.release(&format!("pod-{i}")).unwrap();
        detach.push(started.elapsed());
    }
    for (what, mut all) in [("attach", attach), ("detach", detach)] {
        all.sort();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        println!(
            "{what}: {} pods, p50 {:?}, p99 {:?}, max {:?}",
            all.len(),
            at(0.5),
            at(0.99),
            all[all.len() - 1]
        );
    }
}
