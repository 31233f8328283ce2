//! The whole control plane at work: 3 masters (real Raft over loopback,
//! RocksDB, fsync on) running the standard loops on the leader, hollow
//! nodes as the agents, and the real kubectl as the user.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orch_core::controller::util::{controller_of, is_pod_active};
use orch_core::hollow::{HollowCluster, HollowConfig};
use orch_core::Client;
use orch_tests::cluster::TestMasters;
use orch_tests::loops::{image_of, pods_labelled, wait_for_pods};
use orch_tests::wait_until;

/// Debug builds on 2 loaded cores: generous, the assertions are about
/// what happens, not how fast.
const WAIT: Duration = Duration::from_secs(120);

fn hollow(prefix: &str, nodes: usize, cpu: &str) -> HollowConfig {
    HollowConfig {
        nodes,
        name_prefix: prefix.into(),
        cpu: cpu.into(),
        renew_interval: Duration::from_millis(250),
        ..HollowConfig::default()
    }
}

/// Three masters, once one of them runs the loops: the masters, the
/// leader's index, the index of another master to act through (the user's)
/// and a client of that one.
async fn three_masters() -> (TestMasters, usize, usize, Client) {
    let masters = TestMasters::start(3).await;
    let leader = masters.wait_for_loops().await;
    let user = (leader + 1) % 3;
    let client = masters.client(user);
    (masters, leader, user, client)
}

/// The pods labelled `app=<app>` in `default`.
async fn pods_of(client: &Client, app: &str) -> Vec<Pod> {
    pods_labelled(client, &format!("app={app}")).await
}

fn is_running(pod: &Pod) -> bool {
    is_pod_active(pod) && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// `kubectl create deployment <name> --image=busybox --replicas=<replicas>`
/// through master `user`.
async fn create_busybox_deployment(
    masters: &TestMasters,
    user: usize,
    name: &str,
    replicas: usize,
) {
    masters
        .kubectl_ok(
            user,
            &[
                "create",
                "deployment",
                name,
                "--image=busybox",
                &format!("--replicas={replicas}"),
            ],
        )
        .await;
}

/// Waits until exactly `count` active pods of `app` run, all with `image`;
/// returns them.
async fn wait_running(client: &Client, app: &str, count: usize, image: &str) -> Vec<Pod> {
    wait_for_pods(
        client,
        Some(&format!("app={app}")),
        count,
        &format!("{count} running pods of {app} with image {image}"),
        WAIT,
        |p| is_running(p) && image_of(p) == image,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_kubectl_deployment_runs_spread_scales_rolls_out_undoes_and_deletes() {
    let (masters, _, user, client) = three_masters().await;
    let nodes = HollowCluster::start(client.clone(), hollow("node-", 3, "4"))
        .await
        .unwrap();

    create_busybox_deployment(&masters, user, "web", 3).await;
    let pods = wait_running(&client, "web", 3, "busybox").await;
    let spread: BTreeSet<String> = pods.iter().map(node_of).collect();
    assert_eq!(spread.len(), 3, "3 replicas on 3 nodes: {spread:?}");
    masters
        .kubectl_ok(
            user,
            &["rollout", "status", "deployment/web", "--timeout=60s"],
        )
        .await;

    masters
        .kubectl_ok(user, &["scale", "deployment", "web", "--replicas=6"])
        .await;
    wait_running(&client, "web", 6, "busybox").await;
    masters
        .kubectl_ok(user, &["scale", "deployment", "web", "--replicas=2"])
        .await;
    wait_running(&client, "web", 2, "busybox").await;

    masters
        .kubectl_ok(
            user,
            &["set", "image", "deployment/web", "busybox=busybox:1.36"],
        )
        .await;
    masters
        .kubectl_ok(
            user,
            &["rollout", "status", "deployment/web", "--timeout=60s"],
        )
        .await;
    wait_running(&client, "web", 2, "busybox:1.36").await;
    let history = masters
        .kubectl_ok(user, &["rollout", "history", "deployment/web"])
        .await;
    assert!(
        history.contains('1') && history.contains('2'),
        "two revisions: {history}"
    );
    masters
        .kubectl_ok(user, &["rollout", "undo", "deployment/web"])
        .await;
    masters
        .kubectl_ok(
            user,
            &["rollout", "status", "deployment/web", "--timeout=60s"],
        )
        .await;
    wait_running(&client, "web", 2, "busybox").await;

    masters
        .kubectl_ok(user, &["delete", "deployment", "web"])
        .await;
    wait_until(
        "the deployment's replica sets and pods to be gone",
        WAIT,
        || async {
            let sets = client
                .list::<ReplicaSet>(Some("default"), Some("app=web"))
                .await
                .ok()?
                .0;
            (sets.is_empty() && pods_of(&client, "web").await.is_empty()).then_some(())
        },
    )
    .await;
    nodes.shutdown().await;
    masters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_pods_of_a_dead_node_are_replaced_on_live_nodes() {
    let (masters, _, user, client) = three_masters().await;
    let nodes = HollowCluster::start(client.clone(), hollow("node-", 3, "4"))
        .await
        .unwrap();
    create_busybox_deployment(&masters, user, "web", 6).await;
    let pods = wait_running(&client, "web", 6, "busybox").await;
    let victim = node_of(&pods[0]);
    let stopped = Instant::now();
    assert!(nodes.stop_node(&victim));
    let replaced = wait_until("6 running pods, none on the dead node", WAIT, || async {
        let pods: Vec<Pod> = pods_of(&client, "web")
            .await
            .into_iter()
            .filter(|p| is_running(p) && node_of(p) != victim)
            .collect();
        (pods.len() == 6).then_some(stopped.elapsed())
    })
    .await;
    let grace = orch_core::controller::LoopSettings::default().node_monitor_grace;
    assert!(
        replaced < grace + Duration::from_secs(5),
        "replaced after {replaced:?} (grace {grace:?})"
    );
    let ready = masters
        .kubectl_ok(
            user,
            &[
                "get",
                "node",
                &victim,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        )
        .await;
    assert_eq!(ready, "Unknown", "the dead node is no longer Ready");
    nodes.shutdown().await;
    masters.shutdown().await;
}

fn pod_requesting(name: &str, cpu: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some("busybox".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_pod_that_fits_nowhere_waits_unschedulable_until_a_node_with_room_joins() {
    let (masters, _, _, client) = three_masters().await;
    let small = HollowCluster::start(client.clone(), hollow("small-", 2, "1"))
        .await
        .unwrap();
    client
        .create(Some("default"), &pod_requesting("big", "3"))
        .await
        .unwrap();
    let message = wait_until("the pod to be marked Unschedulable", WAIT, || async {
        let pod: Pod = client.get(Some("default"), "big").await.ok()?;
        let condition = pod
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")?;
        (condition.status == "False" && condition.reason.as_deref() == Some("Unschedulable"))
            .then(|| condition.message.unwrap_or_default())
    })
    .await;
    assert!(message.contains("Insufficient cpu"), "{message}");
    let pod: Pod = client.get(Some("default"), "big").await.unwrap();
    assert!(node_of(&pod).is_empty(), "still Pending");

    let big = HollowCluster::start(client.clone(), hollow("big-", 1, "4"))
        .await
        .unwrap();
    let bound = wait_until("the pod to be bound to the new node", WAIT, || async {
        let pod: Pod = client.get(Some("default"), "big").await.ok()?;
        is_running(&pod).then(|| node_of(&pod))
    })
    .await;
    assert_eq!(bound, "big-0");
    small.shutdown().await;
    big.shutdown().await;
    masters.shutdown().await;
}

/// What a sampler saw of the replica sets of one deployment.
#[derive(Default)]
struct Sampled {
    samples: usize,
    /// The most active pods seen at once, per replica set.
    most_pods: HashMap<String, usize>,
    /// The largest `spec.replicas` seen, per replica set.
    most_replicas: HashMap<String, i32>,
    /// The most active pods of the deployment seen at once.
    most_total: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_leader_killed_mid_rollout_of_300_pods_rollout_completes_without_excess_pods() {
    const REPLICAS: usize = 300;
    let (mut masters, leader, user, client) = three_masters().await;
    let nodes = HollowCluster::start(client.clone(), hollow("node-", 10, "64"))
        .await
        .unwrap();
    create_busybox_deployment(&masters, user, "big", REPLICAS).await;
    wait_running(&client, "big", REPLICAS, "busybox").await;

    // Sample the pods of every replica set while the rollout runs.
    let sampled = Arc::new(Mutex::new(Sampled::default()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (client, sampled, done) = (client.clone(), sampled.clone(), done.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                let sets = client
                    .list::<ReplicaSet>(Some("default"), Some("app=big"))
                    .await
                    .map(|(s, _)| s)
                    .unwrap_or_default();
                let pods = pods_of(&client, "big").await;
                let mut per_set: HashMap<String, usize> = HashMap::new();
                let mut total = 0;
                for pod in pods.iter().filter(|p| is_pod_active(p)) {
                    total += 1;
                    if let Some(owner) = controller_of(&pod.metadata) {
                        *per_set.entry(owner.name.clone()).or_default() += 1;
                    }
                }
                {
                    let mut s = sampled.lock().unwrap();
                    s.samples += 1;
                    s.most_total = s.most_total.max(total);
                    for set in sets {
                        let name = set.metadata.name.clone().unwrap_or_default();
                        let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                        let most = s.most_replicas.entry(name).or_default();
                        *most = (*most).max(replicas);
                    }
                    for (name, count) in per_set {
                        let most = s.most_pods.entry(name).or_default();
                        *most = (*most).max(count);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    masters
        .kubectl_ok(
            user,
            &["set", "image", "deployment/big", "busybox=busybox:1.36"],
        )
        .await;
    // Kill the leader once the rollout is under way.
    wait_until("the rollout to be under way", WAIT, || async {
        let updated = pods_of(&client, "big")
            .await
            .iter()
            .filter(|p| is_running(p) && image_of(p) == "busybox:1.36")
            .count();
        (updated >= 30).then_some(())
    })
    .await;
    masters.stop(leader).await;
    let next = masters.wait_for_loops().await;
    assert_ne!(next, leader);

    masters
        .kubectl_ok(
            user,
            &["rollout", "status", "deployment/big", "--timeout=180s"],
        )
        .await;
    wait_running(&client, "big", REPLICAS, "busybox:1.36").await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    let deployment: Deployment = client.get(Some("default"), "big").await.unwrap();
    let status = deployment.status.unwrap();
    assert_eq!(status.updated_replicas, Some(REPLICAS as i32));
    assert_eq!(status.available_replicas, Some(REPLICAS as i32));
    {
        let s = sampled.lock().unwrap();
        assert!(s.samples > 10, "the sampler ran ({} samples)", s.samples);
        // Default strategy: maxSurge 25%, maxUnavailable 25%.
        assert!(
            s.most_total <= REPLICAS + REPLICAS / 4,
            "at most replicas + maxSurge pods at once, saw {}",
            s.most_total
        );
        for (set, most) in &s.most_pods {
            let allowed = s.most_replicas.get(set).copied().unwrap_or(0) as usize;
            assert!(
                *most <= allowed,
                "replica set {set} had {most} pods at once, its replicas never exceeded {allowed}"
            );
        }
    }
    nodes.shutdown().await;
    masters.shutdown().await;
}
