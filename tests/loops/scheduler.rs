//! The scheduler against a real control plane: pods spread over nodes,
//! resources, nodeSelector, taints and tolerations, required
//! anti-affinity, and pods that fit nowhere until a node with room comes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Affinity, Container, Event, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use orch_core::controller::{scheduler, LoopContext, LoopSettings};
use orch_core::Client;
use orch_tests::api::TestApi;
use orch_tests::wait_until;

const TIMEOUT: Duration = Duration::from_secs(20);

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A Ready node with `cpu` CPUs, 8Gi of memory and room for 110 pods.
fn node(name: &str, cpu: &str, node_labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
    let mut all = labels(node_labels);
    all.insert("kubernetes.io/hostname".into(), name.into());
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.into())),
        ("memory".to_string(), Quantity("8Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(all),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// A pod in `default` requesting `cpu`, labelled `pod_labels`.
fn pod(name: &str, cpu: &str, pod_labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(labels(pod_labels)),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("busybox".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

async fn start() -> (TestApi, Client, LoopContext) {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    let ctx = LoopContext::new(client.clone(), LoopSettings::default());
    tokio::spawn(scheduler::run(ctx.clone()));
    (api, client, ctx)
}

async fn create_node(client: &Client, node: Node) {
    let name = node.metadata.name.clone().unwrap();
    let status = serde_json::to_value(node.status.clone()).unwrap();
    client.create(None, &node).await.expect("node created");
    // The status as given, even if create resets it.
    client
        .patch::<Node>(
            None,
            &name,
            Some("status"),
            orch_core::patch::PatchType::Merge,
            &serde_json::json!({ "status": status }),
        )
        .await
        .expect("node status set");
}

async fn node_of(client: &Client, name: &str) -> Option<String> {
    let pod: Pod = client.get(Some("default"), name).await.ok()?;
    pod.spec?.node_name.filter(|n| !n.is_empty())
}

fn scheduled_condition(pod: &Pod) -> Option<(String, String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Waits until the pod is reported unschedulable; returns the message.
async fn wait_unschedulable(client: &Client, name: &str) -> String {
    wait_until(&format!("{name} unschedulable"), TIMEOUT, || async {
        let pod: Pod = client.get(Some("default"), name).await.ok()?;
        let (status, reason, message) = scheduled_condition(&pod)?;
        (status == "False" && reason == "Unschedulable").then_some(message)
    })
    .await
}

/// Waits until the pod's PodScheduled condition is True.
async fn wait_marked_scheduled(client: &Client, name: &str) {
    wait_until(&format!("{name} PodScheduled=True"), TIMEOUT, || async {
        let pod: Pod = client.get(Some("default"), name).await.ok()?;
        (scheduled_condition(&pod)?.0 == "True").then_some(())
    })
    .await
}

async fn wait_bound(client: &Client, name: &str) -> String {
    wait_until(&format!("{name} bound"), TIMEOUT, || node_of(client, name)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_spreads_pods_over_three_nodes() {
    let (api, client, ctx) = start().await;
    for n in ["n1", "n2", "n3"] {
        create_node(&client, node(n, "4", &[], vec![])).await;
    }
    for i in 0..9 {
        client
            .create(Some("default"), &pod(&format!("web-{i}"), "100m", &[]))
            .await
            .unwrap();
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..9 {
        let name = format!("web-{i}");
        *per_node
            .entry(wait_bound(&client, &name).await)
            .or_default() += 1;
        wait_marked_scheduled(&client, &name).await;
    }
    assert_eq!(per_node.len(), 3, "every node got pods: {per_node:?}");
    assert!(
        per_node.values().all(|n| *n == 3),
        "equal pods spread evenly: {per_node:?}"
    );
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_pod_that_fits_nowhere_waits_for_a_node_with_room() {
    let (api, client, ctx) = start().await;
    create_node(&client, node("small", "1", &[], vec![])).await;
    client
        .create(Some("default"), &pod("big", "4", &[]))
        .await
        .unwrap();
    let message = wait_unschedulable(&client, "big").await;
    assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");
    let pod: Pod = client.get(Some("default"), "big").await.unwrap();
    assert_eq!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Pending"),
        "an unschedulable pod stays Pending"
    );
    wait_until("a FailedScheduling event", TIMEOUT, || async {
        let (events, _) = client.list::<Event>(Some("default"), None).await.ok()?;
        events
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.name.as_deref() == Some("big")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;
    // No hot loop: the pod is not retried over and over meanwhile.
    let (before, _) = client.list::<Event>(Some("default"), None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = client.list::<Event>(Some("default"), None).await.unwrap();
    assert_eq!(
        before.len(),
        after.len(),
        "no new events while nothing changes"
    );
    assert_eq!(node_of(&client, "big").await, None);

    create_node(&client, node("large", "8", &[], vec![])).await;
    let started = std::time::Instant::now();
    assert_eq!(wait_bound(&client, "big").await, "large");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a new node wakes waiting pods at once, not after their back-off ({:?})",
        started.elapsed()
    );
    wait_marked_scheduled(&client, "big").await;
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_honours_node_selector() {
    let (api, client, ctx) = start().await;
    create_node(&client, node("ssd-1", "4", &[("disk", "ssd")], vec![])).await;
    create_node(&client, node("hdd-1", "4", &[("disk", "hdd")], vec![])).await;
    for i in 0..4 {
        let mut p = pod(&format!("db-{i}"), "100m", &[]);
        p.spec.as_mut().unwrap().node_selector = Some(labels(&[("disk", "ssd")]));
        client.create(Some("default"), &p).await.unwrap();
    }
    for i in 0..4 {
        assert_eq!(wait_bound(&client, &format!("db-{i}")).await, "ssd-1");
    }
    let mut p = pod("nvme", "100m", &[]);
    p.spec.as_mut().unwrap().node_selector = Some(labels(&[("disk", "nvme")]));
    client.create(Some("default"), &p).await.unwrap();
    assert_eq!(
        wait_unschedulable(&client, "nvme").await,
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    );
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_keeps_pods_off_tainted_nodes_unless_they_tolerate() {
    let (api, client, ctx) = start().await;
    let taint = Taint {
        key: "dedicated".into(),
        value: Some("gpu".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    create_node(&client, node("gpu-1", "4", &[], vec![taint])).await;
    client
        .create(Some("default"), &pod("plain", "100m", &[]))
        .await
        .unwrap();
    assert_eq!(
        wait_unschedulable(&client, "plain").await,
        "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}."
    );
    let mut tolerant = pod("trainer", "100m", &[]);
    tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("gpu".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }]);
    client.create(Some("default"), &tolerant).await.unwrap();
    assert_eq!(wait_bound(&client, "trainer").await, "gpu-1");
    // An untainted node takes the plain pod.
    create_node(&client, node("cpu-1", "4", &[], vec![])).await;
    assert_eq!(wait_bound(&client, "plain").await, "cpu-1");
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_required_anti_affinity_keeps_replicas_apart() {
    let (api, client, ctx) = start().await;
    for n in ["n1", "n2", "n3"] {
        create_node(&client, node(n, "4", &[], vec![])).await;
    }
    let replica = |name: &str| {
        let mut p = pod(name, "100m", &[("app", "cache")]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[("app", "cache")])),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    // Created together, so they are scheduled concurrently.
    let creates = (0..4).map(|i| {
        let client = client.clone();
        let p = replica(&format!("cache-{i}"));
        async move { client.create(Some("default"), &p).await.unwrap() }
    });
    futures::future::join_all(creates).await;
    let unschedulable = wait_until("three replicas bound, one waiting", TIMEOUT, || async {
        let mut nodes = Vec::new();
        let mut waiting = Vec::new();
        for i in 0..4 {
            let name = format!("cache-{i}");
            let pod: Pod = client.get(Some("default"), &name).await.ok()?;
            match pod
                .spec
                .as_ref()?
                .node_name
                .clone()
                .filter(|n| !n.is_empty())
            {
                Some(node) => nodes.push(node),
                None => {
                    let (status, reason, message) = scheduled_condition(&pod)?;
                    (status == "False" && reason == "Unschedulable").then_some(())?;
                    waiting.push(message);
                }
            }
        }
        (nodes.len() == 3 && waiting.len() == 1).then_some((nodes, waiting))
    })
    .await;
    let (mut nodes, waiting) = unschedulable;
    nodes.sort();
    assert_eq!(nodes, vec!["n1", "n2", "n3"], "one replica per node");
    assert_eq!(
        waiting[0],
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    ctx.stop.cancel();
    api.shutdown().await;
}
