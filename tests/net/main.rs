//! The pod network end to end, as root: a real control plane (node IPAM
//! gives the node its pod CIDR), an `orch-agent` process with
//! `--pod-network=bridge` and a bridge of its own, busybox pods reaching
//! each other and reached from the host by their addresses, addresses kept
//! across an agent restart and never handed out twice, released with the
//! pod's veth when it is deleted; routes to other Nodes' pod CIDRs
//! following those Nodes; pod traffic leaving the cluster masqueraded.
//!
//! Each test has a cluster CIDR, a bridge and an nftables table of its own
//! and removes them when it ends, also when it fails.

mod two_nodes;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::sched::CloneFlags;
use orch_core::controller::LoopSettings;
use orch_runtime::net::{masquerade, netlink, nft, routes, service_rules, veth, Cidr};
use orch_tests::agent::TestNode;
use orch_tests::api::TestApi;
use orch_tests::wait_until;
use serde_json::Value;

/// The token the agents' API requires of the API server (exec).
const AGENT_TOKEN: &str = "net-agent-token";

/// Runs `f` on a thread of its own with a runtime of its own (for Drop).
fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}

/// Removes the test's links and nftables table when dropped.
struct NetGuard {
    links: Vec<String>,
    tables: Vec<String>,
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        let links = std::mem::take(&mut self.links);
        let tables = self.tables.clone();
        block_on(async move {
            let host = netlink::connect().unwrap();
            for name in links {
                if let Ok(Some(link)) = netlink::link_by_name(&host, &name).await {
                    let _ = host.link().del(link.header.index).execute().await;
                }
            }
            for table in tables {
                if let Err(e) = nft::remove_table(&table).await {
                    eprintln!("removing table {table}: {e}");
                }
            }
        });
    }
}

/// A control plane with its own cluster CIDR and one agent with a bridge
/// of its own. Fields drop in order: the agent (and its pods) first.
struct NetRig {
    node: TestNode,
    api: TestApi,
    bridge: String,
    guard: NetGuard,
}

/// A name unique to this process and `tag` (at most 15 bytes).
fn ifname(tag: &str) -> String {
    format!("on{}{tag}", std::process::id() % 100_000)
}

impl NetRig {
    /// Starts a control plane whose cluster CIDR is `cluster_cidr` and
    /// agent `n1` on bridge `on<pid>b`; waits until the node is Ready.
    async fn start(cluster_cidr: &str) -> NetRig {
        let bridge = ifname("b");
        let guard = NetGuard {
            links: vec![bridge.clone()],
            tables: vec![
                masquerade::table_name(&bridge),
                service_rules::table_name(&bridge),
            ],
        };
        let cluster_cidr = cluster_cidr.to_string();
        let api = TestApi::start_with(move |c| {
            c.loops = Some(LoopSettings {
                cluster_cidr,
                ..LoopSettings::default()
            });
            c.agent_token = Some(AGENT_TOKEN.to_string());
        })
        .await;
        let token_file = api.path("agent-token");
        std::fs::write(&token_file, AGENT_TOKEN).unwrap();
        let node = TestNode::start(
            &api,
            "n1",
            &[
                "--agent-token-file",
                token_file.to_str().unwrap(),
                "--pod-network",
                "bridge",
                "--bridge-name",
                &bridge,
                // Agents of parallel tests share the host's port 80.
                "--no-ingress",
            ],
        );
        let rig = NetRig {
            node,
            api,
            bridge,
            guard,
        };
        rig.wait_node_ready().await;
        rig
    }

    async fn wait_node_ready(&self) {
        self.api.wait_node_ready("n1").await;
    }

    async fn apply(&self, manifest: &str) {
        let path = self
            .api
            .path(&format!("manifest-{}.yaml", rand::random::<u32>()));
        std::fs::write(&path, manifest).unwrap();
        self.api
            .kubectl_ok(&["apply", "-f", path.to_str().unwrap()])
            .await;
    }

    async fn pod(&self, name: &str) -> Option<Value> {
        let out = self.api.kubectl(&["get", "pod", name, "-o", "json"]).await;
        out.success
            .then(|| serde_json::from_str(&out.stdout).expect("kubectl prints JSON"))
    }

    /// Waits until pod `name` is Running with an address; returns it.
    async fn running_pod(&self, name: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut last = Value::Null;
        while std::time::Instant::now() < deadline {
            if let Some(pod) = self.pod(name).await {
                if pod["status"]["phase"] == "Running" && pod["status"]["podIP"].is_string() {
                    return pod;
                }
                last = pod;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = self.node.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "pod {name} not Running with an IP: {last:#}\nagent log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// The node's pod CIDR.
    async fn pod_cidr(&self) -> Cidr {
        let text = self
            .api
            .kubectl_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDR}"])
            .await;
        Cidr::parse(&text).unwrap_or_else(|| panic!("node n1 has no podCIDR: {text:?}"))
    }

    /// The agent's address records: address -> pod uid.
    fn ip_records(&self) -> Vec<(String, String)> {
        let dir = self.node.dir.path().join("network/ips");
        let mut all: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().unwrap().parse::<Ipv4Addr>().is_ok())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path())
                        .unwrap()
                        .trim()
                        .to_string(),
                )
            })
            .collect();
        all.sort();
        all
    }
}

fn ip_of(pod: &Value) -> Ipv4Addr {
    pod["status"]["podIP"].as_str().unwrap().parse().unwrap()
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap().to_string()
}

fn net_dir(name: &str) -> PathBuf {
    Path::new("/sys/class/net").join(name)
}

/// A pod serving `/tmp/www/index.html` ("hello from NAME") on port 8080,
/// with its own address in `$MY_IP`.
fn web_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /tmp/www && echo hello from {name} > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
    env:
    - name: MY_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
"#
    )
}

fn sleeper(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#
    )
}

/// `GET /` of `addr` from the host: the body.
async fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    http_get_path(addr, "/").await.map(|(_, body)| body)
}

/// `GET path` of `addr` from the host: the status line and the body.
async fn http_get_path(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    let status = response.lines().next().unwrap_or_default().to_string();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(response);
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_get_addresses_reach_each_other_and_keep_them_across_restarts() {
    let mut rig = NetRig::start("10.211.0.0/16").await;
    rig.apply(&web_pod("web")).await;
    rig.apply(&sleeper("client")).await;
    let web = rig.running_pod("web").await;
    let client = rig.running_pod("client").await;
    let cidr = rig.pod_cidr().await;
    let (web_ip, client_ip) = (ip_of(&web), ip_of(&client));
    assert_ne!(web_ip, client_ip);
    for ip in [web_ip, client_ip] {
        assert!(
            orch_runtime::net::cidr::contains(&cidr, ip),
            "{ip} is not in the node's pod CIDR {cidr}"
        );
        assert_ne!(ip, orch_runtime::net::cidr::gateway(&cidr), "the gateway");
    }
    assert_eq!(web["status"]["podIPs"][0]["ip"], web_ip.to_string());
    let node_ip = rig.api.node_internal_ip("n1").await;
    assert_eq!(web["status"]["hostIP"], node_ip.as_str());

    // The container's environment has its address (fieldRef status.podIP).
    let env_ip = rig
        .api
        .kubectl_ok(&["exec", "web", "--", "sh", "-c", "echo $MY_IP"])
        .await;
    assert_eq!(env_ip.trim(), web_ip.to_string());
    // Its eth0 has it, with the default route via the bridge.
    let ip_addr = rig
        .api
        .kubectl_ok(&["exec", "web", "--", "ip", "-4", "addr", "show", "eth0"])
        .await;
    assert!(
        ip_addr.contains(&format!("{web_ip}/{}", cidr.prefix)),
        "{ip_addr}"
    );
    let route = rig
        .api
        .kubectl_ok(&["exec", "web", "--", "ip", "route"])
        .await;
    assert!(
        route.contains(&format!(
            "default via {}",
            orch_runtime::net::cidr::gateway(&cidr)
        )),
        "{route}"
    );

    // Pod to pod, by address.
    let url = format!("http://{web_ip}:8080/");
    let fetched = rig
        .api
        .kubectl_ok(&["exec", "client", "--", "wget", "-q", "-O", "-", &url])
        .await;
    assert_eq!(fetched, "hello from web\n");
    // Host to pod.
    let addr = SocketAddr::from((web_ip, 8080));
    assert_eq!(http_get(addr).await.unwrap(), "hello from web\n");

    // Each pod's veth is on the test's bridge; one record per address.
    for pod in [&web, &client] {
        let veth = veth::host_name(&uid_of(pod));
        let master = std::fs::read_link(net_dir(&veth).join("master"))
            .unwrap_or_else(|e| panic!("{veth} has no master: {e}"));
        assert!(
            master.ends_with(&rig.bridge),
            "{veth} -> {}",
            master.display()
        );
    }
    let mut expected = vec![
        (web_ip.to_string(), uid_of(&web)),
        (client_ip.to_string(), uid_of(&client)),
    ];
    expected.sort();
    assert_eq!(rig.ip_records(), expected);
    // The masquerade table names the node's pod CIDR.
    let table = block_on({
        let t = masquerade::table_name(&rig.bridge);
        async move { nft::list_table(&t).await }
    })
    .unwrap()
    .expect("the agent made its masquerade table");
    assert!(table.contains("masquerade"), "{table}");
    assert!(
        table.contains(&orch_runtime::net::cidr::network(&cidr).to_string()),
        "{table}"
    );

    // A restarted agent (SIGKILL) keeps the running pods' addresses and
    // never hands one out twice.
    rig.node.restart();
    rig.wait_node_ready().await;
    rig.apply(&sleeper("third")).await;
    let third = rig.running_pod("third").await;
    let third_ip = ip_of(&third);
    assert!(
        third_ip != web_ip && third_ip != client_ip,
        "{third_ip} handed out twice"
    );
    assert_eq!(ip_of(&rig.running_pod("web").await), web_ip);
    assert_eq!(ip_of(&rig.running_pod("client").await), client_ip);
    let fetched = rig
        .api
        .kubectl_ok(&["exec", "third", "--", "wget", "-q", "-O", "-", &url])
        .await;
    assert_eq!(fetched, "hello from web\n");
    assert_eq!(rig.ip_records().len(), 3);

    // Deleting a pod releases its address and removes its veth.
    let web_veth = veth::host_name(&uid_of(&web));
    rig.api
        .kubectl_ok(&["delete", "pod", "web", "--wait=true"])
        .await;
    wait_until("web's veth gone", Duration::from_secs(10), || async {
        (!net_dir(&web_veth).exists()).then_some(())
    })
    .await;
    let records = rig.ip_records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|(ip, _)| *ip != web_ip.to_string()));
    assert!(http_get(addr).await.is_err(), "web still answers");
    // The others still talk through the bridge.
    let client_veth = veth::host_name(&uid_of(&client));
    assert!(net_dir(&client_veth).exists());
}

/// A network namespace held by a thread of its own (something outside
/// the cluster, behind the host); the namespace goes with the thread.
struct Outside {
    path: PathBuf,
    jobs: Option<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl Outside {
    fn new() -> Outside {
        let (jobs, incoming) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            while let Ok(job) = incoming.recv() {
                job();
            }
        });
        let tid = tid_rx.recv().unwrap();
        Outside {
            path: PathBuf::from(format!("/proc/self/task/{tid}/ns/net")),
            jobs: Some(jobs),
        }
    }

    /// Serves `port` inside the namespace: each connection is answered with
    /// the address it came from.
    fn serve_peer_address(&self, port: u16) {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move || {
                let _ = tx.send(TcpListener::bind(("0.0.0.0", port)).unwrap());
            }))
            .unwrap();
        let listener = rx.recv().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let peer = stream.peer_addr().map(|a| a.ip().to_string());
                let _ = stream.write_all(peer.unwrap_or_default().as_bytes());
            }
        });
    }

    /// Connects the namespace to the host: veth `name` with `host_ip/24`
    /// on the host, `eth0` with `peer_ip/24` inside.
    async fn link(&self, name: &str, host_ip: Ipv4Addr, peer_ip: Ipv4Addr) {
        let host = netlink::connect().unwrap();
        orch_tests::veth_link::link_to_namespace(&host, name, &self.path, host_ip, peer_ip).await;
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.jobs.take();
    }
}

/// Fetches `addr` from inside pod `pod` with busybox `nc`: what the server
/// answered.
async fn fetch_from_pod(rig: &NetRig, pod: &str, addr: SocketAddr) -> String {
    let out = rig
        .api
        .kubectl(&[
            "exec",
            pod,
            "--",
            "sh",
            "-c",
            &format!("nc -w 3 {} {} </dev/null", addr.ip(), addr.port()),
        ])
        .await;
    assert!(out.success, "nc from {pod}: {}", out.stderr);
    out.stdout
}

async fn route_via(destination: Cidr) -> Option<Ipv4Addr> {
    block_on(async move {
        let host = netlink::connect().unwrap();
        routes::gateway_of(&host, destination).await.unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_follow_other_nodes_and_traffic_leaving_the_cluster_is_masqueraded() {
    let mut rig = NetRig::start("10.212.0.0/16").await;
    let out = ifname("o");
    rig.guard.links.push(out.clone());
    let outside = Outside::new();
    outside
        .link(
            &out,
            Ipv4Addr::new(198, 18, 212, 1),
            Ipv4Addr::new(198, 18, 212, 2),
        )
        .await;
    outside.serve_peer_address(9000);

    // Another node of the cluster, behind the outside link.
    let peer_cidr = Cidr::parse("10.212.200.0/24").unwrap();
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "peer"},
        "spec": {"podCIDR": peer_cidr.to_string(), "podCIDRs": [peer_cidr.to_string()]},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.212.2"}]},
    });
    let created = rig
        .api
        .kubectl_fed(&["create", "-f", "-"], node.to_string().as_bytes())
        .await;
    assert!(created.success, "{}", created.stderr);
    wait_until(
        "route to the peer's pods",
        Duration::from_secs(10),
        || async {
            (route_via(peer_cidr).await == Some(Ipv4Addr::new(198, 18, 212, 2))).then_some(())
        },
    )
    .await;

    // Its address changes: the route follows.
    let patch = r#"{"status":{"addresses":[{"type":"InternalIP","address":"198.18.212.3"}]}}"#;
    rig.api
        .kubectl_ok(&[
            "patch",
            "node",
            "peer",
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ])
        .await;
    wait_until("route replaced", Duration::from_secs(10), || async {
        (route_via(peer_cidr).await == Some(Ipv4Addr::new(198, 18, 212, 3))).then_some(())
    })
    .await;

    // A pod reaching outside the cluster leaves with the node's address.
    rig.apply(&sleeper("egress")).await;
    let egress = rig.running_pod("egress").await;
    let seen = fetch_from_pod(&rig, "egress", "198.18.212.2:9000".parse().unwrap()).await;
    assert_eq!(
        seen,
        "198.18.212.1",
        "pod {} was not masqueraded",
        ip_of(&egress)
    );

    // The node goes: so does the route (also across an agent restart).
    rig.node.restart();
    rig.wait_node_ready().await;
    rig.api.kubectl_ok(&["delete", "node", "peer"]).await;
    wait_until("route removed", Duration::from_secs(10), || async {
        route_via(peer_cidr).await.is_none().then_some(())
    })
    .await;
    drop(outside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_network_pods_use_the_nodes_network() {
    let rig = NetRig::start("10.213.0.0/16").await;
    let port = {
        // A free port of the host for the pod to listen on.
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    rig.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: hostnet
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /tmp/www && echo on the host > /tmp/www/index.html && exec httpd -f -p {port} -h /tmp/www"]
"#
    ))
    .await;
    let pod = rig.running_pod("hostnet").await;
    let node_ip = rig.api.node_internal_ip("n1").await;
    assert_eq!(
        pod["status"]["podIP"],
        node_ip.as_str(),
        "the node's address"
    );
    assert_eq!(pod["status"]["podIPs"][0]["ip"], node_ip.as_str());
    // No veth, no address taken from the pod CIDR.
    assert!(!net_dir(&veth::host_name(&uid_of(&pod))).exists());
    assert!(rig.ip_records().is_empty());
    // It listens in the host's namespace, under the host's name.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(http_get(addr).await.unwrap(), "on the host\n");
    let hostname = rig
        .api
        .kubectl_ok(&["exec", "hostnet", "--", "hostname"])
        .await;
    let host = nix::unistd::gethostname().unwrap();
    assert_eq!(hostname.trim(), host.to_string_lossy());
    rig.api
        .kubectl_ok(&["delete", "pod", "hostnet", "--wait=true"])
        .await;
    assert!(http_get(addr).await.is_err(), "still served after deletion");
    // Nothing of the pod is left on the host (a moment is allowed for a
    // busy host; what is left is named if it stays).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = rig.node.leftovers();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let log = rig.node.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "left on the host: {left:?}\nagent log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
