//! orchd end to end, as a user runs it: three `orchd server` processes and
//! two `orchd agent` processes on loopback, driven by the real kubectl over
//! TLS with the kubeconfig the first master wrote. Masters and agents are
//! killed with SIGKILL and started again; a snapshot of the live cluster
//! is restored into a new one. Needs root (the agents run containers).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use orch_raft_store::Kv;
use orch_tests::api::{kubectl, KubectlOutput};
use orch_tests::orchd::{Master, Worker};
use orch_tests::wait_until;
use serde_json::Value;

const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");

const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  greeting: hello
---
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
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sleep", "3600"]
"#;

/// kubectl with `kubeconfig` (discovery cached beside it).
async fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> KubectlOutput {
    let cache = kubeconfig.with_extension("cache");
    kubectl(kubeconfig, &cache, args).await
}

/// The pods of the web deployment: (name, node, phase).
async fn web_pods(kubeconfig: &Path) -> Vec<(String, String, String)> {
    let out = kubectl_with(kubeconfig, &["get", "pods", "-l", "app=web", "-o", "json"]).await;
    if !out.success {
        return Vec::new();
    }
    let list: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .map(|p| {
                    (
                        p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                        p["status"]["phase"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until 3 web pods run, all on nodes in `nodes`; on time-out says
/// what the cluster shows.
async fn three_running_on(kubeconfig: &Path, nodes: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let pods = web_pods(kubeconfig).await;
        if pods.len() == 3
            && pods
                .iter()
                .all(|(_, node, phase)| phase == "Running" && nodes.contains(&node.as_str()))
        {
            return;
        }
        if Instant::now() > deadline {
            let all = kubectl_with(kubeconfig, &["get", "pods,nodes,rs", "-o", "wide"]).await;
            let events = kubectl_with(kubeconfig, &["get", "events"]).await;
            panic!(
                "timed out after {timeout:?} waiting for 3 web pods Running on {nodes:?}: {pods:?}\n{}\n{}\n{}",
                all.stdout, all.stderr, events.stdout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader's member id, as `orchd status` prints it.
fn leader_of(dir: &Path) -> Option<u64> {
    let out = Command::new(ORCHD)
        .args(["status", "--data-dir"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("leader:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
}

fn orchd(args: &[&str]) -> std::process::Output {
    Command::new(ORCHD).args(args).output().expect("orchd runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_master_cluster_survives_losing_a_master_and_a_node() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| -> PathBuf { root.path().join(name) };

    // Three masters: the first bootstraps, the others join with its token.
    let first = Master::start(Path::new(ORCHD), &dir("m1"), None);
    let token = first.token();
    let agent_token = std::fs::read_to_string(dir("m1").join("agent-token"))
        .expect("the first master wrote the agents' token");
    assert_ne!(agent_token, token);
    let mut masters = vec![first];
    for name in ["m2", "m3"] {
        let join = masters[0].join_address().to_string();
        masters.push(Master::start(
            Path::new(ORCHD),
            &dir(name),
            Some((&join, &token)),
        ));
    }
    let status = String::from_utf8_lossy(
        &orchd(&["status", "--data-dir", dir("m2").to_str().unwrap()]).stdout,
    )
    .into_owned();
    assert_eq!(
        status.matches(" voter").count() + status.matches(" leader").count(),
        3,
        "{status}"
    );

    // Two workers that know every master.
    let apis: Vec<String> = masters.iter().map(|m| m.api.clone()).collect();
    let apis: Vec<&str> = apis.iter().map(String::as_str).collect();
    let mut workers = vec![
        Worker::start(Path::new(ORCHD), &dir("w1"), "w1", &apis, &token),
        // Workers join with the agents' token (the join token works too).
        Worker::start(Path::new(ORCHD), &dir("w2"), "w2", &apis, &agent_token),
    ];
    let kubeconfig = masters[0].kubeconfig();
    wait_until("both workers Ready", Duration::from_secs(60), || async {
        let out = kubectl_with(&kubeconfig, &["get", "nodes"]).await;
        (out.stdout.matches(" Ready ").count() == 2).then_some(())
    })
    .await;

    let manifest = dir("app.yaml");
    std::fs::write(&manifest, APP).unwrap();
    let out = kubectl_with(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]).await;
    assert!(out.success, "{out:?}");
    three_running_on(&kubeconfig, &["w1", "w2"], Duration::from_secs(60)).await;

    // Secrets are sealed in the store; kubectl reads them in the clear.
    let out = kubectl_with(
        &kubeconfig,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=hunter2",
        ],
    )
    .await;
    assert!(out.success, "{out:?}");
    let raw = orch_raft_store::Client::new([masters[1].peer.clone()])
        .with_tls(&masters[1].peer_tls())
        .get("/registry/secrets/default/db")
        .await
        .unwrap()
        .expect("the secret is stored");
    assert!(raw.value.starts_with(b"orch:enc:aes256gcm:v1:"));
    let clear = String::from_utf8_lossy(&raw.value);
    assert!(
        !clear.contains("aHVudGVyMg") && !clear.contains("password"),
        "{clear}"
    );
    let out = kubectl_with(
        &kubeconfig,
        &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
    )
    .await;
    assert_eq!(out.stdout, "aHVudGVyMg==", "{out:?}");

    // Rotating the Secrets key through one master: the Secret is sealed
    // with the new key, and every master reads it (their keyrings follow).
    let rotated = orchd(&[
        "secrets",
        "rotate-key",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success() && said.contains("1 Secrets sealed with it"),
        "{said}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let raw = orch_raft_store::Client::new([masters[1].peer.clone()])
        .with_tls(&masters[1].peer_tls())
        .get("/registry/secrets/default/db")
        .await
        .unwrap()
        .expect("the secret is stored");
    assert!(raw.value.starts_with(b"orch:enc:aes256gcm:v2:"));
    for master in &masters {
        let out = kubectl_with(
            &master.kubeconfig(),
            &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
        )
        .await;
        assert_eq!(out.stdout, "aHVudGVyMg==", "{out:?}");
    }

    // No credentials, or a wrong token: refused.
    let anonymous = dir("anonymous.kubeconfig");
    let admin = std::fs::read_to_string(&kubeconfig).unwrap();
    let without_token: String = admin
        .lines()
        .filter(|l| !l.trim_start().starts_with("token:"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("  user:\n", "  user: {}\n");
    std::fs::write(&anonymous, without_token).unwrap();
    let out = kubectl_with(&anonymous, &["get", "pods"]).await;
    assert!(!out.success, "{out:?}");
    let code = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "https://{}/api/v1/namespaces/default/pods",
            masters[0].api
        ))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&code.stdout), "401");
    // The agents' token reads the Kubernetes API, not the CA key or the
    // members.
    let as_agent = |path: &str, method: &str| {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .args(["-H", &format!("Authorization: Bearer {agent_token}")])
            .arg(format!("https://{}{path}", masters[0].api))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(as_agent("/api/v1/namespaces/default/pods", "GET"), "200");
    assert_eq!(as_agent("/orch/v1/join-bundle", "GET"), "403");
    assert_eq!(as_agent("/orch/v1/members", "POST"), "403");
    assert_eq!(as_agent("/orch/v1/secrets/rotate-key", "POST"), "403");
    let bad_token = format!("{}0000", &token[..token.len() - 4]);
    let joiner = dir("m-bad");
    let out = orchd(&[
        "server",
        "--data-dir",
        joiner.to_str().unwrap(),
        "--api-addr",
        &format!("127.0.0.1:{}", orch_tests::orchd::free_port()),
        "--peer-addr",
        &format!("127.0.0.1:{}", orch_tests::orchd::free_port()),
        "--no-agent",
        "--join",
        masters[0].join_address(),
        "--token",
        &bad_token,
    ]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("token is not this cluster's"), "{error}");
    assert!(!joiner.exists(), "a refused join leaves nothing behind");

    // Peer traffic is mutual TLS: a client without a certificate of the
    // cluster's CA, or with one of another CA, is refused.
    let plain = orch_raft_store::Client::new([masters[1].peer.clone()])
        .with_timeout(Duration::from_secs(3))
        .get("/registry/secrets/default/db")
        .await;
    assert!(plain.is_err(), "a cleartext client was answered: {plain:?}");
    let stranger = orch_core::cluster_ca::ClusterCa::generate()
        .unwrap()
        .peer_tls(&["127.0.0.1".parse().unwrap()], &[])
        .unwrap();
    let foreign = orch_raft_store::Client::new([masters[1].peer.clone()])
        .with_tls(&stranger)
        .with_timeout(Duration::from_secs(3))
        .get("/registry/secrets/default/db")
        .await;
    assert!(
        foreign.is_err(),
        "a client of another CA was answered: {foreign:?}"
    );

    // Kill the leader: a surviving master answers kubectl, reads and writes.
    let leader_id = leader_of(&dir("m1")).expect("a leader");
    let leader = masters
        .iter()
        .position(|m| m.member_id() == leader_id)
        .expect("the leader is one of the masters");
    let survivor = (leader + 1) % 3;
    let survivor_kubeconfig = masters[survivor].kubeconfig();
    masters[leader].process.kill9();
    let killed = Instant::now();
    wait_until(
        "a surviving master serves writes",
        Duration::from_secs(10),
        || async {
            let out = kubectl_with(
                &survivor_kubeconfig,
                &[
                    "annotate",
                    "--overwrite",
                    "configmap",
                    "web-config",
                    "failover=done",
                ],
            )
            .await;
            out.success.then_some(())
        },
    )
    .await;
    let failover = killed.elapsed();
    println!("failover: kubectl writes through a surviving master {failover:?} after the leader was killed");
    let out = kubectl_with(
        &survivor_kubeconfig,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )
    .await;
    assert_eq!(out.stdout, "3", "{out:?}");

    // The killed master comes back, rejoins and catches up.
    masters[leader].process.restart();
    masters[leader].wait_ready();
    let back = masters[leader].kubeconfig();
    wait_until(
        "the restarted master serves what was written",
        Duration::from_secs(30),
        || async {
            let out = kubectl_with(
                &back,
                &[
                    "get",
                    "configmap",
                    "web-config",
                    "-o",
                    "jsonpath={.metadata.annotations.failover}",
                ],
            )
            .await;
            (out.stdout == "done").then_some(())
        },
    )
    .await;

    // Kill a worker: its pods are replaced on the other.
    let on_w1 = web_pods(&survivor_kubeconfig)
        .await
        .iter()
        .filter(|(_, node, _)| node == "w1")
        .count();
    workers[0].process.kill9();
    let lost = Instant::now();
    three_running_on(&survivor_kubeconfig, &["w2"], Duration::from_secs(60)).await;
    let replaced = lost.elapsed();
    println!(
        "node loss: {on_w1} pods of w1 replaced on w2 {replaced:?} after its agent was killed"
    );

    // The worker comes back and removes the pods that are no longer its.
    workers[0].process.restart();
    wait_until(
        "w1 tears down its stale pods",
        Duration::from_secs(60),
        || async { workers[0].pod_cgroups().is_empty().then_some(()) },
    )
    .await;

    // SIGTERM on the leader: it hands leadership over before it stops.
    let leader_id = leader_of(&dir("m1")).expect("a leader");
    let leader = masters
        .iter()
        .position(|m| m.member_id() == leader_id)
        .expect("the leader is one of the masters");
    let survivor = (leader + 1) % 3;
    let survivor_kubeconfig = masters[survivor].kubeconfig();
    let stopped = Instant::now();
    let took = masters[leader].process.terminate(Duration::from_secs(20));
    assert!(
        masters[leader]
            .process
            .log()
            .contains("leadership handed over"),
        "{}",
        masters[leader].process.log()
    );
    wait_until(
        "a surviving master serves writes after the hand-over",
        Duration::from_secs(10),
        || async {
            let out = kubectl_with(
                &survivor_kubeconfig,
                &[
                    "annotate",
                    "--overwrite",
                    "configmap",
                    "web-config",
                    "handover=done",
                ],
            )
            .await;
            out.success.then_some(())
        },
    )
    .await;
    println!(
        "hand-over: the leader stopped on SIGTERM in {took:?}; writes served again {:?} after the signal",
        stopped.elapsed()
    );
    masters[leader].process.restart();
    masters[leader].wait_ready();

    // A master leaves: the cluster goes on with two, the leaver stops and
    // will not start on its old data dir.
    let leaver = (survivor + 1) % 3;
    let out = orchd(&[
        "leave",
        "--data-dir",
        masters[leaver].process.dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        masters[leaver].process.wait_exit(Duration::from_secs(10)),
        "the master that left stops"
    );
    let out = orchd(&[
        "status",
        "--kubeconfig",
        survivor_kubeconfig.to_str().unwrap(),
    ]);
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        status.matches(" voter").count() + status.matches(" leader").count(),
        2,
        "{status}"
    );
    let out = kubectl_with(&survivor_kubeconfig, &["get", "deployment", "web"]).await;
    assert!(out.success, "{out:?}");
    masters[leaver].process.restart();
    assert!(
        masters[leaver].process.wait_exit(Duration::from_secs(10)),
        "a master that left refuses to start"
    );
    assert!(
        masters[leaver].process.log().contains("left its cluster"),
        "{}",
        masters[leaver].process.log()
    );

    // A snapshot of the live cluster, restored into a new single master.
    let snapshot = dir("cluster.snap");
    let out = orchd(&[
        "snapshot",
        "save",
        snapshot.to_str().unwrap(),
        "--data-dir",
        masters[survivor].process.dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored_dir = dir("restored");
    let out = orchd(&[
        "snapshot",
        "restore",
        snapshot.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
        "--token",
        &token,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = Master::start(Path::new(ORCHD), &restored_dir, None);
    let out = kubectl_with(
        &restored.kubeconfig(),
        &["get", "deployment,configmap", "-o", "name"],
    )
    .await;
    assert!(out.stdout.contains("deployment.apps/web"), "{out:?}");
    assert!(out.stdout.contains("configmap/web-config"), "{out:?}");
    assert_eq!(
        restored.token(),
        token,
        "the restored cluster keeps its identity"
    );
    let out = kubectl_with(
        &restored.kubeconfig(),
        &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
    )
    .await;
    assert_eq!(
        out.stdout, "aHVudGVyMg==",
        "Secrets open with the same key: {out:?}"
    );
    let corrupt = dir("corrupt.snap");
    std::fs::write(&corrupt, b"not a snapshot").unwrap();
    let out = orchd(&[
        "snapshot",
        "restore",
        corrupt.to_str().unwrap(),
        "--data-dir",
        dir("never").to_str().unwrap(),
        "--token",
        &token,
    ]);
    assert!(!out.status.success());
    assert!(!dir("never").exists());

    drop(workers);
}
