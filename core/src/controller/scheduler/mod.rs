//! The scheduler: a control loop over unbound pods (no spec.nodeName,
//! schedulerName absent or `default-scheduler`, not being deleted) that
//! picks a node for each and binds it.
//!
//! Each attempt filters the nodes ([`filter`]: Ready and not cordoned,
//! resources, nodeSelector and node affinity, taints, host ports, pod
//! (anti-)affinity, topology spread) and scores the ones that fit
//! ([`score`]); the best wins, ties broken at random. The cluster view
//! ([`state`]) keeps running totals per node, updated from the pod and
//! node caches, so an attempt costs O(nodes) whatever the number of pods;
//! as in kube-scheduler, a pass over many nodes stops once enough fit.
//!
//! Attempts run one at a time under the view's lock; binds do not: a pod
//! whose node is chosen is "assumed" on it at once (so the next attempt
//! counts it), and the bind (a `pods/binding` create) is written in the
//! background, many at a time, which the store's proposal batcher packs
//! into few Raft entries. The assumption ends when the pod cache shows the
//! pod bound (then the PodScheduled=True condition is written, unless the
//! binding set it), when the bind fails, or after [`ASSUME_TIMEOUT`].
//!
//! A pod that fits nowhere gets the PodScheduled=False condition (reason
//! Unschedulable, kube-scheduler's "0/N nodes are available: ..." message)
//! and a FailedScheduling event, written only when the message changes; it
//! is tried again when a node appears or changes what it offers, when a
//! bound pod goes away, and after a back-off of 5 to 30 seconds.

pub mod filter;
pub mod score;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use self::filter::{unschedulable_message, PodContext};
use self::state::{PodRecord, State};
use super::informer::{key_of, revision_of, Cache, ObjectKey};
use super::queue::Queue;
use super::runner::{Action, ReconcileError};
use super::{util, LoopContext};
use crate::client::Client;
use crate::error::ApiError;
use crate::patch::PatchType;

/// The scheduler name this scheduler serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// How long a bind may go unseen in the pod cache before the assumption
/// is dropped and the pod scheduled again.
pub const ASSUME_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds written at once at most; more attempts wait for one to finish.
pub const MAX_BINDS_IN_FLIGHT: usize = 512;

/// Scheduled events are recorded only while fewer pods than this wait in
/// the queue (under load they would double the writes).
pub const SCHEDULED_EVENTS_BELOW: usize = 32;

/// Waiting pods are re-queued at most this often on cluster changes.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The first and the longest back-off of a pod that fits nowhere.
const UNSCHEDULABLE_BACKOFF: (Duration, Duration) =
    (Duration::from_secs(5), Duration::from_secs(30));

/// The first and the longest back-off after a failed bind.
const BIND_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

fn backoff(bounds: (Duration, Duration), attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    bounds.0.saturating_mul(factor).min(bounds.1)
}

/// True for a pod this scheduler must place: no node yet, our scheduler
/// name, no scheduling gates, not being deleted and not finished.
pub fn needs_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    spec.node_name.as_deref().unwrap_or("").is_empty()
        && matches!(
            spec.scheduler_name.as_deref(),
            None | Some("") | Some(SCHEDULER_NAME)
        )
        && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The node a pod holds resources on: bound and not finished.
fn holding_node(pod: &Pod) -> Option<String> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    (!node.is_empty() && !matches!(phase, Some("Succeeded" | "Failed"))).then(|| node.to_string())
}

/// Binds `pod` to `node` through the pod's `binding` subresource (which
/// refuses a pod that is already bound).
pub async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), ApiError> {
    let namespace = pod.metadata.namespace.as_deref();
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    client
        .create_subresource::<Pod>(namespace, name, "binding", &binding)
        .await?;
    Ok(())
}

/// Sets the PodScheduled=True condition of a pod just bound (the binding
/// subresource leaves the pod's status alone). A pod gone meanwhile is
/// not an error.
pub async fn mark_scheduled(client: &Client, pod: &Pod) -> Result<(), ApiError> {
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "True",
        "reason": null,
        "message": null,
        "lastTransitionTime": crate::object::now_rfc3339(),
        "lastProbeTime": null,
    }]}});
    let namespace = pod.metadata.namespace.as_deref();
    let name = pod.metadata.name.as_deref().unwrap_or("");
    match client
        .patch::<Pod>(
            namespace,
            name,
            Some("status"),
            PatchType::Strategic,
            &patch,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Keys changed in the caches since the view last looked.
#[derive(Default)]
struct Dirty {
    pods: Mutex<HashSet<ObjectKey>>,
    nodes: Mutex<HashSet<ObjectKey>>,
    changed: Notify,
}

struct Scheduler {
    client: Client,
    pods: Cache<Pod>,
    nodes: Cache<Node>,
    namespaces: Cache<Namespace>,
    queue: Queue<ObjectKey>,
    state: Mutex<State>,
    dirty: Arc<Dirty>,
    /// Asks for the waiting pods to be tried again.
    flush: Notify,
    binds: Arc<Semaphore>,
    stop: CancellationToken,
}

/// What an attempt decided.
enum Decision {
    /// Bind to this node.
    Bind(String),
    /// Nothing fits: the message, and the attempts so far.
    Unschedulable(String, u32),
}

/// Runs the scheduler until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let dirty = Arc::new(Dirty::default());
    let mut pods = ctx.informer::<Pod>().start(ctx.stop.clone(), {
        let (queue, dirty) = (queue.clone(), dirty.clone());
        move |pod: &Pod| {
            let key = key_of(&pod.metadata);
            if needs_scheduling(pod) {
                queue.add(key.clone());
            }
            dirty.pods.lock().expect("dirty lock").insert(key);
            dirty.changed.notify_one();
        }
    });
    let mut nodes = ctx.informer::<Node>().start(ctx.stop.clone(), {
        let dirty = dirty.clone();
        move |node: &Node| {
            dirty
                .nodes
                .lock()
                .expect("dirty lock")
                .insert(key_of(&node.metadata));
            dirty.changed.notify_one();
        }
    });
    let namespaces = ctx
        .informer::<Namespace>()
        .start(ctx.stop.clone(), |_: &Namespace| {});
    tokio::select! {
        _ = ctx.stop.cancelled() => return,
        _ = async { pods.wait_until_ready().await; nodes.wait_until_ready().await } => {}
    }
    let scheduler = Arc::new(Scheduler {
        client: ctx.client.clone(),
        pods,
        nodes,
        namespaces,
        queue: queue.clone(),
        state: Mutex::new(State::default()),
        dirty,
        flush: Notify::new(),
        binds: Arc::new(Semaphore::new(MAX_BINDS_IN_FLIGHT)),
        stop: ctx.stop.clone(),
    });
    tokio::spawn(scheduler.clone().follow_caches());
    tokio::spawn(scheduler.clone().requeue_waiting());
    ctx.run("scheduler", queue, move |key| {
        let scheduler = scheduler.clone();
        async move { scheduler.reconcile(key).await }
    })
    .await;
}

impl Scheduler {
    /// Keeps the view current as the caches change, and drops assumptions
    /// that went unseen too long.
    async fn follow_caches(self: Arc<Self>) {
        let mut sweep = tokio::time::interval(ASSUME_TIMEOUT / 4);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.dirty.changed.notified() => self.sync(),
                _ = sweep.tick() => self.sweep(),
            }
        }
    }

    /// Re-queues the pods that fit nowhere when asked, at most once per
    /// [`FLUSH_INTERVAL`].
    async fn requeue_waiting(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.flush.notified() => {}
            }
            let waiting = std::mem::take(&mut self.state.lock().expect("state lock").unschedulable);
            for key in waiting {
                self.queue.add(key);
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
            }
        }
    }

    /// Applies the cache changes not yet in the view.
    fn sync(&self) {
        let pods = std::mem::take(&mut *self.dirty.pods.lock().expect("dirty lock"));
        let nodes = std::mem::take(&mut *self.dirty.nodes.lock().expect("dirty lock"));
        if pods.is_empty() && nodes.is_empty() {
            return;
        }
        let mut flush = false;
        let mut confirmed = Vec::new();
        let mut state = self.state.lock().expect("state lock");
        for name in nodes {
            flush |= state.set_node(&name, self.nodes.get(&name));
        }
        for key in pods {
            let pod = self.pods.get(&key);
            match sync_pod(&mut state, &key, pod.clone()) {
                Change::None => {}
                Change::Freed => flush = true,
                Change::Confirmed => confirmed.extend(pod.filter(|p| !is_marked_scheduled(p))),
            }
        }
        drop(state);
        if flush {
            self.flush.notify_one();
        }
        if !confirmed.is_empty() {
            // Binds this scheduler made are now visible: mark them
            // PodScheduled=True (unless the binding already did).
            let (client, stop) = (self.client.clone(), self.stop.clone());
            tokio::spawn(async move {
                let marks = futures::stream::iter(confirmed).for_each_concurrent(
                    MAX_BINDS_IN_FLIGHT / 4,
                    |pod| {
                        let client = client.clone();
                        async move {
                            if let Err(e) = mark_scheduled(&client, &pod).await {
                                let name = pod.metadata.name.as_deref().unwrap_or("");
                                tracing::warn!(pod = name, error = %e, "bound, but PodScheduled not set");
                            }
                        }
                    },
                );
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = marks => {}
                }
            });
        }
    }

    /// Drops assumptions older than [`ASSUME_TIMEOUT`] whose pod is still
    /// unbound in the cache, and schedules those pods again.
    fn sweep(&self) {
        let mut state = self.state.lock().expect("state lock");
        let expired: Vec<String> = state
            .records
            .iter()
            .filter(|(_, r)| r.assumed.is_some_and(|at| at.elapsed() > ASSUME_TIMEOUT))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            tracing::warn!(pod = %key, "bind not seen in time; scheduling again");
            state.remove(&key);
            self.queue.add(key);
        }
    }

    /// Forgets the assumption about `key` (its bind failed).
    fn forget(&self, key: &str) -> u32 {
        let mut state = self.state.lock().expect("state lock");
        if state.records.get(key).is_some_and(|r| r.assumed.is_some()) {
            state.remove(key);
        }
        let attempts = state.attempts.entry(key.to_string()).or_default();
        *attempts += 1;
        *attempts
    }

    async fn reconcile(self: Arc<Self>, key: ObjectKey) -> Result<Action, ReconcileError> {
        self.sync();
        let Some(pod) = self.pods.get(&key) else {
            return Ok(Action::Done);
        };
        if !needs_scheduling(&pod) {
            return Ok(Action::Done);
        }
        let decision = {
            let mut state = self.state.lock().expect("state lock");
            if state.records.get(&key).is_some_and(|r| r.assumed.is_some()) {
                // Bound a moment ago; the cache has not caught up yet.
                return Ok(Action::Done);
            }
            match self.decide(&mut state, &pod) {
                Ok(node) => {
                    let record = PodRecord::new(pod.clone(), node.clone(), Some(Instant::now()));
                    state.add(&key, record);
                    state.unschedulable.remove(&key);
                    Decision::Bind(node)
                }
                Err(message) => {
                    state.unschedulable.insert(key.clone());
                    let attempts = state.attempts.entry(key.clone()).or_default();
                    *attempts += 1;
                    Decision::Unschedulable(message, *attempts)
                }
            }
        };
        match decision {
            Decision::Bind(node) => {
                let permit = self
                    .binds
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the bind semaphore is never closed");
                let scheduler = self.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = scheduler.stop.cancelled() => {}
                        _ = scheduler.clone().bind_in_background(key, pod, node) => {}
                    }
                    drop(permit);
                });
                Ok(Action::Done)
            }
            Decision::Unschedulable(message, attempts) => {
                self.report_unschedulable(&pod, &message).await?;
                Ok(Action::RequeueAfter(backoff(
                    UNSCHEDULABLE_BACKOFF,
                    attempts,
                )))
            }
        }
    }

    /// Picks a node for `pod` (the view is locked by the caller), or says
    /// why none fits.
    fn decide(&self, state: &mut State, pod: &Arc<Pod>) -> Result<String, String> {
        let namespace_labels = |ns: &str| {
            self.namespaces
                .get(ns)
                .and_then(|n| n.metadata.labels.clone())
        };
        let ctx = PodContext::new(pod.clone(), state, &namespace_labels);
        let (chosen, examined) = pick(&ctx, state)?;
        let n = state.order.len().max(1);
        state.next_start = (state.next_start + examined) % n;
        Ok(chosen)
    }

    async fn bind_in_background(self: Arc<Self>, key: ObjectKey, pod: Arc<Pod>, node: String) {
        match bind(&self.client, &pod, &node).await {
            Ok(()) => {
                if self.queue.len() < SCHEDULED_EVENTS_BELOW {
                    let (ns, name) = util::split_key(&key);
                    let message = format!(
                        "Successfully assigned {}/{name} to {node}",
                        ns.unwrap_or("default")
                    );
                    util::record_event(&self.client, pod.as_ref(), "Normal", "Scheduled", &message)
                        .await;
                }
            }
            Err(e) => {
                let attempts = self.forget(&key);
                let delay = backoff(BIND_BACKOFF, attempts);
                tracing::info!(pod = %key, node = %node, error = %e, ?delay, "bind failed; scheduling again");
                if e.code != 404 {
                    self.queue.add_after(key, delay);
                }
            }
        }
    }

    /// Sets PodScheduled=False (Unschedulable) and records a
    /// FailedScheduling event, unless the pod already says so.
    async fn report_unschedulable(&self, pod: &Pod, message: &str) -> Result<(), ReconcileError> {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        let unchanged = current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        });
        if unchanged {
            return Ok(());
        }
        let since = current
            .filter(|c| c.status == "False")
            .and_then(|c| serde_json::to_value(c).ok())
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(crate::object::now_rfc3339);
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": since,
            "lastProbeTime": null,
        }]}});
        let namespace = pod.metadata.namespace.as_deref();
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let updated = match self
            .client
            .patch::<Pod>(
                namespace,
                name,
                Some("status"),
                PatchType::Strategic,
                &patch,
            )
            .await
        {
            Ok(updated) => updated,
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        util::record_event(&self.client, pod, "Warning", "FailedScheduling", message).await;
        self.pods
            .wait_for_revision(revision_of(&updated.metadata), Duration::from_secs(5))
            .await;
        Ok(())
    }
}

/// What a pod's change in the cache meant to the view.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Nothing that matters to waiting pods.
    None,
    /// Room on a node was freed.
    Freed,
    /// A bind this scheduler assumed is now in the cache.
    Confirmed,
}

/// True if the pod's PodScheduled condition is True.
fn is_marked_scheduled(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "True")
        })
}

/// Brings the view's record of pod `key` in line with the cache.
fn sync_pod(state: &mut State, key: &str, pod: Option<Arc<Pod>>) -> Change {
    if let Some(pod) = pod.as_ref() {
        if let Some(node) = holding_node(pod) {
            let was_assumed = state.records.get(key).is_some_and(|r| r.assumed.is_some());
            state.add(key, PodRecord::new(pod.clone(), node, None));
            state.unschedulable.remove(key);
            state.attempts.remove(key);
            return if was_assumed {
                Change::Confirmed
            } else {
                Change::None
            };
        }
    }
    let waiting = pod.as_ref().is_some_and(|p| needs_scheduling(p));
    if !waiting {
        state.unschedulable.remove(key);
        state.attempts.remove(key);
    }
    match state.records.get(key) {
        // Assumed bound, the bind is not visible yet.
        Some(record) if record.assumed.is_some() && waiting => Change::None,
        Some(_) => match state.remove(key) {
            Some(r) if r.assumed.is_none() => Change::Freed,
            _ => Change::None,
        },
        None => Change::None,
    }
}

/// How many fitting nodes to look for before scoring, out of `n`
/// (kube-scheduler's adaptive percentageOfNodesToScore).
pub fn nodes_to_find(n: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if n <= MIN_FEASIBLE {
        return n;
    }
    let percent = 50usize.saturating_sub(n / 125).max(5);
    (n * percent / 100).max(MIN_FEASIBLE)
}

/// Filters the nodes from `state.next_start` on until enough fit, scores
/// those, and picks the best (ties at random). Returns the node and how
/// many nodes were examined, or the "0/N nodes are available" message.
fn pick(ctx: &PodContext, state: &State) -> Result<(String, usize), String> {
    let n = state.order.len();
    if n == 0 {
        return Err(unschedulable_message(0, &HashMap::new()));
    }
    let wanted = nodes_to_find(n);
    let start = state.next_start % n;
    let mut feasible: Vec<&str> = Vec::new();
    let mut failures: HashMap<String, usize> = HashMap::new();
    let mut examined = 0;
    for i in 0..n {
        let name = state.order[(start + i) % n].as_str();
        examined += 1;
        let Some(info) = state.nodes.get(name) else {
            continue;
        };
        match ctx.check(info) {
            Ok(()) => {
                feasible.push(name);
                if feasible.len() >= wanted {
                    break;
                }
            }
            Err(unfit) => {
                for reason in unfit.reasons() {
                    *failures.entry(reason).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Err(unschedulable_message(n, &failures));
    }
    let scores = score::score(ctx, state, &feasible);
    let mut best = i64::MIN;
    let mut chosen = 0;
    let mut ties = 0u32;
    for (i, s) in scores.iter().enumerate() {
        if *s > best {
            (best, chosen, ties) = (*s, i, 1);
        } else if *s == best {
            ties += 1;
            if rand::random_range(0..ties) == 0 {
                chosen = i;
            }
        }
    }
    Ok((feasible[chosen].to_string(), examined))
}

#[cfg(test)]
mod tests {
    use super::filter::tests::{node, pod, state_with};
    use super::*;

    fn no_labels(_: &str) -> Option<std::collections::BTreeMap<String, String>> {
        None
    }

    fn place(state: &mut State, p: Pod) -> Result<String, String> {
        let key = format!("default/{}", p.metadata.name.as_deref().unwrap());
        let p = Arc::new(p);
        let ctx = PodContext::new(p.clone(), state, &no_labels);
        let (node, examined) = pick(&ctx, state)?;
        state.next_start = (state.next_start + examined) % state.order.len();
        state.add(&key, PodRecord::new(p, node.clone(), Some(Instant::now())));
        Ok(node)
    }

    #[test]
    fn assumed_pods_count_so_a_node_is_not_overcommitted() {
        let mut state = state_with(&[node("n1", &[]), node("n2", &[])]);
        let mut placed = HashMap::<String, usize>::new();
        for i in 0..4 {
            let node = place(&mut state, pod(&format!("p{i}"), "1", &[])).unwrap();
            *placed.entry(node).or_default() += 1;
        }
        assert_eq!(placed.get("n1"), Some(&2));
        assert_eq!(placed.get("n2"), Some(&2));
        let err = place(&mut state, pod("p4", "1", &[])).unwrap_err();
        assert_eq!(err, "0/2 nodes are available: 2 Insufficient cpu.");
    }

    #[test]
    fn pods_without_requests_spread_evenly() {
        let mut state = state_with(&[node("n1", &[]), node("n2", &[]), node("n3", &[])]);
        let mut placed = HashMap::<String, usize>::new();
        for i in 0..9 {
            let node = place(&mut state, pod(&format!("p{i}"), "0", &[])).unwrap();
            *placed.entry(node).or_default() += 1;
        }
        assert_eq!(placed.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
    }

    #[test]
    fn a_bound_pod_replaces_its_assumption_and_a_deleted_one_frees_room() {
        let mut state = state_with(&[node("n1", &[])]);
        let mut p = pod("a", "1", &[]);
        place(&mut state, p.clone()).unwrap();
        // A stale event of the still-unbound pod keeps the assumption.
        assert_eq!(
            sync_pod(&mut state, "default/a", Some(Arc::new(p.clone()))),
            Change::None
        );
        assert_eq!(state.nodes["n1"].requested.cpu, 1000);
        p.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert_eq!(
            sync_pod(&mut state, "default/a", Some(Arc::new(p))),
            Change::Confirmed
        );
        assert!(state.records["default/a"].assumed.is_none());
        assert_eq!(state.nodes["n1"].requested.cpu, 1000);
        assert_eq!(
            sync_pod(&mut state, "default/a", None),
            Change::Freed,
            "deletion frees room"
        );
        assert_eq!(state.nodes["n1"].requested.cpu, 0);
    }

    #[test]
    fn large_clusters_stop_after_enough_fitting_nodes() {
        assert_eq!(nodes_to_find(50), 50);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(100_000), 5000);
    }

    #[test]
    fn unschedulable_pods_back_off_from_5_to_30_seconds() {
        let delays: Vec<u64> = (1..=5)
            .map(|a| backoff(UNSCHEDULABLE_BACKOFF, a).as_secs())
            .collect();
        assert_eq!(delays, vec![5, 10, 20, 30, 30]);
    }
}
