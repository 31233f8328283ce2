//! The garbage collector, namespace, node lifecycle, node IPAM and
//! EndpointSlice loops against a real control plane. No node agent runs:
//! the tests play its part by renewing Leases, writing pod status and
//! finishing the deletion of pods bound to nodes.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use orch_core::controller::{
    endpoints, garbage_collector, namespace, node_ipam, node_lifecycle, LoopContext, LoopSettings,
};
use orch_core::patch::PatchType;
use orch_core::Client;
use orch_tests::loops::{
    self, from_json, patch_pod_status, ready_node, set_pod_phase, start_api, start_loop, NS,
};
use orch_tests::wait_until;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

async fn create_rs(client: &Client, namespace: &str, name: &str) -> ReplicaSet {
    let rs: ReplicaSet = from_json(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}
            }
        }
    }));
    client
        .create(Some(namespace), &rs)
        .await
        .expect("rs created")
}

/// A pod owned by `owner` (kind, name, uid), optionally bound to `node`.
async fn create_owned_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: Option<(&str, &str, &str, &str)>,
    node: Option<&str>,
) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "main", "image": "busybox:1.36"}]
        }
    });
    if let Some((api_version, kind, owner_name, uid)) = owner {
        pod["metadata"]["ownerReferences"] = json!([{
            "apiVersion": api_version, "kind": kind, "name": owner_name, "uid": uid,
            "controller": true, "blockOwnerDeletion": true
        }]);
    }
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    client
        .create(Some(namespace), &from_json::<Pod>(pod))
        .await
        .expect("pod created")
}

async fn pod_exists(client: &Client, namespace: &str, name: &str) -> bool {
    client.get::<Pod>(Some(namespace), name).await.is_ok()
}

fn uid_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.uid.clone().expect("a uid")
}

/// The ReplicaSet `web` and `pods` (name, node it is bound to) it
/// controls.
async fn create_web_rs_with_pods(client: &Client, pods: &[(&str, Option<&str>)]) {
    let rs = create_rs(client, NS, "web").await;
    let uid = uid_of(&rs.metadata);
    let owner = Some(("apps/v1", "ReplicaSet", "web", uid.as_str()));
    for (name, node) in pods {
        create_owned_pod(client, NS, name, owner, *node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_background_deletes_dependents_of_a_deleted_owner() {
    let (api, client) = start_api().await;
    create_web_rs_with_pods(&client, &[("web-a", None), ("web-b", None)]).await;
    // An owner that never existed, and a pod without owners.
    create_owned_pod(
        &client,
        NS,
        "dangling",
        Some(("apps/v1", "ReplicaSet", "ghost", "no-such-uid")),
        None,
    )
    .await;
    create_owned_pod(&client, NS, "loner", None, None).await;
    // An owner of a kind orch does not serve cannot be checked: kept.
    create_owned_pod(
        &client,
        NS,
        "foreign",
        Some(("example.com/v1", "Widget", "w", "widget-uid")),
        None,
    )
    .await;
    let ctx = start_loop(&client, LoopSettings::default(), garbage_collector::run);

    wait_until(
        "the pod with a missing owner is collected",
        WAIT,
        || async { (!pod_exists(&client, NS, "dangling").await).then_some(()) },
    )
    .await;
    assert!(pod_exists(&client, NS, "web-a").await);
    api.kubectl_ok(&["delete", "replicaset", "web", "--timeout=30s"])
        .await;
    wait_until("the replicaset's pods are collected", WAIT, || async {
        let a = pod_exists(&client, NS, "web-a").await;
        let b = pod_exists(&client, NS, "web-b").await;
        (!a && !b).then_some(())
    })
    .await;
    assert!(pod_exists(&client, NS, "loner").await);
    assert!(pod_exists(&client, NS, "foreign").await);
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_foreground_deletes_dependents_before_the_owner() {
    let (api, client) = start_api().await;
    // web-b is bound to a node: its deletion waits for the (absent) agent.
    create_web_rs_with_pods(&client, &[("web-a", None), ("web-b", Some("node-1"))]).await;
    let ctx = start_loop(&client, LoopSettings::default(), garbage_collector::run);

    api.kubectl_ok(&[
        "delete",
        "replicaset",
        "web",
        "--cascade=foreground",
        "--wait=false",
    ])
    .await;
    wait_until("the unbound pod is deleted", WAIT, || async {
        (!pod_exists(&client, NS, "web-a").await).then_some(())
    })
    .await;
    let terminating = wait_until("the bound pod is terminating", WAIT, || async {
        let pod = client.get::<Pod>(Some(NS), "web-b").await.ok()?;
        pod.metadata.deletion_timestamp.is_some().then_some(pod)
    })
    .await;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    // The owner waits for its blocking dependent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owner: ReplicaSet = client
        .get(Some(NS), "web")
        .await
        .expect("owner still there");
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(owner
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&"foregroundDeletion".to_string()));
    // The agent finishes the pod; then the owner goes.
    client
        .delete_with::<Pod>(Some(NS), "web-b", &json!({"gracePeriodSeconds": 0}))
        .await
        .expect("pod force-deleted");
    wait_until("the owner is deleted", WAIT, || async {
        client
            .get::<ReplicaSet>(Some(NS), "web")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_foreground_cascades_through_replicasets() {
    let (api, client) = start_api().await;
    let deploy: k8s_openapi::api::apps::v1::Deployment = from_json(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}
            }
        }
    }));
    let deploy = client.create(Some(NS), &deploy).await.expect("deployment");
    let mut rs: ReplicaSet = from_json(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-1", "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
            "uid": uid_of(&deploy.metadata), "controller": true, "blockOwnerDeletion": true
        }]},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}
            }
        }
    }));
    rs = client.create(Some(NS), &rs).await.expect("rs");
    let uid = uid_of(&rs.metadata);
    let owner = Some(("apps/v1", "ReplicaSet", "web-1", uid.as_str()));
    create_owned_pod(&client, NS, "web-1-a", owner, None).await;
    create_owned_pod(&client, NS, "web-1-b", owner, Some("node-1")).await;
    let ctx = start_loop(&client, LoopSettings::default(), garbage_collector::run);

    api.kubectl_ok(&[
        "delete",
        "deployment",
        "web",
        "--cascade=foreground",
        "--wait=false",
    ])
    .await;
    // The ReplicaSet is deleted in the foreground too: it waits for its
    // terminating pod, and the Deployment waits for it.
    wait_until(
        "the replicaset waits in foreground deletion",
        WAIT,
        || async {
            let rs: ReplicaSet = client.get(Some(NS), "web-1").await.ok()?;
            let finalizers = rs.metadata.finalizers.unwrap_or_default();
            finalizers
                .contains(&"foregroundDeletion".to_string())
                .then_some(())
        },
    )
    .await;
    wait_until("the bound pod is terminating", WAIT, || async {
        let pod = client.get::<Pod>(Some(NS), "web-1-b").await.ok()?;
        pod.metadata.deletion_timestamp.map(|_| ())
    })
    .await;
    assert!(!pod_exists(&client, NS, "web-1-a").await);
    assert!(client
        .get::<k8s_openapi::api::apps::v1::Deployment>(Some(NS), "web")
        .await
        .is_ok());
    client
        .delete_with::<Pod>(Some(NS), "web-1-b", &json!({"gracePeriodSeconds": 0}))
        .await
        .expect("pod force-deleted");
    wait_until(
        "the replicaset and the deployment are gone",
        WAIT,
        || async {
            let rs = client.get::<ReplicaSet>(Some(NS), "web-1").await;
            let deploy = client
                .get::<k8s_openapi::api::apps::v1::Deployment>(Some(NS), "web")
                .await;
            (rs.is_err() && deploy.is_err()).then_some(())
        },
    )
    .await;
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_orphan_keeps_dependents_without_the_reference() {
    let (api, client) = start_api().await;
    create_web_rs_with_pods(&client, &[("web-a", None), ("web-b", None)]).await;
    let ctx = start_loop(&client, LoopSettings::default(), garbage_collector::run);

    api.kubectl_ok(&[
        "delete",
        "replicaset",
        "web",
        "--cascade=orphan",
        "--timeout=30s",
    ])
    .await;
    wait_until("the owner is deleted", WAIT, || async {
        client
            .get::<ReplicaSet>(Some(NS), "web")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // Give the collector time to (wrongly) act before checking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for name in ["web-a", "web-b"] {
        let pod: Pod = client.get(Some(NS), name).await.expect("pod kept");
        assert!(
            pod.metadata.owner_references.unwrap_or_default().is_empty(),
            "{name} still refers to its deleted owner"
        );
    }
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_delete_removes_contents_then_the_namespace() {
    let (api, client) = start_api().await;
    api.kubectl_ok(&["create", "namespace", "x"]).await;
    let cm: ConfigMap = from_json(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"}, "data": {"a": "1"}
    }));
    client.create(Some("x"), &cm).await.expect("configmap");
    let svc: Service = from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }));
    client.create(Some("x"), &svc).await.expect("service");
    let rs = create_rs(&client, "x", "web").await;
    create_owned_pod(&client, "x", "free", None, None).await;
    // Bound to a node that does not exist: no agent will finish it.
    create_owned_pod(
        &client,
        "x",
        "stuck",
        Some(("apps/v1", "ReplicaSet", "web", &uid_of(&rs.metadata))),
        Some("gone-node"),
    )
    .await;
    let ctx = start_loop(&client, LoopSettings::default(), namespace::run);

    let out = api
        .kubectl_ok(&["delete", "namespace", "x", "--timeout=30s"])
        .await;
    assert!(out.contains("deleted"), "{out}");
    wait_until("the namespace is gone", WAIT, || async {
        client
            .get::<Namespace>(None, "x")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(client
        .list::<Pod>(Some("x"), None)
        .await
        .unwrap()
        .0
        .is_empty());
    assert!(client
        .list::<ConfigMap>(Some("x"), None)
        .await
        .unwrap()
        .0
        .is_empty());
    assert!(client
        .list::<ReplicaSet>(Some("x"), None)
        .await
        .unwrap()
        .0
        .is_empty());
    let gone = api.kubectl(&["get", "namespace", "x"]).await;
    assert!(
        !gone.success && gone.stderr.contains("NotFound"),
        "{gone:?}"
    );
    ctx.stop.cancel();
    api.shutdown().await;
}

async fn create_ready_node(client: &Client, name: &str) {
    let mut node = ready_node(name);
    node["status"]["conditions"][0]["reason"] = json!("KubeletReady");
    loops::create_node(client, node).await;
}

fn micro_now() -> Value {
    serde_json::to_value(MicroTime(
        Timestamp::from_microsecond(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64,
        )
        .unwrap(),
    ))
    .unwrap()
}

async fn renew_lease(client: &Client, node: &str) {
    let patched: Result<Lease, _> = client
        .patch(
            Some("kube-node-lease"),
            node,
            None,
            PatchType::Merge,
            &json!({"spec": {"renewTime": micro_now()}}),
        )
        .await;
    if patched.is_err() {
        let lease: Lease = from_json(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": micro_now()}
        }));
        client
            .create(Some("kube-node-lease"), &lease)
            .await
            .expect("lease created");
    }
}

/// Renews the node's Lease every 200 ms until `stop` is cancelled.
fn keep_renewing(client: &Client, node: &str) -> CancellationToken {
    let stop = CancellationToken::new();
    let (client, node, token) = (client.clone(), node.to_string(), stop.clone());
    tokio::spawn(async move {
        while !token.is_cancelled() {
            renew_lease(&client, &node).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    stop
}

/// A Running, Ready pod bound to `node`, with `tolerations`.
async fn create_running_pod(client: &Client, name: &str, node: &str, tolerations: Value) {
    let pod: Pod = from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "tolerations": tolerations,
            "containers": [{"name": "main", "image": "busybox:1.36"}]
        }
    }));
    client.create(Some(NS), &pod).await.expect("pod created");
    set_pod_phase(client, name, "Running", true).await;
}

/// A Ready node `n1` whose Lease is renewed (until the returned token is
/// cancelled), running pod `pod` without tolerations.
async fn live_node_n1_with_pod(client: &Client, pod: &str) -> CancellationToken {
    create_ready_node(client, "n1").await;
    let renewing = keep_renewing(client, "n1");
    create_running_pod(client, pod, "n1", json!([])).await;
    renewing
}

fn ready_of(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn taints_of(node: &Node) -> Vec<String> {
    let mut taints: Vec<String> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    taints.sort();
    taints
}

fn pod_ready(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_with_expired_lease_is_tainted_and_its_pods_evicted() {
    let (api, client) = start_api().await;
    let renewing = live_node_n1_with_pod(&client, "victim").await;
    create_running_pod(
        &client,
        "stayer",
        "n1",
        json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]),
    )
    .await;
    let ctx = start_loop(&client, LoopSettings::default(), node_lifecycle::run);

    // While the lease is renewed nothing happens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let node: Node = client.get(None, "n1").await.unwrap();
    assert_eq!(ready_of(&node), "True");
    assert!(taints_of(&node).is_empty());
    assert!(pod_exists(&client, NS, "victim").await);

    renewing.cancel();
    let stopped = Instant::now();
    let node = wait_until("the node is Unknown and tainted", WAIT, || async {
        let node: Node = client.get(None, "n1").await.ok()?;
        (ready_of(&node) == "Unknown" && taints_of(&node).len() == 2).then_some(node)
    })
    .await;
    assert_eq!(
        taints_of(&node),
        vec![
            "node.kubernetes.io/unreachable:NoExecute",
            "node.kubernetes.io/unreachable:NoSchedule"
        ]
    );
    let ready = node
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    wait_until("the intolerant pod is deleted", WAIT, || async {
        (!pod_exists(&client, NS, "victim").await).then_some(())
    })
    .await;
    wait_until("an eviction Event names the pod", WAIT, || async {
        let (events, _) = client.list::<Event>(Some(NS), None).await.ok()?;
        events
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("TaintManagerEviction")
                    && e.involved_object.name.as_deref() == Some("victim")
            })
            .then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "eviction took {:?}",
        stopped.elapsed()
    );
    // The tolerating pod stays, marked not Ready.
    let stayer = wait_until("the staying pod is not Ready", WAIT, || async {
        let pod: Pod = client.get(Some(NS), "stayer").await.ok()?;
        (pod_ready(&pod).as_deref() == Some("False")).then_some(pod)
    })
    .await;
    assert!(stayer.metadata.deletion_timestamp.is_none());

    // The agent comes back: it renews its lease and, like a kubelet,
    // posts Ready True whenever the stored status says otherwise.
    let renewing = keep_renewing(&client, "n1");
    wait_until("the taints are removed", WAIT, || async {
        let node: Node = client.get(None, "n1").await.ok()?;
        if ready_of(&node) != "True" {
            let _: Result<Node, _> = client
                .patch(
                    None,
                    "n1",
                    Some("status"),
                    PatchType::Merge,
                    &json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}),
                )
                .await;
            return None;
        }
        taints_of(&node).is_empty().then_some(())
    })
    .await;
    assert!(pod_exists(&client, NS, "stayer").await);
    renewing.cancel();
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_reporting_not_ready_gets_not_ready_taints() {
    let (api, client) = start_api().await;
    let renewing = live_node_n1_with_pod(&client, "web").await;
    let ctx = start_loop(&client, LoopSettings::default(), node_lifecycle::run);

    // The agent is alive (lease renewed) but reports the node not Ready.
    let _: Node = client
        .patch(
            None,
            "n1",
            Some("status"),
            PatchType::Merge,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}}),
        )
        .await
        .unwrap();
    wait_until("not-ready taints", WAIT, || async {
        let node: Node = client.get(None, "n1").await.ok()?;
        (taints_of(&node)
            == vec![
                "node.kubernetes.io/not-ready:NoExecute",
                "node.kubernetes.io/not-ready:NoSchedule",
            ])
        .then_some(())
    })
    .await;
    // Its pod is evicted with its grace period: the live agent finishes it.
    let pod = wait_until("the pod is terminating", WAIT, || async {
        let pod: Pod = client.get(Some(NS), "web").await.ok()?;
        pod.metadata.deletion_timestamp.is_some().then_some(pod)
    })
    .await;
    assert_eq!(pod_ready(&pod).as_deref(), Some("False"));
    let node: Node = client.get(None, "n1").await.unwrap();
    assert_eq!(ready_of(&node), "False", "the agent's report is kept");
    renewing.cancel();
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_deleted_nodes_pods_are_removed() {
    let (api, client) = start_api().await;
    let renewing = live_node_n1_with_pod(&client, "web").await;
    let ctx = start_loop(&client, LoopSettings::default(), node_lifecycle::run);

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pod_exists(&client, NS, "web").await);
    api.kubectl_ok(&["delete", "node", "n1"]).await;
    let deleted = Instant::now();
    wait_until("the deleted node's pod is removed", WAIT, || async {
        (!pod_exists(&client, NS, "web").await).then_some(())
    })
    .await;
    assert!(
        deleted.elapsed() >= Duration::from_millis(1500),
        "removed after {:?}, before the grace period",
        deleted.elapsed()
    );
    renewing.cancel();
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_toleration_seconds_delays_eviction() {
    let (api, client) = start_api().await;
    create_ready_node(&client, "n1").await;
    renew_lease(&client, "n1").await;
    create_running_pod(
        &client,
        "patient",
        "n1",
        json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": 4}]),
    )
    .await;
    create_running_pod(&client, "impatient", "n1", json!([])).await;
    let ctx = start_loop(&client, LoopSettings::default(), node_lifecycle::run);

    wait_until("the node is tainted", WAIT, || async {
        let node: Node = client.get(None, "n1").await.ok()?;
        taints_of(&node)
            .contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
            .then_some(())
    })
    .await;
    let tainted = Instant::now();
    wait_until("the intolerant pod is deleted", WAIT, || async {
        (!pod_exists(&client, NS, "impatient").await).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        pod_exists(&client, NS, "patient").await,
        "a pod tolerating the taint for 4 s was evicted after {:?}",
        tainted.elapsed()
    );
    wait_until("the tolerating pod is evicted", WAIT, || async {
        (!pod_exists(&client, NS, "patient").await).then_some(())
    })
    .await;
    assert!(
        tainted.elapsed() >= Duration::from_millis(3500),
        "evicted after {:?}",
        tainted.elapsed()
    );
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ipam_gives_each_node_a_distinct_range() {
    let (api, client) = start_api().await;
    let settings = LoopSettings {
        cluster_cidr: "10.100.0.0/22".into(),
        node_cidr_prefix: 24,
        ..LoopSettings::default()
    };
    let ctx = start_loop(&client, settings, node_ipam::run);
    let names = ["n1", "n2", "n3", "n4", "n5"];
    futures::future::join_all(names.iter().map(|n| create_ready_node(&client, n))).await;

    let ranges = wait_until("four nodes have ranges", WAIT, || async {
        let (nodes, _) = client.list::<Node>(None, None).await.ok()?;
        let ranges: Vec<(String, String)> = nodes
            .iter()
            .filter_map(|n| {
                let spec = n.spec.as_ref()?;
                let cidr = spec.pod_cidr.clone()?;
                assert_eq!(spec.pod_cidrs.as_deref(), Some(&[cidr.clone()][..]));
                Some((n.metadata.name.clone()?, cidr))
            })
            .collect();
        (ranges.len() == 4).then_some(ranges)
    })
    .await;
    let mut cidrs: Vec<&str> = ranges.iter().map(|(_, c)| c.as_str()).collect();
    cidrs.sort();
    assert_eq!(
        cidrs,
        vec![
            "10.100.0.0/24",
            "10.100.1.0/24",
            "10.100.2.0/24",
            "10.100.3.0/24"
        ]
    );
    let waiting = names
        .iter()
        .find(|n| !ranges.iter().any(|(name, _)| name == *n))
        .unwrap()
        .to_string();
    wait_until("a CIDRNotAvailable event", WAIT, || async {
        let (events, _) = client.list::<Event>(Some(NS), None).await.ok()?;
        events
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.involved_object.name.as_deref() == Some(waiting.as_str())
            })
            .then_some(())
    })
    .await;
    // A node leaves: its range goes to the waiting one.
    let (leaver, freed) = ranges[0].clone();
    api.kubectl_ok(&["delete", "node", &leaver]).await;
    wait_until("the waiting node gets the freed range", WAIT, || async {
        let node: Node = client.get(None, &waiting).await.ok()?;
        (node.spec?.pod_cidr? == freed).then_some(())
    })
    .await;
    ctx.stop.cancel();
    api.shutdown().await;
}

async fn create_web_pod(client: &Client, name: &str, app: &str, ip: &str, ready: bool) {
    let pod: Pod = from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "main", "image": "nginx:1.27",
                            "ports": [{"name": "http", "containerPort": 8080}]}]
        }
    }));
    client.create(Some(NS), &pod).await.expect("pod created");
    set_pod_ready(client, name, ip, ready).await;
}

async fn set_pod_ready(client: &Client, name: &str, ip: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    patch_pod_status(
        client,
        name,
        json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
               "conditions": [{"type": "Ready", "status": status}]}),
    )
    .await;
}

/// (pod name, ip, ready, terminating) of every endpoint of the service's
/// slices, with the slices' ports.
async fn slice_view(
    client: &Client,
    service: &str,
) -> (Vec<(String, String, bool, bool)>, Vec<i32>) {
    let (slices, _) = client
        .list::<EndpointSlice>(
            Some(NS),
            Some(&format!("kubernetes.io/service-name={service}")),
        )
        .await
        .expect("list slices");
    let mut endpoints = Vec::new();
    let mut ports = Vec::new();
    for slice in slices {
        assert_eq!(slice.address_type, "IPv4");
        assert!(slice
            .metadata
            .name
            .unwrap()
            .starts_with(&format!("{service}-")));
        let owner = &slice.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Service", service)
        );
        ports.extend(slice.ports.iter().flatten().filter_map(|p| p.port));
        for e in slice.endpoints {
            let c = e.conditions.unwrap();
            assert_eq!(e.node_name.as_deref(), Some("n1"));
            endpoints.push((
                e.target_ref.unwrap().name.unwrap(),
                e.addresses[0].clone(),
                c.ready.unwrap(),
                c.terminating.unwrap(),
            ));
        }
    }
    endpoints.sort();
    (endpoints, ports)
}

/// (ready ips, not-ready ips) of the legacy Endpoints object.
async fn endpoints_view(client: &Client, service: &str) -> Option<(Vec<String>, Vec<String>)> {
    let ep: Endpoints = client.get(Some(NS), service).await.ok()?;
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for subset in ep.subsets.unwrap_or_default() {
        ready.extend(
            subset
                .addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.ip),
        );
        not_ready.extend(
            subset
                .not_ready_addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.ip),
        );
    }
    ready.sort();
    not_ready.sort();
    Some((ready, not_ready))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_follow_pod_readiness() {
    let (api, client) = start_api().await;
    let svc: Service = from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }));
    client.create(Some(NS), &svc).await.expect("service");
    create_web_pod(&client, "web-1", "web", "10.244.0.11", true).await;
    create_web_pod(&client, "web-2", "web", "10.244.0.12", false).await;
    create_web_pod(&client, "db-1", "db", "10.244.0.13", true).await;
    let ctx = start_loop(&client, LoopSettings::default(), endpoints::run);
    let gc = start_loop(&client, LoopSettings::default(), garbage_collector::run);

    let t = |name: &str, ip: &str, ready: bool, terminating: bool| {
        (name.to_string(), ip.to_string(), ready, terminating)
    };
    wait_until("the slice lists both web pods", WAIT, || async {
        let (endpoints, ports) = slice_view(&client, "web").await;
        (endpoints
            == vec![
                t("web-1", "10.244.0.11", true, false),
                t("web-2", "10.244.0.12", false, false),
            ]
            && ports == vec![8080])
        .then_some(())
    })
    .await;
    wait_until("the Endpoints object agrees", WAIT, || async {
        (endpoints_view(&client, "web").await?
            == (vec!["10.244.0.11".into()], vec!["10.244.0.12".into()]))
            .then_some(())
    })
    .await;

    // Readiness flips both ways.
    set_pod_ready(&client, "web-2", "10.244.0.12", true).await;
    set_pod_ready(&client, "web-1", "10.244.0.11", false).await;
    wait_until("the slice follows readiness", WAIT, || async {
        (slice_view(&client, "web").await.0
            == vec![
                t("web-1", "10.244.0.11", false, false),
                t("web-2", "10.244.0.12", true, false),
            ])
        .then_some(())
    })
    .await;
    wait_until("the Endpoints object follows readiness", WAIT, || async {
        (endpoints_view(&client, "web").await?
            == (vec!["10.244.0.12".into()], vec!["10.244.0.11".into()]))
            .then_some(())
    })
    .await;

    // A terminating pod stays in the slice as terminating, leaves Endpoints.
    client
        .delete::<Pod>(Some(NS), "web-2")
        .await
        .expect("pod deleted");
    wait_until("the terminating pod is marked", WAIT, || async {
        (slice_view(&client, "web").await.0
            == vec![
                t("web-1", "10.244.0.11", false, false),
                t("web-2", "10.244.0.12", false, true),
            ])
        .then_some(())
    })
    .await;
    wait_until("Endpoints drops the terminating pod", WAIT, || async {
        (endpoints_view(&client, "web").await? == (vec![], vec!["10.244.0.11".into()]))
            .then_some(())
    })
    .await;
    // A pod whose labels stop matching leaves.
    let _: Pod = client
        .patch(
            Some(NS),
            "web-1",
            None,
            PatchType::Merge,
            &json!({"metadata": {"labels": {"app": "other"}}}),
        )
        .await
        .unwrap();
    client
        .delete_with::<Pod>(Some(NS), "web-2", &json!({"gracePeriodSeconds": 0}))
        .await
        .unwrap();
    wait_until("the slice is empty", WAIT, || async {
        slice_view(&client, "web").await.0.is_empty().then_some(())
    })
    .await;
    let (slices, _) = client
        .list::<EndpointSlice>(Some(NS), Some("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(slices.len(), 1, "one (empty) slice remains");
    // The Service goes: its Endpoints object goes with it.
    api.kubectl_ok(&["delete", "service", "web"]).await;
    wait_until("the Endpoints object is deleted", WAIT, || async {
        client
            .get::<Endpoints>(Some(NS), "web")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    wait_until(
        "the slices are collected with their Service",
        WAIT,
        || async {
            let (slices, _) = client
                .list::<EndpointSlice>(Some(NS), Some("kubernetes.io/service-name=web"))
                .await
                .ok()?;
            slices.is_empty().then_some(())
        },
    )
    .await;
    gc.stop.cancel();
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_dead_nodes_pods_are_replaced_within_five_seconds() {
    use orch_core::controller::{replicaset, scheduler};
    use orch_core::hollow::{HollowCluster, HollowConfig};

    let (api, client) = start_api().await;
    let hollow = HollowCluster::start(
        client.clone(),
        HollowConfig {
            nodes: 2,
            ..HollowConfig::default()
        },
    )
    .await
    .expect("hollow nodes register");
    let ctx = LoopContext::new(client.clone(), LoopSettings::default());
    tokio::spawn(scheduler::run(ctx.clone()));
    tokio::spawn(replicaset::run(ctx.clone()));
    tokio::spawn(node_lifecycle::run(ctx.clone()));
    tokio::spawn(garbage_collector::run(ctx.clone()));
    let rs: ReplicaSet = from_json(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "nginx:1.27",
                    "resources": {"requests": {"cpu": "100m"}}}]}
            }
        }
    }));
    client.create(Some(NS), &rs).await.expect("rs created");
    // (node, ready) of each live pod of the ReplicaSet.
    let placed = || async {
        let (pods, _) = client
            .list::<Pod>(Some(NS), Some("app=web"))
            .await
            .expect("list pods");
        pods.iter()
            .map(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                let ready = p.metadata.deletion_timestamp.is_none()
                    && pod_ready(p).as_deref() == Some("True");
                (node.unwrap_or_default(), ready)
            })
            .collect::<Vec<_>>()
    };
    let before = wait_until("six ready pods", WAIT, || async {
        let pods = placed().await;
        (pods.len() == 6 && pods.iter().all(|(_, ready)| *ready)).then_some(pods)
    })
    .await;
    let dead = before[0].0.clone();
    assert!(hollow.stop_node(&dead));
    let stopped = Instant::now();
    wait_until("the dead node's pods are replaced", WAIT, || async {
        let pods = placed().await;
        (pods.len() == 6 && pods.iter().all(|(node, ready)| *ready && *node != dead)).then_some(())
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "replacing a dead node's pods took {took:?}"
    );
    ctx.stop.cancel();
    hollow.shutdown().await;
    api.shutdown().await;
}
