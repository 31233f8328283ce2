//! The ReplicaSet loop: keeps exactly `spec.replicas` active pods owned by
//! each ReplicaSet, as kube-controller-manager's replicaset controller does.
//!
//! Missing pods are created from `spec.template` in slow-start batches
//! (1, 2, 4, ... at once, stopping at the first failure); surplus pods are
//! deleted, unscheduled before scheduled, not-ready before ready, newest
//! first. Orphan pods whose labels match the selector are adopted, owned
//! pods whose labels no longer match are released. Before a reconcile
//! returns it waits until its own writes are in the pod cache, so the next
//! reconcile never counts stale pods (Kubernetes' "expectations").

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::informer::{key_of, revision_of};
use super::util::{self, BY_OWNER};
use super::{Action, Cache, LoopContext, ReconcileError};
use crate::client::Client;
use crate::error::ApiError;
use crate::object::now_secs;
use crate::patch::PatchType;

/// Cache index of pods by namespace.
const BY_NAMESPACE: &str = "namespace";

/// The most pods one reconcile creates or deletes (as Kubernetes' burst).
const BURST: usize = 500;

/// How long a reconcile waits for its own writes to reach its caches.
const CACHE_WAIT: Duration = Duration::from_secs(10);

/// The condition type reporting pods that could not be created or deleted
/// (or a ReplicaSet the loop cannot act on).
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

struct Loop {
    client: Client,
    replicasets: Cache<ReplicaSet>,
    pods: Cache<Pod>,
}

/// Runs the replicaset loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let replicasets = util::watch_primary::<ReplicaSet>(&ctx, &queue);
    let pod_queue = queue.clone();
    let owners = replicasets.clone();
    let pods = ctx
        .informer::<Pod>()
        .index(BY_OWNER, util::owner_uids)
        .index(BY_NAMESPACE, |p: &Pod| {
            p.metadata.namespace.clone().into_iter().collect()
        })
        .start(ctx.stop.clone(), move |pod: &Pod| {
            let ns = pod.metadata.namespace.as_deref();
            match util::controller_of(&pod.metadata) {
                Some(owner) if owner.kind == "ReplicaSet" => {
                    pod_queue.add(util::key(ns, &owner.name));
                }
                Some(_) => {}
                None => {
                    // An orphan: every ReplicaSet that might adopt it.
                    for rs in owners.list() {
                        if rs.metadata.namespace.as_deref() == ns
                            && util::selector_matches(
                                rs.spec.as_ref().map(|s| &s.selector),
                                pod.metadata.labels.as_ref(),
                            )
                        {
                            pod_queue.add(key_of(&rs.metadata));
                        }
                    }
                }
            }
        });
    if !util::wait_ready(&ctx.stop, &[&replicasets, &pods]).await {
        return;
    }
    let state = Arc::new(Loop {
        client: ctx.client.clone(),
        replicasets,
        pods,
    });
    ctx.run("replicaset", queue, move |key| {
        let state = state.clone();
        async move { reconcile(&state, &key).await }
    })
    .await;
}

/// The ReplicaSet's `spec.replicas` (1 when unset).
fn desired_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Why the loop cannot act on a ReplicaSet, if it cannot.
fn bad_spec(rs: &ReplicaSet) -> Option<(&'static str, String)> {
    let spec = rs.spec.as_ref()?;
    let selector = &spec.selector;
    if let Some(problem) = util::empty_selector(selector) {
        return Some(problem);
    }
    let labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref());
    if !util::selector_matches(Some(selector), labels.and_then(|m| m.labels.as_ref())) {
        return Some((
            "SelectorMismatch",
            "spec.selector does not match the labels of spec.template: its pods would not be counted".into(),
        ));
    }
    if spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .is_none()
    {
        return Some(("TemplateMissing", "spec.template.spec is missing".into()));
    }
    None
}

async fn reconcile(state: &Loop, key: &str) -> Result<Action, ReconcileError> {
    let Some(rs) = state.replicasets.get(key) else {
        return Ok(Action::Done);
    };
    let replicas = desired_replicas(&rs);
    if replicas < 0 {
        util::record_event(
            &state.client,
            rs.as_ref(),
            "Warning",
            "InvalidReplicas",
            &format!("spec.replicas is {replicas}: it must not be negative"),
        )
        .await;
        return Ok(Action::Done);
    }
    if let Some((reason, message)) = bad_spec(&rs) {
        util::record_event(&state.client, rs.as_ref(), "Warning", reason, &message).await;
        let mut failure = condition(reason, &message);
        if let Some(old) = failure_condition(&rs).filter(|c| c.reason == failure.reason) {
            failure = old.clone();
        }
        let status = ReplicaSetStatus {
            conditions: Some(vec![failure]),
            observed_generation: rs.metadata.generation,
            ..rs.status.clone().unwrap_or_default()
        };
        write_status(state, &rs, status).await?;
        return Ok(Action::Done);
    }
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let mut revision = 0u64;
    let mut failure: Option<(String, String)> = None;

    // Release pods that no longer match, adopt orphans that do.
    if !deleting {
        let (rev, err) = claim_pods(state, &rs, &uid).await;
        revision = revision.max(rev);
        if let Some(e) = err {
            failure = Some(("FailedClaim".into(), e.to_string()));
        }
    }
    util::wait_written(&state.pods, revision, CACHE_WAIT).await?;

    if !deleting {
        let active: Vec<Arc<Pod>> = owned_pods(&state.pods, &uid)
            .into_iter()
            .filter(|p| util::is_pod_active(p))
            .collect();
        let diff = active.len() as i64 - replicas as i64;
        let (rev, err) = if diff < 0 {
            let count = ((-diff) as usize).min(BURST);
            create_pods(state, &rs, count).await
        } else if diff > 0 {
            let count = (diff as usize).min(BURST);
            delete_pods(state, &rs, active, count).await
        } else {
            (0, None)
        };
        revision = revision.max(rev);
        if let Some((reason, message)) = err {
            util::record_event(&state.client, rs.as_ref(), "Warning", &reason, &message).await;
            failure = Some((reason, message));
        }
    }
    util::wait_written(&state.pods, revision, CACHE_WAIT).await?;

    let (status, next_available) = compute_status(&state.pods, &rs, &uid, failure.as_ref());
    write_status(state, &rs, status).await?;
    if let Some((reason, message)) = failure {
        return Err(ReconcileError::Api(ApiError::internal(format!(
            "{reason}: {message}"
        ))));
    }
    Ok(match next_available {
        Some(delay) => Action::RequeueAfter(delay),
        None => Action::Done,
    })
}

/// Pods whose controller is the ReplicaSet with this uid.
fn owned_pods(pods: &Cache<Pod>, uid: &str) -> Vec<Arc<Pod>> {
    util::controlled_by(pods, uid)
}

/// Adopts matching orphans and releases owned pods that no longer match;
/// returns the newest revision written and the first error.
async fn claim_pods(state: &Loop, rs: &ReplicaSet, uid: &str) -> (u64, Option<ApiError>) {
    let selector = rs.spec.as_ref().map(|s| &s.selector);
    let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
    let mut patches = Vec::new();
    for pod in state.pods.by_index(BY_NAMESPACE, ns) {
        let matches = util::selector_matches(selector, pod.metadata.labels.as_ref());
        let controller = util::controller_of(&pod.metadata);
        let refs = pod.metadata.owner_references.clone().unwrap_or_default();
        let new_refs = match controller {
            Some(owner) if owner.uid == uid && !matches => refs
                .into_iter()
                .filter(|r| r.uid != uid)
                .collect::<Vec<_>>(),
            None if matches && util::is_pod_active(&pod) => {
                let mut refs: Vec<_> = refs.into_iter().filter(|r| r.uid != uid).collect();
                refs.push(util::controller_reference(rs));
                refs
            }
            _ => continue,
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let patch = json!({"metadata": {
            "ownerReferences": new_refs,
            "uid": pod.metadata.uid,
            "resourceVersion": pod.metadata.resource_version,
        }});
        patches.push(async move {
            state
                .client
                .patch::<Pod>(Some(ns), &name, None, PatchType::Merge, &patch)
                .await
        });
    }
    let mut revision = 0;
    let mut error = None;
    for result in join_all(patches).await {
        match result {
            Ok(pod) => revision = revision.max(revision_of(&pod.metadata)),
            Err(e) if e.code == 404 || e.code == 409 => {
                // Gone or changed meanwhile: the next reconcile looks again.
                error.get_or_insert(e);
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    (revision, error)
}

/// A new pod of the ReplicaSet, from its template.
fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let mut pod = util::pod_from_template(rs, &template);
    pod.metadata.finalizers = template.metadata.and_then(|m| m.finalizers);
    pod
}

/// Slow-start batch sizes for `count` creations: 1, 2, 4, ... summing to
/// `count`.
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let mut remaining = count;
    let mut size = 1;
    while remaining > 0 {
        let batch = size.min(remaining);
        batches.push(batch);
        remaining -= batch;
        size *= 2;
    }
    batches
}

/// Creates `count` pods in slow-start batches; stops at the first batch
/// with a failure. Returns the newest revision and the failure.
async fn create_pods(
    state: &Loop,
    rs: &ReplicaSet,
    count: usize,
) -> (u64, Option<(String, String)>) {
    let ns = rs.metadata.namespace.as_deref();
    let pod = pod_from_template(rs);
    let mut revision = 0;
    for batch in slow_start_batches(count) {
        let results = join_all((0..batch).map(|_| state.client.create(ns, &pod))).await;
        let mut failed = None;
        for result in results {
            match result {
                Ok(created) => revision = revision.max(revision_of(&created.metadata)),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return (revision, Some(("FailedCreate".into(), e.message)));
        }
    }
    (revision, None)
}

/// The order pods are deleted in: unscheduled first, then pending before
/// running, not ready before ready, newest first.
fn deletion_rank(pod: &Pod) -> impl Ord {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    (
        scheduled,
        phase,
        util::is_pod_ready(pod),
        Reverse(created),
        Reverse(revision_of(&pod.metadata)),
    )
}

/// Deletes the `count` pods first in deletion order, all at once.
async fn delete_pods(
    state: &Loop,
    rs: &ReplicaSet,
    mut active: Vec<Arc<Pod>>,
    count: usize,
) -> (u64, Option<(String, String)>) {
    let ns = rs.metadata.namespace.as_deref();
    active.sort_by_cached_key(|p| deletion_rank(p));
    let deletions = active.iter().take(count).map(|pod| {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let options = json!({"preconditions": {"uid": pod.metadata.uid}});
        async move { state.client.delete_with::<Pod>(ns, &name, &options).await }
    });
    let mut revision = 0;
    let mut failed = None;
    for result in join_all(deletions).await {
        match result {
            Ok(rev) => revision = revision.max(rev),
            Err(e) if e.code == 404 => {}
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    (
        revision,
        failed.map(|e| ("FailedDelete".to_string(), e.message)),
    )
}

/// The ReplicaFailure condition the ReplicaSet has now.
fn failure_condition(rs: &ReplicaSet) -> Option<&ReplicaSetCondition> {
    rs.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == REPLICA_FAILURE))
}

fn condition(reason: &str, message: &str) -> ReplicaSetCondition {
    ReplicaSetCondition {
        type_: REPLICA_FAILURE.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(util::now_time()),
    }
}

/// The status the ReplicaSet's pods add up to, and when the next ready
/// pod becomes available (if one is waiting out minReadySeconds).
fn compute_status(
    pods: &Cache<Pod>,
    rs: &ReplicaSet,
    uid: &str,
    failure: Option<&(String, String)>,
) -> (ReplicaSetStatus, Option<Duration>) {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0).max(0) as i64;
    let template_labels: BTreeMap<String, String> = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let now = now_secs();
    let mut status = ReplicaSetStatus {
        observed_generation: rs.metadata.generation,
        ..Default::default()
    };
    let (mut replicas, mut labeled, mut ready, mut available) = (0, 0, 0, 0);
    let mut next: Option<Duration> = None;
    for pod in owned_pods(pods, uid) {
        if !util::is_pod_active(&pod) {
            continue;
        }
        replicas += 1;
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            labeled += 1;
        }
        if !util::is_pod_ready(&pod) {
            continue;
        }
        ready += 1;
        let since = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.as_second());
        let ready_for = since.map_or(i64::MAX, |s| now - s);
        if min_ready == 0 || ready_for >= min_ready {
            available += 1;
        } else {
            let wait = Duration::from_secs((min_ready - ready_for).max(1) as u64);
            next = Some(next.map_or(wait, |n| n.min(wait)));
        }
    }
    status.replicas = replicas;
    status.fully_labeled_replicas = Some(labeled);
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    if let Some((reason, message)) = failure {
        // Keep the first transition time while the failure lasts.
        let mut c = condition(reason, message);
        if let Some(old) = failure_condition(rs) {
            c.last_transition_time = old.last_transition_time.clone();
        }
        status.conditions = Some(vec![c]);
    }
    (status, next)
}

/// Writes `status` through the status subresource unless it is current;
/// waits until the write is in the ReplicaSet cache.
async fn write_status(
    state: &Loop,
    rs: &ReplicaSet,
    status: ReplicaSetStatus,
) -> Result<(), ReconcileError> {
    let current = rs.status.clone().unwrap_or_default();
    if current == status {
        return Ok(());
    }
    let mut value = serde_json::to_value(&status).map_err(|e| ApiError::internal(e.to_string()))?;
    // A merge patch needs explicit nulls to clear what is no longer there.
    if status.conditions.is_none() {
        value["conditions"] = serde_json::Value::Null;
    }
    match util::patch_status(&state.client, &state.replicasets, rs, &value, CACHE_WAIT).await {
        Err(ReconcileError::Api(e)) if e.code == 404 => Ok(()),
        result => result.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_doubles_batches() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), vec![1]);
        assert_eq!(slow_start_batches(5), vec![1, 2, 2]);
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
    }
}
