//! Services across two nodes, each an `orch-agent` in a network namespace
//! of its own (`ip netns`, a veth to a bridge of the test in the host's
//! namespace: two hosts on one L2 segment), with a real control plane
//! listening on the bridge's address. What a user checks: pods reach
//! pods of the other node by address; a Service of three busybox httpd
//! replicas spread over both nodes is reached by ClusterIP and by DNS
//! name from a client pod and 300 requests hit all three; scaling to one
//! replica drops no request; NodePort reaches the Service from the host;
//! an Ingress routes `/a` and `/b` to two Services; a NodePort conflict
//! is refused and disturbs no other Service's rules; deleting a Service
//! removes every rule it made (`nft list table`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use orch_core::controller::LoopSettings;
use orch_tests::agent::TestNode;
use orch_tests::api::TestApi;
use orch_tests::wait_until;
use serde_json::Value;

use super::{http_get, http_get_path, ifname, AGENT_TOKEN};

/// The test's hosts' segment; the host's side of it is `.1`.
const SEGMENT: [u8; 3] = [10, 251, 0];
const CLUSTER_CIDR: &str = "10.252.0.0/16";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's bridge and network namespaces; removed when dropped.
struct Hosts {
    bridge: String,
    namespaces: Vec<String>,
}

impl Hosts {
    fn new() -> Hosts {
        let bridge = ifname("t");
        let hosts = Hosts {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let gateway = Self::address(1);
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        hosts
    }

    fn address(host: u8) -> Ipv4Addr {
        Ipv4Addr::new(SEGMENT[0], SEGMENT[1], SEGMENT[2], host)
    }

    /// A new host `.n` of the segment: a namespace with `eth0` on the
    /// bridge and a default route through the host's side.
    fn add(&mut self, n: u8) -> (String, Ipv4Addr) {
        let ns = format!("orch{}-{n}", std::process::id());
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        let outside = ifname(&format!("v{n}"));
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &outside, "master", &self.bridge, "up"]);
        let address = Self::address(n);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &Self::address(1).to_string(),
        ]);
        (ns, address)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// The cluster. Fields drop in order: agents (and their pods) first, then
/// the control plane, then the namespaces and the bridge.
struct Cluster {
    nodes: Vec<(TestNode, String, Ipv4Addr)>,
    api: TestApi,
    _hosts: Hosts,
}

impl Cluster {
    async fn start() -> Cluster {
        let mut hosts = Hosts::new();
        let (ns_a, ip_a) = hosts.add(10);
        let (ns_b, ip_b) = hosts.add(11);
        let api = TestApi::start_with(|c| {
            c.api_addr = SocketAddr::from((Hosts::address(1), 0));
            c.loops = Some(LoopSettings {
                cluster_cidr: CLUSTER_CIDR.to_string(),
                ..LoopSettings::default()
            });
            c.agent_token = Some(AGENT_TOKEN.to_string());
        })
        .await;
        let token_file = api.path("agent-token");
        std::fs::write(&token_file, AGENT_TOKEN).unwrap();
        let token = token_file.to_str().unwrap().to_string();
        let args = ["--agent-token-file", &token, "--pod-network", "bridge"];
        let nodes = vec![
            (
                TestNode::start_in_netns(&api.addr, &ns_a, "node-a", &args),
                ns_a,
                ip_a,
            ),
            (
                TestNode::start_in_netns(&api.addr, &ns_b, "node-b", &args),
                ns_b,
                ip_b,
            ),
        ];
        let cluster = Cluster {
            nodes,
            api,
            _hosts: hosts,
        };
        for node in ["node-a", "node-b"] {
            cluster.api.wait_node_ready(node).await;
        }
        cluster
    }

    async fn apply(&self, manifest: &str) {
        let out = self
            .api
            .kubectl_fed(&["apply", "-f", "-"], manifest.as_bytes())
            .await;
        assert!(out.success, "kubectl apply: {}", out.stderr);
    }

    /// Runs `script` with busybox `sh` in pod `client`: its output.
    async fn in_client(&self, script: &str) -> String {
        let out = self
            .api
            .kubectl(&["exec", "client", "--", "sh", "-c", script])
            .await;
        assert!(
            out.success,
            "exec {script}: {}\n{}",
            out.stderr,
            self.diagnostics()
        );
        out.stdout
    }

    /// The nodes' addresses, routes and nftables rules, for failure
    /// messages.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        for (node, ns, _) in &self.nodes {
            for args in [
                vec!["-n", ns.as_str(), "-br", "addr"],
                vec!["-n", ns.as_str(), "route"],
                vec!["netns", "exec", ns.as_str(), "nft", "list", "ruleset"],
            ] {
                let out = Command::new("ip").args(&args).output().expect("ip runs");
                text.push_str(&format!(
                    "--- {} ip {}\n{}{}",
                    node.name,
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let log = node.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!(
                "--- {} agent log\n{}\n",
                node.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        text
    }

    /// `nft list table ip orch0-svc` on node `index`.
    fn service_rules(&self, index: usize) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.nodes[index].1])
            .args(["nft", "list", "table", "ip", "orch0-svc"])
            .output()
            .expect("nft runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `n` pods labelled `app=web` are Running and Ready with
    /// an address; returns name -> (node, IP).
    async fn web_pods(&self, n: usize) -> BTreeMap<String, (String, String)> {
        wait_until(
            &format!("{n} web pods Ready"),
            Duration::from_secs(90),
            || async {
                let out = self
                    .api
                    .kubectl(&["get", "pods", "-l", "app=web", "-o", "json"])
                    .await;
                let list: Value = serde_json::from_str(&out.stdout).ok()?;
                let ready: BTreeMap<String, (String, String)> = list["items"]
                    .as_array()?
                    .iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .filter(|p| {
                        p["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                    .filter_map(|p| {
                        Some((
                            p["metadata"]["name"].as_str()?.to_string(),
                            (
                                p["spec"]["nodeName"].as_str()?.to_string(),
                                p["status"]["podIP"].as_str()?.to_string(),
                            ),
                        ))
                    })
                    .collect();
                (ready.len() == n).then_some(ready)
            },
        )
        .await
    }
}

/// Three replicas spread over the nodes, each answering its own name on
/// port 8080; on SIGTERM a replica keeps serving for 2 s (as a preStop
/// sleep would), so a scale-down drops nothing.
const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 10
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: web}
      containers:
      - name: httpd
        image: busybox:latest
        imagePullPolicy: Never
        ports:
        - {name: http, containerPort: 8080}
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && trap 'sleep 2; exit 0' TERM; httpd -f -p 8080 -h /www & wait; wait"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata:
  name: web-sticky
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata:
  name: web-headless
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - {name: http, port: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: web-np
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080, nodePort: 30777}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: node-a}
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#;

/// Two Services, `a` and `b`, each of one busybox httpd answering
/// "from a" or "from b" under `/a/` or `/b/`; an Ingress routing `/a` and
/// `/b` to them, and one routing `/nope` to a Service that does not exist.
const ECHO: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: echo-a
  labels: {app: echo-a}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www/a && echo from a > /www/a/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-b
  labels: {app: echo-b}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www/b && echo from b > /www/b/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata:
  name: a
spec:
  selector: {app: echo-a}
  ports:
  - {port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: b
spec:
  selector: {app: echo-b}
  ports:
  - {port: 80, targetPort: 8080}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: routes
spec:
  rules:
  - http:
      paths:
      - {path: /a, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
      - {path: /b, pathType: Prefix, backend: {service: {name: b, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: broken
spec:
  rules:
  - http:
      paths:
      - {path: /nope, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}
"#;

/// A rules listing without the running timers of affinity entries
/// (`expires 2h59m55s`), which change by themselves.
fn without_timers(rules: &str) -> String {
    let mut out = Vec::new();
    let mut words = rules.split(' ');
    while let Some(word) = words.next() {
        if word == "expires" {
            // Drop the timer; keep what followed it on the same token.
            if let Some(timer) = words.next() {
                let rest: String = timer
                    .chars()
                    .skip_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                out.push(rest);
            }
            continue;
        }
        out.push(word.to_string());
    }
    out.join(" ")
}

/// Counts the lines of `output` per distinct line.
fn tally(output: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_balance_across_two_nodes_in_their_own_network_namespaces() {
    let cluster = Cluster::start().await;
    cluster.apply(WEB).await;
    let pods = cluster.web_pods(3).await;
    let nodes: std::collections::BTreeSet<&str> =
        pods.values().map(|(node, _)| node.as_str()).collect();
    assert_eq!(nodes.len(), 2, "replicas spread over both nodes: {pods:?}");
    wait_until("client Running", Duration::from_secs(60), || async {
        let phase = cluster
            .api
            .jsonpath("pod", "client", "default", "{.status.phase}")
            .await;
        (phase == "Running").then_some(())
    })
    .await;

    // Pod to pod across nodes, by address.
    let (remote_name, (_, remote_ip)) = pods
        .iter()
        .find(|(_, (node, _))| node == "node-b")
        .expect("a replica on node-b");
    let answer = cluster
        .in_client(&format!("timeout 5 wget -qO- http://{remote_ip}:8080/"))
        .await;
    assert_eq!(answer.trim(), remote_name, "pod on node-a to pod on node-b");

    // ClusterIP: 300 requests reach all three replicas.
    let cluster_ip = cluster
        .api
        .jsonpath("service", "web", "default", "{.spec.clusterIP}")
        .await;
    wait_until(
        "the Service's rules on node-a",
        Duration::from_secs(20),
        || async { cluster.service_rules(0).contains(&cluster_ip).then_some(()) },
    )
    .await;
    let started = Instant::now();
    let out = cluster
        .in_client(&format!(
            "for i in $(seq 300); do timeout 5 wget -qO- http://{cluster_ip}/ || echo FAILED; done"
        ))
        .await;
    let counts = tally(&out);
    println!(
        "300 requests through ClusterIP {cluster_ip} in {:.2?}: {counts:?}",
        started.elapsed()
    );
    assert!(!counts.contains_key("FAILED"), "{counts:?}");
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        pods.keys().cloned().collect::<Vec<_>>(),
        "every replica answers"
    );

    // sessionAffinity ClientIP: one client keeps its replica.
    let out = cluster
        .in_client(
            "for i in $(seq 30); do timeout 5 wget -qO- http://web-sticky/ || echo FAILED; done",
        )
        .await;
    let counts = tally(&out);
    println!("30 requests to the ClientIP-affine Service: {counts:?}");
    assert_eq!(
        counts.len(),
        1,
        "one replica answers a sticky client: {counts:?}"
    );
    assert!(!counts.contains_key("FAILED"), "{counts:?}");

    // Cluster DNS: the pod's resolv.conf points at its node, Service
    // names resolve to the ClusterIP (headless ones to the pods), and
    // requests by name are balanced as by address.
    let resolv = cluster.in_client("cat /etc/resolv.conf").await;
    assert!(resolv.contains("nameserver 10.252."), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");
    let lookup = cluster
        .in_client("nslookup web.default.svc.cluster.local")
        .await;
    assert!(lookup.contains(&cluster_ip), "{lookup}");
    let headless = cluster
        .in_client("nslookup web-headless.default.svc.cluster.local")
        .await;
    for (_, pod_ip) in pods.values() {
        assert!(headless.contains(pod_ip.as_str()), "{pod_ip} in {headless}");
    }
    let missing = cluster
        .api
        .kubectl(&[
            "exec",
            "client",
            "--",
            "nslookup",
            "nothing.default.svc.cluster.local",
        ])
        .await;
    assert!(!missing.success, "{missing:?}");
    let out = cluster
        .in_client(
            "for i in $(seq 60); do timeout 5 wget -qO- http://web/ || echo FAILED; done; \
             timeout 5 wget -qO- http://web.default.svc.cluster.local/ || echo FAILED",
        )
        .await;
    let counts = tally(&out);
    println!("61 requests by DNS name: {counts:?}");
    assert!(!counts.contains_key("FAILED"), "{counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");

    // Service links: a pod started after the Services sees them in its
    // environment.
    cluster
        .api
        .kubectl_ok(&[
            "run",
            "links",
            "--image=busybox:latest",
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "echo $WEB_SERVICE_HOST $WEB_SERVICE_PORT_HTTP $WEB_PORT",
        ])
        .await;
    let links = wait_until("pod links Succeeded", Duration::from_secs(60), || async {
        let phase = cluster
            .api
            .jsonpath("pod", "links", "default", "{.status.phase}")
            .await;
        if phase != "Succeeded" {
            return None;
        }
        Some(cluster.api.kubectl_ok(&["logs", "links"]).await)
    })
    .await;
    assert_eq!(
        links.trim(),
        format!("{cluster_ip} 80 tcp://{cluster_ip}:80"),
        "service links"
    );

    // NodePort from the host, on both nodes' addresses.
    for (_, _, address) in &cluster.nodes {
        let body = wait_until(
            &format!("NodePort 30777 on {address}"),
            Duration::from_secs(20),
            || async { http_get(SocketAddr::from((*address, 30777))).await.ok() },
        )
        .await;
        assert!(pods.contains_key(body.trim()), "{body:?} from {address}");
    }

    // An Ingress on every node routes /a and /b to two Services; one
    // pointing to a missing Service answers 503 and says so in an Event.
    cluster.apply(ECHO).await;
    for (_, _, address) in &cluster.nodes {
        for (path, expected) in [("/a/", "from a"), ("/b/", "from b")] {
            let body = wait_until(
                &format!("Ingress {path} on {address}"),
                Duration::from_secs(60),
                || async {
                    let (status, body) = http_get_path(SocketAddr::from((*address, 80)), path)
                        .await
                        .ok()?;
                    status.contains(" 200 ").then_some(body)
                },
            )
            .await;
            assert_eq!(body.trim(), expected, "{path} on {address}");
        }
    }
    // Both nodes publish their address in the Ingress' status.
    let addresses = wait_until(
        "both nodes in the Ingress' status",
        Duration::from_secs(30),
        || async {
            let out = cluster
                .api
                .jsonpath(
                    "ingress",
                    "routes",
                    "default",
                    "{.status.loadBalancer.ingress[*].ip}",
                )
                .await;
            let all = cluster
                .nodes
                .iter()
                .all(|(_, _, ip)| out.split(' ').any(|a| a == ip.to_string()));
            all.then_some(out)
        },
    )
    .await;
    println!("Ingress routes ADDRESS: {addresses}");
    let (status, body) = http_get_path(SocketAddr::from((cluster.nodes[0].2, 80)), "/nope")
        .await
        .expect("the Ingress proxy answers");
    assert!(status.contains(" 503 "), "{status} {body}");
    assert!(body.contains("missing"), "{body}");
    let events = wait_until(
        "a ServiceNotFound Event",
        Duration::from_secs(20),
        || async {
            let out = cluster
                .api
                .kubectl_ok(&[
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=broken",
                    "-o",
                    "jsonpath={.items[*].reason}",
                ])
                .await;
            out.contains("ServiceNotFound").then_some(out)
        },
    )
    .await;
    println!("Events of Ingress broken: {events}");

    // A NodePort already taken: refused, and the other Services' rules
    // stay as they were.
    let before = without_timers(&cluster.service_rules(0));
    let taken = cluster
        .api
        .kubectl(&[
            "create",
            "service",
            "nodeport",
            "thief",
            "--tcp=81:8080",
            "--node-port=30777",
        ])
        .await;
    assert!(!taken.success);
    assert!(
        taken.stderr.contains("provided port is already allocated"),
        "{taken:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(without_timers(&cluster.service_rules(0)), before);

    // Scaling down to one replica while a client keeps asking: no request
    // fails, and at the end only the survivor answers.
    let api_kubeconfig = cluster.api.path("kubeconfig");
    let loop_script = format!(
        "for i in $(seq 150); do timeout 5 wget -qO- http://{cluster_ip}/ || echo FAILED; sleep 0.05; done"
    );
    let traffic = tokio::spawn({
        let kubeconfig = api_kubeconfig.clone();
        async move {
            tokio::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["exec", "client", "--", "sh", "-c", &loop_script])
                .output()
                .await
                .expect("kubectl runs")
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster
        .api
        .kubectl_ok(&["scale", "deployment", "web", "--replicas=1"])
        .await;
    let out = traffic.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let counts = tally(&stdout);
    println!("150 requests during the scale-down: {counts:?}");
    assert!(!counts.contains_key("FAILED"), "{counts:?}");
    let survivors = cluster.web_pods(1).await;
    let survivor = survivors.keys().next().unwrap();
    let last: Vec<&str> = stdout.lines().rev().take(20).collect();
    assert!(
        last.iter().all(|l| l.trim() == survivor),
        "after the scale-down only {survivor} answers: {last:?}"
    );

    // Hairpin: the survivor reaches itself through its Service.
    let own = cluster
        .api
        .kubectl_ok(&[
            "exec",
            survivor,
            "--",
            "sh",
            "-c",
            &format!("timeout 5 wget -qO- http://{cluster_ip}/"),
        ])
        .await;
    assert_eq!(
        own.trim(),
        survivor,
        "a pod reaches itself by its ClusterIP"
    );

    // Deleting the Services removes every rule they made, on both nodes.
    cluster
        .api
        .kubectl_ok(&["delete", "service", "web", "web-np", "web-sticky"])
        .await;
    for index in 0..2 {
        wait_until(
            "the Services' rules gone",
            Duration::from_secs(20),
            || async {
                let rules = cluster.service_rules(index);
                (!rules.contains("default/web") && !rules.contains(&cluster_ip)).then_some(())
            },
        )
        .await;
    }
    let rules = cluster.service_rules(0);
    assert!(!rules.contains("30777"), "{rules}");
}
