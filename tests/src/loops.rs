//! Fixtures for the control-loop tests: a control plane with a client,
//! loops started on it, Node objects, pod status written the way a node
//! agent would, and waits on the pods a loop keeps.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use orch_core::controller::util::is_pod_active;
use orch_core::controller::{LoopContext, LoopSettings};
use orch_core::patch::PatchType;
use orch_core::Client;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::api::TestApi;
use crate::wait_until;

/// The namespace the loop tests work in.
pub const NS: &str = "default";

/// A typed object from its JSON form; panics if it is not one.
pub fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// A single-master control plane and an in-process client of it.
pub async fn start_api() -> (TestApi, Client) {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    (api, client)
}

/// Starts one loop (`run`, e.g. `statefulset::run`) against `client`;
/// cancel the returned context's `stop` to end it.
pub fn start_loop<F, Fut>(client: &Client, settings: LoopSettings, run: F) -> LoopContext
where
    F: FnOnce(LoopContext) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ctx = LoopContext::new(client.clone(), settings);
    tokio::spawn(run(ctx.clone()));
    ctx
}

/// The JSON of a Ready Node `name` with 4 CPUs, 8 GiB and room for 110
/// pods (capacity = allocatable); callers add labels, taints or reasons.
pub fn ready_node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

/// Creates the Node `node` (e.g. from [`ready_node`]).
pub async fn create_node(client: &Client, node: Value) {
    client
        .create(None, &from_json::<Node>(node))
        .await
        .expect("node created");
}

/// Merges `status` into the status of pod `name` in [`NS`] through the
/// status subresource, as a node agent reports it.
pub async fn patch_pod_status(client: &Client, name: &str, status: Value) {
    let _: Pod = client
        .patch(
            Some(NS),
            name,
            Some("status"),
            PatchType::Merge,
            &json!({ "status": status }),
        )
        .await
        .expect("pod status patched");
}

/// Sets pod `name`'s phase and its Ready condition (see
/// [`patch_pod_status`]).
pub async fn set_pod_phase(client: &Client, name: &str, phase: &str, ready: bool) {
    let ready = if ready { "True" } else { "False" };
    patch_pod_status(
        client,
        name,
        json!({"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}),
    )
    .await;
}

/// The pods in [`NS`] matching the label selector `selector` (none if the
/// list fails).
pub async fn pods_labelled(client: &Client, selector: &str) -> Vec<Pod> {
    client
        .list::<Pod>(Some(NS), Some(selector))
        .await
        .map(|(pods, _)| pods)
        .unwrap_or_default()
}

/// The image of a pod's first container ("" if none).
pub fn image_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .unwrap_or_default()
}

/// Waits (at most `timeout`, naming `what`) until there are exactly
/// `count` active pods in [`NS`] (matching `selector`, if given) and every
/// one passes `check`; returns them.
pub async fn wait_for_pods(
    client: &Client,
    selector: Option<&str>,
    count: usize,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Pod) -> bool,
) -> Vec<Pod> {
    wait_until(what, timeout, || async {
        let (pods, _) = client.list::<Pod>(Some(NS), selector).await.ok()?;
        let active: Vec<Pod> = pods.into_iter().filter(is_pod_active).collect();
        (active.len() == count && active.iter().all(&check)).then_some(active)
    })
    .await
}
