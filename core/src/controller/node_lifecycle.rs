//! The node lifecycle controller: node health from heartbeat Leases,
//! NotReady taints, and eviction of pods from tainted nodes (the taint
//! manager).
//!
//! Node agents renew a `coordination.k8s.io/v1` Lease named after their
//! node in namespace `kube-node-lease`. Every `node_monitor_period` (and at
//! every Node, Lease or bound Pod change) each node is looked at:
//! - its Lease is stale when its `spec.renewTime` has not changed for
//!   `node_monitor_grace`, measured on this controller's own clock from the
//!   moment it saw the change (as Kubernetes does, so clock skew between
//!   agents and masters does not matter; after a leader change every node
//!   gets a full grace period again). A node with no Lease counts from the
//!   moment the controller first saw it;
//! - a stale node gets its Ready condition (and the pressure conditions it
//!   reports) set to Unknown, reason `NodeStatusUnknown`, through the status
//!   subresource;
//! - taints follow the Ready condition: Unknown → `node.kubernetes.io/unreachable`,
//!   False → `node.kubernetes.io/not-ready`, each with effects NoSchedule
//!   and NoExecute; True (and a fresh Lease) → neither;
//! - pods bound to a node that is not Ready get their Ready condition set
//!   to False;
//! - a pod that does not tolerate a NoExecute taint of its node is deleted
//!   at once; one that tolerates it for `tolerationSeconds` is deleted that
//!   long after this controller first saw the taint; one that tolerates it
//!   without `tolerationSeconds` stays.
//!
//! Pods bound to a node that does not exist (for the grace period, and
//! confirmed by a GET) are deleted with `gracePeriodSeconds: 0`, as
//! Kubernetes' pod garbage collector does.
//!
//! Pods deleted from an unreachable node (stale Lease) are deleted with
//! `gracePeriodSeconds: 0`: no agent is left to stop their containers and
//! finish the deletion, and their controllers must be able to replace them.
//! This trades Kubernetes' at-most-one guarantee for pods on partitioned
//! nodes (a partitioned agent may still run the old pod for a while) for
//! prompt replacement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use serde_json::{json, Value};

use super::informer::revision_of;
use super::{util, Action, Cache, LoopContext, ReconcileError};
use crate::client::Client;
use crate::error::ApiError;
use crate::patch::PatchType;

/// The namespace of the nodes' heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Taint key of a node whose agent stopped renewing its Lease.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Taint key of a node whose agent reports Ready False.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// Reason of a Ready condition set to Unknown by this controller.
pub const NODE_STATUS_UNKNOWN: &str = "NodeStatusUnknown";

/// Conditions set to Unknown when a node stops posting its status.
const UNKNOWN_ON_SILENCE: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// Index of pods by the node they are bound to.
const BY_NODE: &str = "node";
/// How long a reconcile waits for its own writes to reach a cache.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// What the controller remembers between reconciles.
#[derive(Default)]
struct Memory {
    /// Per node: the Lease renewTime last seen, and when it was seen to
    /// change.
    renewals: HashMap<String, (Option<String>, Instant)>,
    /// Per `node/taint key/effect`: the taint's `timeAdded` and when this
    /// controller first saw it.
    taints_seen: HashMap<String, (Option<String>, Instant)>,
    /// Per node that pods are bound to but that does not exist: since when
    /// it has been seen missing.
    missing_since: HashMap<String, Instant>,
}

/// The caches and settings one reconcile reads.
#[derive(Clone)]
struct State {
    client: Client,
    nodes: Cache<Node>,
    leases: Cache<Lease>,
    pods: Cache<Pod>,
    memory: Arc<Mutex<Memory>>,
    grace: Duration,
}

/// True when the pods of `node` may need marking or evicting: it is not
/// Ready, or it carries a NoExecute taint.
fn needs_pod_checks(node: &Node) -> bool {
    let ready = condition(node, "Ready").is_some_and(|c| c.status == "True");
    let no_execute = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.effect == "NoExecute"));
    !ready || no_execute
}

/// Runs the node lifecycle controller until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let nodes = util::watch_primary::<Node>(&ctx, &queue);
    let q = queue.clone();
    let leases = ctx
        .informer::<Lease>()
        .namespace(LEASE_NAMESPACE)
        .start(ctx.stop.clone(), {
            let nodes = nodes.clone();
            move |lease: &Lease| {
                // A renewal matters at once only to a node that is not
                // Ready or is tainted (it may recover); for the others the
                // periodic pass notes the renewal.
                let name = lease.metadata.name.clone().unwrap_or_default();
                if nodes.get(&name).is_none_or(|n| needs_pod_checks(&n)) {
                    q.add(name);
                }
            }
        });
    let q = queue.clone();
    let pods = ctx
        .informer::<Pod>()
        .index(BY_NODE, |pod: &Pod| node_of(pod).into_iter().collect())
        .start(ctx.stop.clone(), {
            let nodes = nodes.clone();
            move |pod: &Pod| {
                // A pod only needs its node looked at when the node is gone,
                // not Ready, or tainted NoExecute (eviction); the periodic
                // pass covers nodes that turn stale meanwhile.
                let Some(node) = node_of(pod) else { return };
                if nodes.get(&node).is_none_or(|n| needs_pod_checks(&n)) {
                    q.add(node);
                }
            }
        });
    let state = State {
        client: ctx.client.clone(),
        nodes,
        leases,
        pods,
        memory: Arc::default(),
        grace: ctx.settings.node_monitor_grace,
    };
    // Every period, look at every node's Lease: staleness comes from time
    // passing, not from any event. Only nodes that went stale, or are not
    // Ready or tainted, are reconciled; a healthy node costs a map lookup.
    let period = ctx.settings.node_monitor_period;
    let ticker_state = state.clone();
    let ticker_queue = queue.clone();
    let stop = ctx.stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            for node in ticker_state.nodes.list() {
                let name = node.metadata.name.clone().unwrap_or_default();
                if lease_is_stale(&ticker_state, &name) || needs_pod_checks(&node) {
                    ticker_queue.add(name);
                }
            }
        }
    });
    ctx.run("node-lifecycle", queue, move |key| {
        let state = state.clone();
        async move { reconcile(&state, &key).await }
    })
    .await;
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
}

/// True if the node's Lease has not been seen renewed for the grace period.
fn lease_is_stale(state: &State, name: &str) -> bool {
    let renew = state
        .leases
        .get(&util::key(Some(LEASE_NAMESPACE), name))
        .and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time.clone()))
        .map(|t| t.0.to_string());
    let mut memory = state.memory.lock().expect("node memory lock");
    let now = Instant::now();
    let entry = memory
        .renewals
        .entry(name.to_string())
        .or_insert_with(|| (renew.clone(), now));
    if entry.0 != renew {
        *entry = (renew, now);
    }
    now.duration_since(entry.1) > state.grace
}

async fn reconcile(state: &State, name: &str) -> Result<Action, ReconcileError> {
    let Some(node) = state.nodes.get(name) else {
        {
            let mut memory = state.memory.lock().expect("node memory lock");
            memory.renewals.remove(name);
            let prefix = format!("{name}/");
            memory.taints_seen.retain(|k, _| !k.starts_with(&prefix));
        }
        return collect_orphaned_pods(state, name).await;
    };
    state
        .memory
        .lock()
        .expect("node memory lock")
        .missing_since
        .remove(name);
    let stale = lease_is_stale(state, name);
    if stale {
        mark_unknown(state, &node).await?;
    }
    let ready = if stale {
        Some("Unknown".to_string())
    } else {
        condition(&node, "Ready").map(|c| c.status.clone())
    };
    let taints = update_taints(state, &node, ready.as_deref()).await?;
    let pods = state.pods.by_index(BY_NODE, name);
    if ready.as_deref().is_some_and(|r| r != "True") {
        for pod in &pods {
            mark_pod_not_ready(state, pod).await?;
        }
    }
    evict(state, name, &taints, &pods, stale).await
}

/// Pods bound to a node that does not exist (deleted, or never
/// registered) have no agent: once the node has been missing for the grace
/// period, and a GET confirms it is gone, they are deleted with
/// `gracePeriodSeconds: 0` so their controllers replace them (Kubernetes'
/// pod garbage collector does the same for orphaned pods).
async fn collect_orphaned_pods(state: &State, node: &str) -> Result<Action, ReconcileError> {
    let pods = state.pods.by_index(BY_NODE, node);
    if pods.is_empty() {
        state
            .memory
            .lock()
            .expect("node memory lock")
            .missing_since
            .remove(node);
        return Ok(Action::Done);
    }
    let since = *state
        .memory
        .lock()
        .expect("node memory lock")
        .missing_since
        .entry(node.to_string())
        .or_insert_with(Instant::now);
    let waited = since.elapsed();
    if waited < state.grace {
        return Ok(Action::RequeueAfter(state.grace - waited));
    }
    match state.client.get::<Node>(None, node).await {
        Ok(_) => return Ok(Action::Done),
        Err(e) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    for pod in pods {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        tracing::info!(
            node,
            namespace,
            pod = name,
            "deleting pod of a missing node"
        );
        let options = json!({"gracePeriodSeconds": 0});
        match delete_pod(&state.client, namespace, name, &options).await {
            Ok(rev) => {
                state.pods.wait_for_revision(rev, WRITE_WAIT).await;
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::Done)
}

/// Sets the node's Ready (and pressure) conditions to Unknown.
async fn mark_unknown(state: &State, node: &Node) -> Result<(), ReconcileError> {
    let name = node.metadata.name.as_deref().unwrap_or("");
    let mut conditions: Vec<NodeCondition> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if !conditions.iter().any(|c| c.type_ == "Ready") {
        conditions.push(NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            ..Default::default()
        });
    }
    let now = util::now_time();
    let mut changed = false;
    for c in conditions
        .iter_mut()
        .filter(|c| UNKNOWN_ON_SILENCE.contains(&c.type_.as_str()))
    {
        if c.status == "Unknown" && c.reason.as_deref() == Some(NODE_STATUS_UNKNOWN) {
            continue;
        }
        changed = true;
        if c.status != "Unknown" || c.last_transition_time.is_none() {
            c.last_transition_time = Some(now.clone());
        }
        c.status = "Unknown".into();
        c.reason = Some(NODE_STATUS_UNKNOWN.into());
        c.message = Some("Kubelet stopped posting node status.".into());
    }
    if !changed {
        return Ok(());
    }
    tracing::info!(node = name, "node lease expired: Ready is Unknown");
    let set = if node.status.is_some() {
        json!({"op": "add", "path": "/status/conditions", "value": conditions})
    } else {
        json!({"op": "add", "path": "/status", "value": {"conditions": conditions}})
    };
    let patch = guarded(&node.metadata.resource_version, vec![set]);
    let written: Node = state
        .client
        .patch(None, name, Some("status"), PatchType::Json, &patch)
        .await?;
    state
        .nodes
        .wait_for_revision(revision_of(&written.metadata), WRITE_WAIT)
        .await;
    Ok(())
}

/// A JSON patch that applies only at `resource_version`.
fn guarded(resource_version: &Option<String>, ops: Vec<Value>) -> Value {
    let mut all = vec![json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": resource_version.clone().unwrap_or_default(),
    })];
    all.extend(ops);
    Value::Array(all)
}

fn is_health_taint(t: &Taint) -> bool {
    (t.key == UNREACHABLE_TAINT || t.key == NOT_READY_TAINT)
        && (t.effect == "NoSchedule" || t.effect == "NoExecute")
}

/// Makes the node's health taints follow `ready`; returns the node's taints
/// as written.
async fn update_taints(
    state: &State,
    node: &Node,
    ready: Option<&str>,
) -> Result<Vec<Taint>, ReconcileError> {
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let wanted_key = match ready {
        None => return Ok(current),
        Some("True") => None,
        Some("False") => Some(NOT_READY_TAINT),
        Some(_) => Some(UNREACHABLE_TAINT),
    };
    let now = util::now_time();
    let mut desired: Vec<Taint> = current
        .iter()
        .filter(|t| !is_health_taint(t) || Some(t.key.as_str()) == wanted_key)
        .cloned()
        .collect();
    if let Some(key) = wanted_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !desired.iter().any(|t| t.key == key && t.effect == effect) {
                desired.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: Some(now.clone()),
                    value: None,
                });
            }
        }
    }
    if desired == current {
        return Ok(current);
    }
    let name = node.metadata.name.as_deref().unwrap_or("");
    tracing::info!(node = name, ready, "updating node health taints");
    let set = if node.spec.is_some() {
        json!({"op": "add", "path": "/spec/taints", "value": desired})
    } else {
        json!({"op": "add", "path": "/spec", "value": {"taints": desired}})
    };
    let patch = guarded(&node.metadata.resource_version, vec![set]);
    let written: Node = state
        .client
        .patch(None, name, None, PatchType::Json, &patch)
        .await?;
    state
        .nodes
        .wait_for_revision(revision_of(&written.metadata), WRITE_WAIT)
        .await;
    Ok(written.spec.and_then(|s| s.taints).unwrap_or_default())
}

/// Sets a pod's Ready condition to False (its node is not Ready).
async fn mark_pod_not_ready(state: &State, pod: &Pod) -> Result<(), ReconcileError> {
    let Some(index) = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().position(|c| c.type_ == "Ready"))
    else {
        return Ok(());
    };
    if !util::is_pod_ready(pod) {
        return Ok(());
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let patch = guarded(
        &pod.metadata.resource_version,
        vec![
            json!({"op": "replace", "path": format!("/status/conditions/{index}/status"), "value": "False"}),
            json!({"op": "add", "path": format!("/status/conditions/{index}/lastTransitionTime"), "value": util::now_time()}),
        ],
    );
    match state
        .client
        .patch::<Pod>(
            Some(namespace),
            name,
            Some("status"),
            PatchType::Json,
            &patch,
        )
        .await
    {
        Ok(written) => {
            state
                .pods
                .wait_for_revision(revision_of(&written.metadata), WRITE_WAIT)
                .await;
            Ok(())
        }
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// True if `toleration` tolerates `taint` (Kubernetes' ToleratesTaint).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty()) {
        if key != taint.key {
            return false;
        }
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// How long `pod` may stay on a node with `taints` (NoExecute ones only
/// count): `Some(ZERO)` evict now, `Some(d)` evict d after the taints were
/// added (the latest taint's time), `None` never.
fn eviction_after(pod: &Pod, taints: &[Taint]) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut limit: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // The most permissive matching toleration decides for this taint.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .max()
            .unwrap_or(0)
            .max(0);
        limit = Some(limit.map_or(seconds, |l| l.min(seconds)));
    }
    limit.map(|s| Duration::from_secs(s as u64))
}

/// When this controller first saw the NoExecute taints of `node` (the
/// latest of them), forgetting taints the node no longer has. Tolerations
/// count from there, as in Kubernetes' taint manager: on this controller's
/// monotonic clock, so a new leader gives every pod its full toleration.
fn taints_seen_since(state: &State, node: &str, taints: &[&Taint]) -> Instant {
    let mut memory = state.memory.lock().expect("node memory lock");
    let prefix = format!("{node}/");
    let keys: Vec<String> = taints
        .iter()
        .map(|t| format!("{node}/{}/{}", t.key, t.effect))
        .collect();
    memory
        .taints_seen
        .retain(|k, _| !k.starts_with(&prefix) || keys.contains(k));
    let now = Instant::now();
    let mut since: Option<Instant> = None;
    for (taint, key) in taints.iter().zip(keys) {
        let added = taint.time_added.as_ref().map(|t| t.0.to_string());
        let entry = memory
            .taints_seen
            .entry(key)
            .or_insert_with(|| (added.clone(), now));
        if entry.0 != added {
            *entry = (added, now);
        }
        since = Some(since.map_or(entry.1, |s| s.max(entry.1)));
    }
    since.unwrap_or(now)
}

/// Deletes the pods the node's NoExecute taints evict; forces deletion of
/// pods on an unreachable node. Asks to look again when the next
/// toleration runs out.
async fn evict(
    state: &State,
    node: &str,
    taints: &[Taint],
    pods: &[Arc<Pod>],
    unreachable: bool,
) -> Result<Action, ReconcileError> {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    let since = taints_seen_since(state, node, &no_execute);
    let now = Instant::now();
    let mut next: Option<Duration> = None;
    for pod in pods {
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let evict_now = if terminating {
            // Only an unreachable node's pods need help to finish.
            unreachable
        } else if no_execute.is_empty() {
            false
        } else {
            match eviction_after(pod, taints) {
                None => false,
                Some(after) => match (since + after).checked_duration_since(now) {
                    None => true,
                    Some(left) if left.is_zero() => true,
                    Some(left) => {
                        next = Some(next.map_or(left, |n| n.min(left)));
                        false
                    }
                },
            }
        };
        if !evict_now {
            continue;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let options = if unreachable {
            json!({"gracePeriodSeconds": 0})
        } else {
            Value::Null
        };
        tracing::info!(node, namespace, pod = name, unreachable, "evicting pod");
        match delete_pod(&state.client, namespace, name, &options).await {
            Ok(rev) => {
                if !terminating {
                    let why = if unreachable {
                        "unreachable"
                    } else {
                        "not ready"
                    };
                    util::record_event(
                        &state.client,
                        pod.as_ref(),
                        "Normal",
                        "TaintManagerEviction",
                        &format!(
                            "Marking for deletion Pod {namespace}/{name}: node {node} is {why}"
                        ),
                    )
                    .await;
                }
                state.pods.wait_for_revision(rev, WRITE_WAIT).await;
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match next {
        Some(delay) => Action::RequeueAfter(delay),
        None => Action::Done,
    })
}

async fn delete_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    options: &Value,
) -> Result<u64, ApiError> {
    client
        .delete_with::<Pod>(Some(namespace), name, options)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn pod_tolerating(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let t = taint(UNREACHABLE_TAINT, "NoExecute");
        let exists_all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists_all, &t));
        let other_effect = Toleration {
            key: Some(UNREACHABLE_TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        assert!(!tolerates(&other_effect, &t));
        let equal_empty = Toleration {
            key: Some(UNREACHABLE_TAINT.into()),
            ..Default::default()
        };
        assert!(tolerates(&equal_empty, &t));
    }

    #[test]
    fn eviction_delay_is_the_smallest_toleration() {
        let taints = vec![
            taint(UNREACHABLE_TAINT, "NoExecute"),
            taint(UNREACHABLE_TAINT, "NoSchedule"),
        ];
        assert_eq!(
            eviction_after(&pod_tolerating(vec![]), &taints),
            Some(Duration::ZERO)
        );
        let for_a_while = Toleration {
            key: Some(UNREACHABLE_TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(7),
            ..Default::default()
        };
        assert_eq!(
            eviction_after(&pod_tolerating(vec![for_a_while.clone()]), &taints),
            Some(Duration::from_secs(7))
        );
        let forever = Toleration {
            toleration_seconds: None,
            ..for_a_while
        };
        assert_eq!(
            eviction_after(&pod_tolerating(vec![forever]), &taints),
            None
        );
    }
}
