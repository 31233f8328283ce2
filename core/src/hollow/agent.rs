//! What the hollow nodes do, with shared machinery: the informers (pods
//! and nodes, restarted on another endpoint after a failover), the workers
//! that report pods Running or delete them, the task that renews every
//! Lease, and registration.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use tokio::sync::watch;

use super::{objects, HollowError, NodeEntry, Shared, BY_NODE, LEASE_NAMESPACE, RENEW_SLOTS};
use crate::controller::informer::{key_of, revision_of};
use crate::controller::util::split_key;
use crate::controller::{runner, Action, Informer, Metrics, ReconcileError};
use crate::error::ApiError;
use crate::heartbeat::node_is_ready;
use crate::patch::PatchType;

/// How long a worker waits for its own write to reach the cache.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(2);

fn phase_of(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// True for a pod this hollow node has nothing to do for: finished, or
/// Running with its Ready condition True.
fn is_settled(pod: &Pod) -> bool {
    match phase_of(pod) {
        Some("Succeeded" | "Failed") => true,
        Some("Running") => crate::controller::util::is_pod_ready(pod),
        _ => false,
    }
}

/// A pod event: queue the pods of live hollow nodes that need starting,
/// deleting, or (Running but marked not Ready, e.g. while their node was
/// unreachable) reporting Ready again.
fn on_pod(shared: &Shared, pod: &Pod) {
    let Some(node) = node_of(pod).and_then(|n| shared.node(n)) else {
        return;
    };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    if !deleting && is_settled(pod) {
        return;
    }
    let key = key_of(&pod.metadata);
    if !deleting && phase_of(pod) != Some("Running") {
        shared
            .first_seen
            .lock()
            .expect("seen lock")
            .entry(key.clone())
            .or_insert_with(Instant::now);
    }
    if node.is_alive() {
        shared.queue.add(key);
    }
}

/// A node event: a live hollow node that is not Ready reports itself Ready
/// again (as a kubelet posts its status).
fn on_node(shared: &Shared, node: &Node) {
    let Some(name) = node.metadata.name.as_deref() else {
        return;
    };
    if let Some(entry) = shared.node(name) {
        if entry.is_alive() && !node_is_ready(node) {
            shared.queue.add(name.to_string());
        }
    }
}

/// Runs the pod and node informers on the current endpoint; after a
/// failover, starts them afresh on the new one.
pub(crate) async fn informers(shared: Arc<Shared>, mut switched: watch::Receiver<u64>) {
    loop {
        switched.borrow_and_update();
        let (_, client) = shared.endpoints.current();
        let round = shared.stop.child_token();
        let on_pods = shared.clone();
        let pods = Informer::<Pod>::new(client.clone())
            .index(BY_NODE, |pod: &Pod| {
                node_of(pod).map(str::to_string).into_iter().collect()
            })
            .start(round.clone(), move |pod: &Pod| on_pod(&on_pods, pod));
        *shared.pods.write().expect("pods lock") = Some(pods);
        let on_nodes = shared.clone();
        let nodes = Informer::<Node>::new(client)
            .start(round.clone(), move |node: &Node| on_node(&on_nodes, node));
        *shared.node_cache.write().expect("nodes lock") = Some(nodes);
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            changed = switched.changed() => {
                round.cancel();
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The bounded pool of workers handling queued pods and nodes.
pub(crate) async fn workers(shared: Arc<Shared>) {
    let metrics = Arc::new(Metrics::default());
    let queue = shared.queue.clone();
    let workers = shared.config.workers;
    let stop = shared.stop.clone();
    let run = runner::run("hollow-node", queue, workers, metrics, move |key| {
        let shared = shared.clone();
        async move { reconcile(&shared, &key).await }
    });
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = run => {}
    }
}

async fn reconcile(shared: &Shared, key: &str) -> Result<Action, ReconcileError> {
    let result = match split_key(key) {
        (Some(namespace), name) => reconcile_pod(shared, key, namespace, name).await,
        (None, name) => reconcile_node(shared, name).await,
    };
    if result.is_err() {
        shared.counters.pod_errors.fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// A pod of a hollow node: delete it if it is marked for deletion, else
/// report it Running and Ready.
async fn reconcile_pod(
    shared: &Shared,
    key: &str,
    namespace: &str,
    name: &str,
) -> Result<Action, ReconcileError> {
    let Some(pods) = shared.pod_cache() else {
        return Err(ReconcileError::Stale("pod informer not started".into()));
    };
    let Some(pod) = pods.get(key) else {
        shared.first_seen.lock().expect("seen lock").remove(key);
        return Ok(Action::Done);
    };
    let Some(node) = node_of(&pod).and_then(|n| shared.node(n)) else {
        return Ok(Action::Done);
    };
    if !node.is_alive() {
        return Ok(Action::Done);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        // Stop the "containers" at once, then remove the pod for good.
        let options = json!({
            "gracePeriodSeconds": 0,
            "preconditions": {"resourceVersion": pod.metadata.resource_version},
        });
        let deleted = shared
            .endpoints
            .call(|client| {
                let options = &options;
                async move {
                    client
                        .delete_with::<Pod>(Some(namespace), name, options)
                        .await
                }
            })
            .await;
        match deleted {
            Ok(revision) => {
                shared.counters.pods_deleted.fetch_add(1, Ordering::Relaxed);
                shared.first_seen.lock().expect("seen lock").remove(key);
                pods.wait_for_revision(revision, OWN_WRITE_WAIT).await;
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::Done);
    }
    if is_settled(&pod) {
        return Ok(Action::Done);
    }
    let was_running = phase_of(&pod) == Some("Running");
    let pod_cidr = shared
        .node_cache()
        .and_then(|nodes| nodes.get(&node.name))
        .and_then(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.clone()));
    let pod_ip = match pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
        Some(ip) if was_running && !ip.is_empty() => ip,
        _ => {
            let n = node.next_ip.fetch_add(1, Ordering::Relaxed);
            objects::pod_ip(pod_cidr.as_deref(), node.index, n).to_string()
        }
    };
    let host_ip = objects::host_ip(node.index).to_string();
    let patch = objects::running_status(&pod, &host_ip, &pod_ip);
    let patched = shared
        .endpoints
        .call(|client| {
            let patch = &patch;
            async move {
                client
                    .patch::<Pod>(
                        Some(namespace),
                        name,
                        Some("status"),
                        PatchType::Merge,
                        patch,
                    )
                    .await
            }
        })
        .await;
    match patched {
        Ok(pod) => {
            if was_running {
                shared
                    .counters
                    .pod_ready_reports
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                shared.counters.pods_started.fetch_add(1, Ordering::Relaxed);
                shared.record_latency(key);
            }
            pods.wait_for_revision(revision_of(&pod.metadata), OWN_WRITE_WAIT)
                .await;
            Ok(Action::Done)
        }
        Err(e) if e.code == 404 => Ok(Action::Done),
        Err(e) => Err(e.into()),
    }
}

/// A live hollow node that is not Ready posts a Ready status.
async fn reconcile_node(shared: &Shared, name: &str) -> Result<Action, ReconcileError> {
    let Some(entry) = shared.node(name) else {
        return Ok(Action::Done);
    };
    if !entry.is_alive() {
        return Ok(Action::Done);
    }
    let Some(nodes) = shared.node_cache() else {
        return Err(ReconcileError::Stale("node informer not started".into()));
    };
    match nodes.get(name) {
        Some(node) if !node_is_ready(&node) => {}
        _ => return Ok(Action::Done),
    }
    let patch =
        json!({"status": {"conditions": objects::node_conditions(&crate::object::now_rfc3339())}});
    let patched = shared
        .endpoints
        .call(|client| {
            let patch = &patch;
            async move {
                client
                    .patch::<Node>(None, name, Some("status"), PatchType::Merge, patch)
                    .await
            }
        })
        .await;
    match patched {
        Ok(node) => {
            shared
                .counters
                .ready_reports
                .fetch_add(1, Ordering::Relaxed);
            nodes
                .wait_for_revision(revision_of(&node.metadata), OWN_WRITE_WAIT)
                .await;
            Ok(Action::Done)
        }
        Err(e) if e.code == 404 => Ok(Action::Done),
        Err(e) => Err(e.into()),
    }
}

/// Renews every live node's Lease once per interval, each node in its own
/// slot of the interval, with a bound on renewals in flight.
pub(crate) async fn renew_leases(shared: Arc<Shared>) {
    let tick = (shared.config.renew_interval / RENEW_SLOTS as u32).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut slot = 0;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let due: Vec<Arc<NodeEntry>> = shared.slots.read().expect("slots lock")[slot]
            .iter()
            .filter(|n| n.is_alive() && !n.renewing.swap(true, Ordering::AcqRel))
            .cloned()
            .collect();
        slot = (slot + 1) % RENEW_SLOTS;
        for node in due {
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Ok(_permit) = shared.in_flight.clone().acquire_owned().await {
                    if !shared.stop.is_cancelled() && node.is_alive() {
                        renew_one(&shared, &node).await;
                    }
                }
                node.renewing.store(false, Ordering::Release);
            });
        }
    }
}

/// Renews one node's Lease (creating it if it is gone).
pub(crate) async fn renew_one(shared: &Shared, node: &NodeEntry) {
    let name = node.name.as_str();
    let duration = shared.config.lease_duration_seconds;
    let patch = json!({"spec": objects::lease_spec(name, duration)});
    let renewed = shared
        .endpoints
        .call(|client| {
            let patch = &patch;
            async move {
                client
                    .patch::<Lease>(Some(LEASE_NAMESPACE), name, None, PatchType::Merge, patch)
                    .await
                    .map(|_| ())
            }
        })
        .await;
    let renewed = match renewed {
        Err(e) if e.code == 404 => {
            let uid = shared
                .node_cache()
                .and_then(|nodes| nodes.get(name))
                .and_then(|n| n.metadata.uid.clone());
            create_lease(shared, name, uid.as_deref()).await
        }
        other => other,
    };
    match renewed {
        Ok(()) => shared
            .counters
            .lease_renewals
            .fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::debug!(node = name, error = %e, "lease renewal failed");
            shared.counters.lease_errors.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// Creates node `name`'s Lease, or renews it if it exists.
async fn create_lease(shared: &Shared, name: &str, node_uid: Option<&str>) -> Result<(), ApiError> {
    let duration = shared.config.lease_duration_seconds;
    let lease: Lease = serde_json::from_value(objects::lease(name, node_uid, duration))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let created = shared
        .endpoints
        .call(|client| {
            let lease = &lease;
            async move {
                client
                    .create(Some(LEASE_NAMESPACE), lease)
                    .await
                    .map(|_| ())
            }
        })
        .await;
    match created {
        Err(e) if e.code == 409 => {
            let patch = json!({"spec": objects::lease_spec(name, duration)});
            shared
                .endpoints
                .call(|client| {
                    let patch = &patch;
                    async move {
                        client
                            .patch::<Lease>(
                                Some(LEASE_NAMESPACE),
                                name,
                                None,
                                PatchType::Merge,
                                patch,
                            )
                            .await
                            .map(|_| ())
                    }
                })
                .await
        }
        other => other,
    }
}

/// Registers the node with index `index` (its Node and its Lease) and
/// starts handling it; an existing Node of that name is taken over.
pub(crate) async fn register(shared: &Arc<Shared>, index: u64) -> Result<String, HollowError> {
    let name = format!("{}{index}", shared.config.name_prefix);
    let failed = |source: ApiError| HollowError::Register {
        node: name.clone(),
        source,
    };
    let node: Node = serde_json::from_value(objects::node(&shared.config, &name, index))
        .map_err(|e| failed(ApiError::internal(e.to_string())))?;
    let created = shared
        .endpoints
        .call(|client| {
            let node = &node;
            async move { client.create(None, node).await }
        })
        .await;
    let uid = match created {
        Ok(node) => node.metadata.uid,
        Err(e) if e.code == 409 => {
            let patch = json!({"status": objects::node_status(&shared.config, &name, index)});
            let node: Node = shared
                .endpoints
                .call(|client| {
                    let (name, patch) = (&name, &patch);
                    async move {
                        client
                            .patch(None, name, Some("status"), PatchType::Merge, patch)
                            .await
                    }
                })
                .await
                .map_err(failed)?;
            node.metadata.uid
        }
        Err(e) => return Err(failed(e)),
    };
    create_lease(shared, &name, uid.as_deref())
        .await
        .map_err(failed)?;
    let entry = Arc::new(NodeEntry {
        name: name.clone(),
        index,
        alive: std::sync::atomic::AtomicBool::new(true),
        renewing: std::sync::atomic::AtomicBool::new(false),
        next_ip: std::sync::atomic::AtomicU64::new(0),
    });
    shared
        .nodes
        .write()
        .expect("nodes lock")
        .insert(name.clone(), entry.clone());
    shared.slots.write().expect("slots lock")[(index % RENEW_SLOTS as u64) as usize].push(entry);
    // Pods bound to this name before it registered.
    shared.requeue_node(&name);
    Ok(name)
}
