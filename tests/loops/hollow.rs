//! Hollow nodes: fake node agents that register Nodes, renew their Leases
//! and report the pods bound to them Running, against a real control plane
//! (RocksDB, the API server), checked with the real kubectl.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orch_core::controller::{node_lifecycle, LoopContext, LoopSettings};
use orch_core::hollow::{HollowCluster, HollowConfig, LEASE_NAMESPACE};
use orch_core::patch::PatchType;
use orch_core::Client;
use orch_tests::api::TestApi;
use orch_tests::wait_until;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn config(nodes: usize) -> HollowConfig {
    HollowConfig {
        nodes,
        renew_interval: Duration::from_millis(200),
        ..HollowConfig::default()
    }
}

fn pod(name: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "main".into(),
                image: Some("nginx:1.27".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn renew_time(client: &Client, node: &str) -> String {
    let lease: Lease = client
        .get(Some(LEASE_NAMESPACE), node)
        .await
        .expect("the node's lease exists");
    serde_json::to_value(lease.spec.and_then(|s| s.renew_time))
        .unwrap()
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn running_and_ready(client: &Client, name: &str) -> Option<Pod> {
    let pod: Pod = client.get(Some("default"), name).await.ok()?;
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    (status.phase.as_deref() == Some("Running") && ready).then_some(pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hollow_nodes_register_ready_and_renew_their_leases() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    let hollow = HollowCluster::start(client.clone(), config(3))
        .await
        .expect("hollow nodes register");
    let names = hollow.node_names();
    assert_eq!(names, ["hollow-node-0", "hollow-node-1", "hollow-node-2"]);

    // kubectl sees every node Ready, with its role and kubelet version.
    let table = api.kubectl_ok(&["get", "nodes"]).await;
    for name in &names {
        let line = table
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} listed by kubectl get nodes:\n{table}"));
        assert!(line.contains(" Ready "), "{name} is Ready: {line}");
        assert!(line.contains("worker"), "{name} has its role: {line}");
        assert!(line.contains("v1.33.0-orch-hollow"), "{line}");
    }
    let labels = api
        .kubectl_ok(&[
            "get",
            "node",
            "hollow-node-1",
            "-o",
            "jsonpath={.metadata.labels}",
        ])
        .await;
    assert!(
        labels.contains(r#""kubernetes.io/hostname":"hollow-node-1""#),
        "{labels}"
    );
    assert!(labels.contains(r#""kubernetes.io/os":"linux""#), "{labels}");
    let node: Node = client.get(None, "hollow-node-1").await.unwrap();
    let status = node.status.unwrap();
    assert_eq!(status.capacity.as_ref().unwrap()["pods"].0, "110");
    assert_eq!(status.allocatable.as_ref().unwrap()["cpu"].0, "4");
    let addresses = status.addresses.unwrap();
    assert!(addresses.iter().any(|a| a.type_ == "InternalIP"));

    // Every node's lease is renewed, again and again.
    for name in &names {
        let lease: Lease = client.get(Some(LEASE_NAMESPACE), name).await.unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(name.as_str()));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        let first = renew_time(&client, name).await;
        wait_until("the lease renewTime to advance", WAIT, || async {
            (renew_time(&client, name).await > first).then_some(())
        })
        .await;
    }
    let renewed = api
        .kubectl_ok(&[
            "get",
            "lease",
            "hollow-node-0",
            "-n",
            LEASE_NAMESPACE,
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
        .await;
    assert!(
        renewed.ends_with('Z') && renewed.contains('.'),
        "MicroTime: {renewed}"
    );
    assert!(hollow.stats().lease_renewals >= 3);
    hollow.shutdown().await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hollow_pods_bound_to_a_node_run_and_deleted_ones_disappear() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    let hollow = HollowCluster::start(client.clone(), config(2))
        .await
        .expect("hollow nodes register");

    // A pod bound to a node becomes Running and Ready.
    client
        .create(Some("default"), &pod("web", "hollow-node-0"))
        .await
        .unwrap();
    let running = wait_until("the pod to run", WAIT, || running_and_ready(&client, "web")).await;
    let status = running.status.unwrap();
    assert!(status.pod_ip.is_some_and(|ip| !ip.is_empty()));
    assert!(status.host_ip.is_some());
    assert!(status.start_time.is_some());
    let containers = status.container_statuses.unwrap();
    assert_eq!(containers.len(), 1);
    assert!(containers[0].ready);
    assert_eq!(containers[0].restart_count, 0);
    assert_eq!(containers[0].image, "nginx:1.27");
    assert!(containers[0].state.as_ref().unwrap().running.is_some());
    for condition in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == condition && c.status == "True"),
            "{condition} is True"
        );
    }
    let phase = api
        .jsonpath("pod", "web", "default", "{.status.phase}")
        .await;
    assert_eq!(phase, "Running");

    // With a pod range from IPAM, pod addresses come from it.
    client
        .patch::<Node>(
            None,
            "hollow-node-1",
            None,
            PatchType::Merge,
            &json!({"spec": {"podCIDR": "10.244.7.0/24"}}),
        )
        .await
        .unwrap();
    wait_until("the pod range to reach the node", WAIT, || async {
        let node: Node = client.get(None, "hollow-node-1").await.ok()?;
        node.spec?.pod_cidr.map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .create(Some("default"), &pod("api", "hollow-node-1"))
        .await
        .unwrap();
    let running = wait_until("the second pod to run", WAIT, || {
        running_and_ready(&client, "api")
    })
    .await;
    let ip = running.status.unwrap().pod_ip.unwrap();
    assert!(
        ip.starts_with("10.244.7."),
        "pod IP {ip} is in the node's range"
    );

    // Deleting a bound pod: its node stops it at once and it is gone
    // (kubectl waits for that).
    api.kubectl_ok(&["delete", "pod", "web", "--timeout=20s"])
        .await;
    let gone = client.get::<Pod>(Some("default"), "web").await;
    assert_eq!(gone.unwrap_err().code, 404);
    let stats = hollow.stats();
    assert_eq!(stats.pods_started, 2);
    assert_eq!(stats.pods_deleted, 1);
    assert_eq!(hollow.take_start_latencies().len(), 2);
    hollow.shutdown().await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hollow_stopped_node_stops_renewing_and_running_pods_until_resumed() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    let hollow = HollowCluster::start(client.clone(), config(2))
        .await
        .expect("hollow nodes register");
    assert!(hollow.stop_node("hollow-node-1"));
    assert!(!hollow.stop_node("no-such-node"));
    // A renewal may have been in flight when the node stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = renew_time(&client, "hollow-node-1").await;
    let alive_at = renew_time(&client, "hollow-node-0").await;
    client
        .create(Some("default"), &pod("stuck", "hollow-node-1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(renew_time(&client, "hollow-node-1").await, stopped_at);
    assert!(renew_time(&client, "hollow-node-0").await > alive_at);
    assert!(
        running_and_ready(&client, "stuck").await.is_none(),
        "a dead node runs nothing"
    );
    assert_eq!(hollow.stats().stopped_nodes, 1);

    // Marked NotReady meanwhile (as node lifecycle would), the node reports
    // itself Ready again once resumed, renews its lease and runs its pod.
    client
        .patch::<Node>(
            None,
            "hollow-node-1",
            Some("status"),
            PatchType::Strategic,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]}}),
        )
        .await
        .unwrap();
    assert!(hollow.resume_node("hollow-node-1"));
    wait_until("the resumed node to renew its lease", WAIT, || async {
        (renew_time(&client, "hollow-node-1").await > stopped_at).then_some(())
    })
    .await;
    wait_until("the resumed node's pod to run", WAIT, || {
        running_and_ready(&client, "stuck")
    })
    .await;
    wait_until("the resumed node to be Ready", WAIT, || async {
        let node: Node = client.get(None, "hollow-node-1").await.ok()?;
        node.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    hollow.shutdown().await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hollow_nodes_over_http_fail_over_to_a_reachable_api_server() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    // The first endpoint refuses connections; the second is the API.
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let hollow = HollowCluster::start(
        Client::http(unreachable),
        HollowConfig {
            failover: vec![api.addr.clone()],
            ..config(2)
        },
    )
    .await
    .expect("hollow nodes register through the second endpoint");
    hollow.add_nodes(1).await.unwrap();
    assert_eq!(hollow.node_names().len(), 3);
    let table = api.kubectl_ok(&["get", "nodes"]).await;
    assert_eq!(
        table.lines().filter(|l| l.contains(" Ready ")).count(),
        3,
        "{table}"
    );
    client
        .create(Some("default"), &pod("remote", "hollow-node-2"))
        .await
        .unwrap();
    wait_until("the pod to run", WAIT, || {
        running_and_ready(&client, "remote")
    })
    .await;
    hollow.shutdown().await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hollow_cluster_of_500_nodes_renews_every_lease() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    let hollow = HollowCluster::start(
        client.clone(),
        HollowConfig {
            renew_interval: Duration::from_secs(1),
            ..config(500)
        },
    )
    .await
    .expect("500 hollow nodes register");
    let registered = orch_core::hollow::objects::now_micro();
    let (nodes, _) = client.list::<Node>(None, None).await.unwrap();
    assert_eq!(nodes.len(), 500);
    wait_until(
        "every lease to be renewed after registration",
        WAIT,
        || async {
            let (leases, _) = client
                .list::<Lease>(Some(LEASE_NAMESPACE), None)
                .await
                .ok()?;
            let renewed = leases
                .iter()
                .filter(|l| {
                    serde_json::to_value(l.spec.as_ref().and_then(|s| s.renew_time.as_ref()))
                        .ok()
                        .and_then(|t| t.as_str().map(|t| t > registered.as_str()))
                        .unwrap_or(false)
                })
                .count();
            (renewed == 500).then_some(())
        },
    )
    .await;
    let stats = hollow.stats();
    assert_eq!(stats.nodes, 500);
    assert_eq!(stats.lease_errors, 0);
    hollow.shutdown().await;
    api.shutdown().await;
}

fn node_ready(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hollow_stopped_node_goes_not_ready_under_node_lifecycle_and_recovers() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    let ctx = LoopContext::new(client.clone(), LoopSettings::default());
    tokio::spawn(node_lifecycle::run(ctx.clone()));
    let hollow = HollowCluster::start(client.clone(), config(2))
        .await
        .expect("hollow nodes register");
    let mut tolerant = pod("tolerant", "hollow-node-1");
    tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
        operator: Some("Exists".into()),
        ..Default::default()
    }]);
    client.create(Some("default"), &tolerant).await.unwrap();
    wait_until("the pod to run", WAIT, || {
        running_and_ready(&client, "tolerant")
    })
    .await;

    // A dead node: its lease goes stale, node lifecycle marks it.
    hollow.stop_node("hollow-node-1");
    wait_until("the dead node to be NotReady", WAIT, || async {
        let node: Node = client.get(None, "hollow-node-1").await.ok()?;
        (node_ready(&node)? != "True").then_some(())
    })
    .await;
    let table = api.kubectl_ok(&["get", "nodes"]).await;
    let line = table
        .lines()
        .find(|l| l.starts_with("hollow-node-1"))
        .unwrap();
    assert!(line.contains("NotReady"), "{line}");
    let alive: Node = client.get(None, "hollow-node-0").await.unwrap();
    assert_eq!(
        node_ready(&alive).as_deref(),
        Some("True"),
        "the live node stays Ready"
    );

    wait_until(
        "the dead node's pod to be marked not Ready",
        WAIT,
        || async {
            running_and_ready(&client, "tolerant")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;

    // Back: Ready again, and so is its pod.
    hollow.resume_node("hollow-node-1");
    wait_until("the node to be Ready again", WAIT, || async {
        let node: Node = client.get(None, "hollow-node-1").await.ok()?;
        (node_ready(&node)? == "True").then_some(())
    })
    .await;
    wait_until("the pod to be Ready again", WAIT, || {
        running_and_ready(&client, "tolerant")
    })
    .await;
    assert!(hollow.stats().pod_ready_reports >= 1);
    assert!(hollow.stats().ready_reports >= 1);
    ctx.stop.cancel();
    hollow.shutdown().await;
    api.shutdown().await;
}
