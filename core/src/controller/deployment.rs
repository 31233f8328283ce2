//! The Deployment loop, as kube-controller-manager's deployment controller:
//! a Deployment owns ReplicaSets, one per pod template (told apart by the
//! `pod-template-hash` label), and moves pods from the old ones to the new
//! one by its strategy — RollingUpdate within maxSurge/maxUnavailable, or
//! Recreate (old pods gone first). Each ReplicaSet carries the revision it
//! was last rolled out at (`deployment.kubernetes.io/revision`); a template
//! that matches an old ReplicaSet reuses it at a new revision, which is
//! what `kubectl rollout undo` relies on. The status is what `kubectl
//! rollout status` reads.

pub mod arith;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::informer::{key_of, revision_of};
use super::util::{self, BY_OWNER};
use super::{Action, Cache, LoopContext, ReconcileError};
use crate::client::Client;
use crate::error::ApiError;
use crate::object::now_secs;
use crate::patch::PatchType;

/// The label that tells a Deployment's ReplicaSets (and their pods) apart.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The revision a ReplicaSet was last rolled out at (also on the Deployment).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a reused ReplicaSet.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when a ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas + maxSurge when a ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Annotations of a Deployment that are not copied to its ReplicaSets.
const SKIPPED_ANNOTATIONS: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

const BY_NAMESPACE: &str = "namespace";
const CACHE_WAIT: Duration = Duration::from_secs(10);

const PROGRESSING: &str = "Progressing";
const AVAILABLE: &str = "Available";
const REPLICA_FAILURE: &str = "ReplicaFailure";

struct Loop {
    client: Client,
    deployments: Cache<Deployment>,
    replicasets: Cache<ReplicaSet>,
    pods: Cache<Pod>,
}

/// The Deployment that controls a ReplicaSet, by cache key.
fn deployment_key_of(rs: &ReplicaSet) -> Option<String> {
    let owner = util::controller_of(&rs.metadata)?;
    (owner.kind == "Deployment").then(|| util::key(rs.metadata.namespace.as_deref(), &owner.name))
}

/// Runs the deployment loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let deployments = ctx
        .informer::<Deployment>()
        .index(BY_NAMESPACE, |d: &Deployment| {
            d.metadata.namespace.clone().into_iter().collect()
        })
        .start(ctx.stop.clone(), util::enqueue_self(&queue));
    let q = queue.clone();
    let owners = deployments.clone();
    let replicasets = ctx
        .informer::<ReplicaSet>()
        .index(BY_OWNER, util::owner_uids)
        .index(BY_NAMESPACE, |rs: &ReplicaSet| {
            rs.metadata.namespace.clone().into_iter().collect()
        })
        .start(ctx.stop.clone(), move |rs: &ReplicaSet| {
            if let Some(key) = deployment_key_of(rs) {
                q.add(key);
            } else if util::controller_of(&rs.metadata).is_none() {
                let ns = rs.metadata.namespace.clone().unwrap_or_default();
                for d in owners.by_index(BY_NAMESPACE, &ns) {
                    let selector = d.spec.as_ref().map(|s| &s.selector);
                    if util::selector_matches(selector, rs.metadata.labels.as_ref()) {
                        q.add(key_of(&d.metadata));
                    }
                }
            }
        });
    // Pods matter only to Recreate, which waits for the old ones to go.
    let q = queue.clone();
    let rs_cache = replicasets.clone();
    let d_cache = deployments.clone();
    let pods = ctx
        .informer::<Pod>()
        .index(BY_OWNER, util::owner_uids)
        .start(ctx.stop.clone(), move |pod: &Pod| {
            let Some(owner) = util::controller_of(&pod.metadata) else {
                return;
            };
            let rs_key = util::key(pod.metadata.namespace.as_deref(), &owner.name);
            let Some(key) = rs_cache.get(&rs_key).and_then(|rs| deployment_key_of(&rs)) else {
                return;
            };
            let recreate = d_cache
                .get(&key)
                .is_some_and(|d| strategy_type(&d) == "Recreate");
            if recreate {
                q.add(key);
            }
        });
    if !util::wait_ready(&ctx.stop, &[&deployments, &replicasets, &pods]).await {
        return;
    }
    let state = Arc::new(Loop {
        client: ctx.client.clone(),
        deployments,
        replicasets,
        pods,
    });
    ctx.run("deployment", queue, move |key| {
        let state = state.clone();
        async move { reconcile(&state, &key).await }
    })
    .await;
}

fn strategy_type(d: &Deployment) -> &str {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
}

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn available_of(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The revision annotation of an object (0 when it has none).
pub fn revision(meta: &ObjectMeta) -> i64 {
    annotation(meta, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// maxSurge and maxUnavailable of a Deployment (0 and 0 for Recreate).
fn fenceposts(d: &Deployment) -> Result<(i32, i32), String> {
    if strategy_type(d) != "RollingUpdate" {
        return Ok((0, 0));
    }
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    arith::resolve_fenceposts(
        rolling.and_then(|r| r.max_surge.as_ref()),
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        desired(d),
    )
}

/// The pods a ReplicaSet may have right now: the larger of what it is
/// asked for and what it still has (old pods not yet deleted count).
fn pods_upper_bound(pods: &Cache<Pod>, rs: &ReplicaSet) -> i32 {
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let cached = pods
        .by_index(BY_OWNER, uid)
        .iter()
        .filter(|p| util::is_pod_active(p))
        .count() as i32;
    replicas_of(rs).max(status_replicas(rs)).max(cached)
}

/// FNV-1a (32 bits), as Kubernetes hashes pod templates.
fn fnv32a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= *b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The `pod-template-hash` of a template (with the Deployment's collision
/// count), encoded like Kubernetes' `SafeEncodeString`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let normal = serde_json::to_value(template).ok().and_then(pruned);
    let mut bytes = serde_json::to_vec(&normal).unwrap_or_default();
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&(count as u32).to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// The template without its `pod-template-hash` label.
fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
    }
    t
}

/// Drops nulls, empty objects and empty arrays, so that a template written
/// by a client that spells out empty values (`resources: {}`,
/// `creationTimestamp: null`) equals one that leaves them out, as
/// Kubernetes' semantic equality has it.
fn pruned(value: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> = map
                .into_iter()
                .filter_map(|(k, v)| pruned(v).map(|v| (k, v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items
                .into_iter()
                .map(|v| pruned(v).unwrap_or(Value::Null))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        other => Some(other),
    }
}

/// True when two templates differ at most in `pod-template-hash` (and in
/// empty values spelled out or left out).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let normal = |t: &PodTemplateSpec| serde_json::to_value(without_hash(t)).ok().and_then(pruned);
    normal(a) == normal(b)
}

fn condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let t = util::now_time();
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(t.clone()),
        last_transition_time: Some(t),
    }
}

fn get_condition<'a>(
    conditions: &'a [DeploymentCondition],
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets a condition as Kubernetes does: unchanged if status and reason are
/// the same, the transition time kept if only the reason changed.
fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut new: DeploymentCondition) {
    if let Some(current) = get_condition(conditions, &new.type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

/// What a reconcile found out about a Deployment's ReplicaSets.
struct Sets {
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
}

impl Sets {
    fn all(&self) -> Vec<&ReplicaSet> {
        self.new.iter().chain(self.old.iter()).collect()
    }
}

/// How the Progressing condition moves in this reconcile.
#[derive(PartialEq)]
enum Progress {
    /// Only counts change (paused, scaling).
    SyncOnly,
    /// A rollout step; `created` names a ReplicaSet made just now.
    Rollout { created: Option<String> },
}

async fn reconcile(state: &Loop, key: &str) -> Result<Action, ReconcileError> {
    let Some(d) = state.deployments.get(key) else {
        return Ok(Action::Done);
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let Some(spec) = d.spec.as_ref() else {
        return Ok(Action::Done);
    };
    if let Some((reason, message)) = bad_spec(&d) {
        util::record_event(&state.client, d.as_ref(), "Warning", reason, &message).await;
        let mut status = d.status.clone().unwrap_or_default();
        let mut conditions = status.conditions.clone().unwrap_or_default();
        set_condition(
            &mut conditions,
            condition(REPLICA_FAILURE, "True", reason, message),
        );
        status.conditions = Some(conditions);
        status.observed_generation = d.metadata.generation;
        write_status(state, &d, status).await?;
        return Ok(Action::Done);
    }
    let rs_list = claim_replicasets(state, &d).await?;

    if spec.paused == Some(true) || is_scaling_event(&d, &rs_list) {
        let sets = find_sets(state, &d, rs_list, false).await?;
        let sets = scale(state, &d, sets).await?;
        if spec.paused == Some(true) {
            cleanup(state, &d, &sets).await?;
        }
        return sync_status(state, &d, &sets, Progress::SyncOnly).await;
    }
    if strategy_type(&d) == "Recreate" {
        rollout_recreate(state, &d, rs_list).await
    } else {
        rollout_rolling(state, &d, rs_list).await
    }
}

/// Why the loop cannot act on a Deployment, if it cannot.
fn bad_spec(d: &Deployment) -> Option<(&'static str, String)> {
    let spec = d.spec.as_ref()?;
    let selector = &spec.selector;
    if let Some(problem) = util::empty_selector(selector) {
        return Some(problem);
    }
    if let Some(problem) = util::template_mismatch(selector, &spec.template) {
        return Some(problem);
    }
    if desired(d) < 0 {
        return Some((
            "InvalidReplicas",
            format!("spec.replicas is {}: it must not be negative", desired(d)),
        ));
    }
    if let Err(e) = fenceposts(d) {
        return Some((
            "InvalidStrategy",
            format!("spec.strategy.rollingUpdate.{e}"),
        ));
    }
    None
}

/// The ReplicaSets the Deployment controls, after adopting matching
/// orphans and releasing owned ones that no longer match.
async fn claim_replicasets(
    state: &Loop,
    d: &Deployment,
) -> Result<Vec<ReplicaSet>, ReconcileError> {
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    let ns = d.metadata.namespace.as_deref().unwrap_or("default");
    let selector = d.spec.as_ref().map(|s| &s.selector);
    let mut owned = Vec::new();
    let mut revision = 0;
    for rs in state.replicasets.by_index(BY_NAMESPACE, ns) {
        let matches = util::selector_matches(selector, rs.metadata.labels.as_ref());
        let controller = util::controller_of(&rs.metadata);
        let refs = rs.metadata.owner_references.clone().unwrap_or_default();
        let new_refs = match controller {
            Some(owner) if owner.uid == uid && matches => {
                owned.push(rs.as_ref().clone());
                continue;
            }
            Some(owner) if owner.uid == uid => refs
                .into_iter()
                .filter(|r| r.uid != uid)
                .collect::<Vec<_>>(),
            None if matches && rs.metadata.deletion_timestamp.is_none() => {
                let mut refs: Vec<_> = refs.into_iter().filter(|r| r.uid != uid).collect();
                refs.push(util::controller_reference(d));
                refs
            }
            _ => continue,
        };
        let patch = json!({"metadata": {
            "ownerReferences": new_refs,
            "resourceVersion": rs.metadata.resource_version,
        }});
        let name = rs.metadata.name.as_deref().unwrap_or_default();
        let updated = state
            .client
            .patch::<ReplicaSet>(Some(ns), name, None, PatchType::Merge, &patch)
            .await?;
        revision = revision.max(revision_of(&updated.metadata));
        if util::controller_of(&updated.metadata).is_some_and(|o| o.uid == uid) {
            owned.push(updated);
        }
    }
    wait_rs(state, revision).await?;
    Ok(owned)
}

async fn wait_rs(state: &Loop, revision: u64) -> Result<(), ReconcileError> {
    util::wait_written(&state.replicasets, revision, CACHE_WAIT).await
}

/// Merge-patches `rs` and waits until the write is in the ReplicaSet
/// cache; returns it as written.
async fn patch_rs(
    state: &Loop,
    rs: &ReplicaSet,
    patch: &serde_json::Value,
) -> Result<ReplicaSet, ReconcileError> {
    let ns = rs.metadata.namespace.as_deref();
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    let updated = state
        .client
        .patch::<ReplicaSet>(ns, name, None, PatchType::Merge, patch)
        .await?;
    wait_rs(state, revision_of(&updated.metadata)).await?;
    Ok(updated)
}

/// A scaling event: some active ReplicaSet was last sized for another
/// number of replicas than the Deployment asks for now.
fn is_scaling_event(d: &Deployment, rs_list: &[ReplicaSet]) -> bool {
    let want = desired(d).to_string();
    rs_list
        .iter()
        .filter(|rs| replicas_of(rs) > 0)
        .filter_map(|rs| annotation(&rs.metadata, DESIRED_REPLICAS))
        .any(|v| v != want)
}

/// Splits the ReplicaSets into the new one (template equal to the
/// Deployment's) and the old ones; with `create`, makes the new one when
/// there is none. Keeps revisions and copied annotations current.
async fn find_sets(
    state: &Loop,
    d: &Deployment,
    mut rs_list: Vec<ReplicaSet>,
    create: bool,
) -> Result<Sets, ReconcileError> {
    let spec = d.spec.as_ref().expect("checked by reconcile");
    rs_list.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.clone(),
            rs.metadata.name.clone(),
        )
    });
    let position = rs_list.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignore_hash(t, &spec.template))
    });
    let existing = position.map(|i| rs_list.remove(i));
    let old = rs_list;
    let max_old = old
        .iter()
        .map(|rs| revision(&rs.metadata))
        .max()
        .unwrap_or(0);
    let new_revision = max_old + 1;
    let new = match existing {
        Some(rs) => Some(sync_new_annotations(state, d, rs, new_revision).await?),
        None if create => Some(create_new(state, d, &old, new_revision).await?),
        None => None,
    };
    if let Some(rs) = &new {
        let rev = revision(&rs.metadata).to_string();
        if annotation(&d.metadata, REVISION) != Some(rev.as_str()) {
            let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
            let ns = d.metadata.namespace.as_deref();
            let name = d.metadata.name.as_deref().unwrap_or_default();
            state
                .client
                .patch::<Deployment>(ns, name, None, PatchType::Merge, &patch)
                .await?;
        }
    }
    Ok(Sets { new, old })
}

/// The annotations the new ReplicaSet gets from its Deployment.
fn copied_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !SKIPPED_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Moves an existing new ReplicaSet to the current revision (when it is an
/// old one reused) and copies the Deployment's annotations and
/// minReadySeconds onto it.
async fn sync_new_annotations(
    state: &Loop,
    d: &Deployment,
    rs: ReplicaSet,
    new_revision: i64,
) -> Result<ReplicaSet, ReconcileError> {
    let mut wanted: BTreeMap<String, serde_json::Value> = copied_annotations(d)
        .into_iter()
        .filter(|(k, v)| annotation(&rs.metadata, k) != Some(v.as_str()))
        .map(|(k, v)| (k, json!(v)))
        .collect();
    let current = revision(&rs.metadata);
    if current < new_revision {
        wanted.insert(REVISION.into(), json!(new_revision.to_string()));
        if current > 0 {
            let history = match annotation(&rs.metadata, REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{current}"),
                _ => current.to_string(),
            };
            wanted.insert(REVISION_HISTORY.into(), json!(history));
        }
    }
    let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
    let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
    if wanted.is_empty() && min_ready.unwrap_or(0) == rs_min_ready.unwrap_or(0) {
        return Ok(rs);
    }
    let mut patch = json!({"metadata": {"annotations": wanted}});
    if min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0) {
        patch["spec"] = json!({"minReadySeconds": min_ready});
    }
    patch_rs(state, &rs, &patch).await
}

/// Creates the new ReplicaSet for the Deployment's template.
async fn create_new(
    state: &Loop,
    d: &Deployment,
    old: &[ReplicaSet],
    new_revision: i64,
) -> Result<ReplicaSet, ReconcileError> {
    let spec = d.spec.as_ref().expect("checked by reconcile");
    let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collision_count);
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let (surge, _) = fenceposts(d).map_err(ApiError::bad_request)?;
    let want = desired(d);
    let replicas = if strategy_type(d) == "RollingUpdate" {
        let total: i32 = old.iter().map(|rs| pods_upper_bound(&state.pods, rs)).sum();
        arith::new_rs_replicas(want, surge, total, 0)
    } else {
        want
    };
    let mut annotations = copied_annotations(d);
    annotations.insert(REVISION.into(), new_revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
    annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
    let d_name = d.metadata.name.clone().unwrap_or_default();
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{d_name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![util::controller_reference(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let ns = d.metadata.namespace.as_deref();
    match state.client.create(ns, &rs).await {
        Ok(created) => {
            wait_rs(state, revision_of(&created.metadata)).await?;
            util::record_event(
                &state.client,
                d,
                "Normal",
                "ScalingReplicaSet",
                &format!(
                    "Scaled up replica set {} from 0 to {replicas}",
                    created.metadata.name.as_deref().unwrap_or_default()
                ),
            )
            .await;
            Ok(created)
        }
        Err(e) if e.code == 409 => {
            let name = rs.metadata.name.as_deref().unwrap_or_default();
            let existing: ReplicaSet = state.client.get(ns, name).await?;
            let ours = util::controller_of(&existing.metadata)
                .is_some_and(|o| Some(&o.uid) == d.metadata.uid.as_ref());
            let same = existing
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &spec.template));
            if ours && same {
                // Ours already; the cache had not caught up.
                wait_rs(state, revision_of(&existing.metadata)).await?;
                return Ok(existing);
            }
            // A hash collision: count it, so the next hash differs.
            let count = collision_count.unwrap_or(0) + 1;
            let patch = json!({"status": {"collisionCount": count}});
            let name = d.metadata.name.as_deref().unwrap_or_default();
            state
                .client
                .patch::<Deployment>(ns, name, Some("status"), PatchType::Merge, &patch)
                .await?;
            Err(ReconcileError::Stale(format!(
                "pod-template-hash {hash} collides with replica set {name}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets a ReplicaSet's replicas (and the sizing annotations); returns it
/// as written.
async fn scale_rs(
    state: &Loop,
    d: &Deployment,
    rs: &ReplicaSet,
    replicas: i32,
) -> Result<ReplicaSet, ReconcileError> {
    let want = desired(d);
    let (surge, _) = fenceposts(d).map_err(ApiError::bad_request)?;
    let desired_s = want.to_string();
    let max_s = (want + surge).to_string();
    if replicas_of(rs) == replicas
        && annotation(&rs.metadata, DESIRED_REPLICAS) == Some(desired_s.as_str())
        && annotation(&rs.metadata, MAX_REPLICAS) == Some(max_s.as_str())
    {
        return Ok(rs.clone());
    }
    let patch = json!({
        "metadata": {"annotations": {DESIRED_REPLICAS: desired_s, MAX_REPLICAS: max_s}},
        "spec": {"replicas": replicas},
    });
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    let updated = patch_rs(state, rs, &patch).await?;
    let before = replicas_of(rs);
    if before != replicas {
        let direction = if replicas > before { "up" } else { "down" };
        util::record_event(
            &state.client,
            d,
            "Normal",
            "ScalingReplicaSet",
            &format!("Scaled {direction} replica set {name} from {before} to {replicas}"),
        )
        .await;
    }
    Ok(updated)
}

/// Scales for a changed `spec.replicas` (or while paused), spreading the
/// change over the active ReplicaSets in proportion to their size.
async fn scale(state: &Loop, d: &Deployment, mut sets: Sets) -> Result<Sets, ReconcileError> {
    let want = desired(d);
    let active: Vec<&ReplicaSet> = sets
        .all()
        .into_iter()
        .filter(|rs| replicas_of(rs) > 0)
        .collect();
    // One active ReplicaSet (or none): it takes everything.
    let only = match active.len() {
        0 => sets.new.as_ref().or_else(|| {
            sets.old
                .iter()
                .max_by_key(|rs| rs.metadata.creation_timestamp.clone())
        }),
        1 => Some(active[0]),
        _ => None,
    };
    let target = only.map(|rs| rs.metadata.uid.clone());
    if let Some(uid) = target {
        let rs = sets
            .all()
            .into_iter()
            .find(|rs| rs.metadata.uid == uid)
            .cloned();
        if let Some(rs) = rs {
            let updated = scale_rs(state, d, &rs, want).await?;
            replace_in(&mut sets, updated);
        }
        return Ok(sets);
    }
    let saturated = sets.new.as_ref().is_some_and(|rs| {
        replicas_of(rs) == want
            && annotation(&rs.metadata, DESIRED_REPLICAS) == Some(want.to_string().as_str())
            && available_of(rs) == want
    });
    if saturated {
        for i in 0..sets.old.len() {
            if replicas_of(&sets.old[i]) > 0 {
                let updated = scale_rs(state, d, &sets.old[i].clone(), 0).await?;
                sets.old[i] = updated;
            }
        }
        return Ok(sets);
    }
    if strategy_type(d) != "RollingUpdate" {
        return Ok(sets);
    }
    // Proportional scaling, as Kubernetes does it.
    let (surge, _) = fenceposts(d).map_err(ApiError::bad_request)?;
    let mut active: Vec<ReplicaSet> = sets
        .all()
        .into_iter()
        .filter(|rs| replicas_of(rs) > 0)
        .cloned()
        .collect();
    let current: i32 = active.iter().map(replicas_of).sum();
    let allowed = if want > 0 { want + surge } else { 0 };
    let to_add = allowed - current;
    if to_add == 0 {
        return Ok(sets);
    }
    if to_add > 0 {
        active.sort_by_key(|rs| std::cmp::Reverse(replicas_of(rs)));
    } else {
        active.sort_by_key(replicas_of);
    }
    let d_status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::new();
    for rs in &active {
        let size = replicas_of(rs);
        let fraction = if want == 0 {
            -size
        } else {
            let annotated = annotation(&rs.metadata, MAX_REPLICAS)
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(d_status_replicas)
                .max(1);
            let new_size =
                (size as i64 * (want + surge) as i64 + annotated as i64 - 1) / annotated as i64;
            new_size as i32 - size
        };
        let left = to_add - added;
        let proportion = if to_add > 0 {
            fraction.min(left)
        } else {
            fraction.max(left)
        };
        added += proportion;
        sizes.push(size + proportion);
    }
    if let Some(first) = sizes.first_mut() {
        *first = (*first + to_add - added).max(0);
    }
    for (rs, size) in active.iter().zip(sizes) {
        let updated = scale_rs(state, d, rs, size.max(0)).await?;
        replace_in(&mut sets, updated);
    }
    Ok(sets)
}

fn replace_in(sets: &mut Sets, rs: ReplicaSet) {
    if sets
        .new
        .as_ref()
        .is_some_and(|n| n.metadata.uid == rs.metadata.uid)
    {
        sets.new = Some(rs);
    } else if let Some(slot) = sets
        .old
        .iter_mut()
        .find(|o| o.metadata.uid == rs.metadata.uid)
    {
        *slot = rs;
    }
}

/// True when the rollout is done: every replica updated and available.
fn is_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let want = desired(d);
    status.updated_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
        && status.observed_generation >= d.metadata.generation
}

async fn rollout_rolling(
    state: &Loop,
    d: &Deployment,
    rs_list: Vec<ReplicaSet>,
) -> Result<Action, ReconcileError> {
    let mut sets = find_sets(state, d, rs_list, true).await?;
    let created = sets
        .new
        .as_ref()
        .filter(|rs| rs.status.is_none())
        .and_then(|rs| rs.metadata.name.clone());
    let progress = Progress::Rollout { created };
    let want = desired(d);
    let (surge, unavailable) = fenceposts(d).map_err(ApiError::bad_request)?;

    // Grow the new ReplicaSet within the surge.
    if let Some(new) = sets.new.clone() {
        let size = replicas_of(&new);
        let target = if size > want {
            want
        } else {
            let total: i32 = sets
                .all()
                .iter()
                .map(|rs| pods_upper_bound(&state.pods, rs))
                .sum();
            arith::new_rs_replicas(want, surge, total, size)
        };
        if target != size {
            let updated = scale_rs(state, d, &new, target).await?;
            sets.new = Some(updated);
            return sync_status(state, d, &sets, progress).await;
        }
    }

    // Shrink old ones within the unavailability budget.
    if scale_down_old(state, d, &mut sets, unavailable).await? {
        return sync_status(state, d, &sets, progress).await;
    }
    let status = compute_status(&sets, d);
    if is_complete(d, &status) {
        cleanup(state, d, &sets).await?;
    }
    sync_status(state, d, &sets, progress).await
}

/// Scales old ReplicaSets down, unhealthy pods first; true if it did.
async fn scale_down_old(
    state: &Loop,
    d: &Deployment,
    sets: &mut Sets,
    max_unavailable: i32,
) -> Result<bool, ReconcileError> {
    let want = desired(d);
    let old_pods: i32 = sets.old.iter().map(replicas_of).sum();
    if old_pods == 0 {
        return Ok(false);
    }
    let all_pods: i32 = sets
        .all()
        .iter()
        .map(|rs| pods_upper_bound(&state.pods, rs))
        .sum();
    let new_unavailable = sets
        .new
        .as_ref()
        .map_or(0, |rs| (replicas_of(rs) - available_of(rs)).max(0));
    let max_down = arith::max_scale_down(want, max_unavailable, all_pods, new_unavailable);
    if max_down <= 0 {
        return Ok(false);
    }
    sets.old.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.clone(),
            rs.metadata.name.clone(),
        )
    });
    // First the old pods that are not available anyway.
    let mut scaled = 0;
    for i in 0..sets.old.len() {
        if scaled >= max_down {
            break;
        }
        let rs = sets.old[i].clone();
        let size = replicas_of(&rs);
        let unhealthy = size - available_of(&rs).min(size);
        if size == 0 || unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(max_down - scaled);
        sets.old[i] = scale_rs(state, d, &rs, size - down).await?;
        scaled += down;
    }
    // Then available ones, keeping `want - max_unavailable` available. An
    // old ReplicaSet whose status still counts pods above its new size
    // counts only its size, so one pod is never taken twice.
    let min_available = want - max_unavailable;
    let available: i32 = sets
        .all()
        .iter()
        .map(|rs| available_of(rs).min(replicas_of(rs)))
        .sum();
    let mut budget = (available - min_available).min(max_down - scaled);
    for i in 0..sets.old.len() {
        if budget <= 0 {
            break;
        }
        let rs = sets.old[i].clone();
        let size = replicas_of(&rs);
        if size == 0 {
            continue;
        }
        let down = size.min(budget);
        sets.old[i] = scale_rs(state, d, &rs, size - down).await?;
        scaled += down;
        budget -= down;
    }
    Ok(scaled > 0)
}

async fn rollout_recreate(
    state: &Loop,
    d: &Deployment,
    rs_list: Vec<ReplicaSet>,
) -> Result<Action, ReconcileError> {
    let mut sets = find_sets(state, d, rs_list, false).await?;
    let progress = Progress::Rollout { created: None };
    // Old ones to zero first.
    let mut scaled = false;
    for i in 0..sets.old.len() {
        if replicas_of(&sets.old[i]) > 0 {
            let rs = sets.old[i].clone();
            sets.old[i] = scale_rs(state, d, &rs, 0).await?;
            scaled = true;
        }
    }
    if scaled {
        return sync_status(state, d, &sets, progress).await;
    }
    // Then wait until their pods are gone (terminating ones included).
    let old_running = sets.old.iter().any(|rs| {
        let uid = rs.metadata.uid.as_deref().unwrap_or_default();
        status_replicas(rs) > 0
            || state.pods.by_index(BY_OWNER, uid).iter().any(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
    });
    if old_running {
        return sync_status(state, d, &sets, progress).await;
    }
    let mut progress = progress;
    if sets.new.is_none() {
        let rs_list: Vec<ReplicaSet> = sets.old.clone();
        sets = find_sets(state, d, rs_list, true).await?;
        progress = Progress::Rollout {
            created: sets.new.as_ref().and_then(|rs| rs.metadata.name.clone()),
        };
    }
    if let Some(new) = sets.new.clone() {
        sets.new = Some(scale_rs(state, d, &new, desired(d)).await?);
    }
    let status = compute_status(&sets, d);
    if is_complete(d, &status) {
        cleanup(state, d, &sets).await?;
    }
    sync_status(state, d, &sets, progress).await
}

/// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit`, oldest
/// revision first.
async fn cleanup(state: &Loop, d: &Deployment, sets: &Sets) -> Result<(), ReconcileError> {
    let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
        return Ok(());
    };
    let mut cleanable: Vec<&ReplicaSet> = sets
        .old
        .iter()
        .filter(|rs| {
            replicas_of(rs) == 0
                && status_replicas(rs) == 0
                && rs.metadata.deletion_timestamp.is_none()
                && rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation
        })
        .collect();
    let excess = cleanable.len() as i64 - limit.max(0) as i64;
    if excess <= 0 {
        return Ok(());
    }
    cleanable.sort_by_key(|rs| {
        (
            revision(&rs.metadata),
            rs.metadata.creation_timestamp.clone(),
        )
    });
    let deletions = cleanable.iter().take(excess as usize).map(|rs| {
        let ns = rs.metadata.namespace.clone();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let options = json!({"preconditions": {"uid": rs.metadata.uid}});
        async move {
            state
                .client
                .delete_with::<ReplicaSet>(ns.as_deref(), &name, &options)
                .await
        }
    });
    let mut rev = 0;
    for result in join_all(deletions).await {
        match result {
            Ok(r) => rev = rev.max(r),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    wait_rs(state, rev).await
}

/// The counts of a Deployment's status from its ReplicaSets, with the
/// Available condition; other conditions carried over.
fn compute_status(sets: &Sets, d: &Deployment) -> DeploymentStatus {
    let all = sets.all();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let replicas = sum(&status_replicas);
    let available = sum(&available_of);
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let total_spec = sum(&replicas_of);
    let current = d.status.clone().unwrap_or_default();
    let mut conditions = current.conditions.clone().unwrap_or_default();
    let want = desired(d);
    let (_, max_unavailable) = fenceposts(d).unwrap_or((0, 0));
    let available_cond = if available >= want - max_unavailable {
        condition(
            AVAILABLE,
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            AVAILABLE,
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    set_condition(&mut conditions, available_cond);
    // Failures of the ReplicaSets (e.g. pods refused by a quota).
    let failure = all.iter().find_map(|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == REPLICA_FAILURE))
            .cloned()
    });
    match failure {
        Some(f) => set_condition(
            &mut conditions,
            condition(
                REPLICA_FAILURE,
                &f.status,
                f.reason.as_deref().unwrap_or("FailedCreate"),
                f.message.unwrap_or_default(),
            ),
        ),
        None => conditions.retain(|c| c.type_ != REPLICA_FAILURE),
    }
    DeploymentStatus {
        replicas: Some(replicas),
        updated_replicas: Some(sets.new.as_ref().map_or(0, status_replicas)),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        observed_generation: d.metadata.generation,
        collision_count: current.collision_count,
        conditions: Some(conditions),
        terminating_replicas: current.terminating_replicas,
    }
}

fn progress_deadline(d: &Deployment) -> Option<i64> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
        .map(i64::from)
}

/// True when the new status shows progress over the current one.
fn made_progress(current: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_old = current.replicas.unwrap_or(0) - current.updated_replicas.unwrap_or(0);
    let new_old = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas > current.updated_replicas
        || new_old < old_old
        || new.ready_replicas > current.ready_replicas
        || new.available_replicas > current.available_replicas
}

/// Computes and writes the Deployment's status, moving its Progressing
/// condition; asks to be requeued at the progress deadline.
async fn sync_status(
    state: &Loop,
    d: &Deployment,
    sets: &Sets,
    progress: Progress,
) -> Result<Action, ReconcileError> {
    let mut status = compute_status(sets, d);
    let current = d.status.clone().unwrap_or_default();
    let deadline = progress_deadline(d);
    let new_name = sets
        .new
        .as_ref()
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let mut conditions = status.conditions.take().unwrap_or_default();
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    match deadline {
        None => conditions.retain(|c| c.type_ != PROGRESSING),
        Some(_) => {
            let cond = get_condition(&conditions, PROGRESSING).cloned();
            let reason = cond.as_ref().and_then(|c| c.reason.clone());
            let timed_out = reason.as_deref() == Some("ProgressDeadlineExceeded");
            let paused_cond = reason.as_deref() == Some("DeploymentPaused");
            if paused && !paused_cond && !timed_out {
                set_condition(
                    &mut conditions,
                    condition(
                        PROGRESSING,
                        "Unknown",
                        "DeploymentPaused",
                        "Deployment is paused".into(),
                    ),
                );
            } else if !paused && paused_cond {
                set_condition(
                    &mut conditions,
                    condition(
                        PROGRESSING,
                        "Unknown",
                        "DeploymentResumed",
                        "Deployment is resumed".into(),
                    ),
                );
            }
        }
    }
    if let (Progress::Rollout { created }, Some(deadline)) = (&progress, deadline) {
        let cond = get_condition(&conditions, PROGRESSING).cloned();
        let complete_already = status.replicas == status.updated_replicas
            && cond.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        let probe = DeploymentStatus {
            conditions: None,
            ..status.clone()
        };
        if let Some(name) = created {
            set_condition(
                &mut conditions,
                condition(
                    PROGRESSING,
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set {name:?}"),
                ),
            );
        } else if !complete_already {
            if is_complete(d, &probe) {
                set_condition(
                    &mut conditions,
                    condition(
                        PROGRESSING,
                        "True",
                        "NewReplicaSetAvailable",
                        format!("ReplicaSet {new_name:?} has successfully progressed."),
                    ),
                );
            } else if made_progress(&current, &probe) || cond.is_none() {
                let mut c = condition(
                    PROGRESSING,
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet {new_name:?} is progressing."),
                );
                if let Some(old) = cond.as_ref().filter(|c| c.status == "True") {
                    c.last_transition_time = old.last_transition_time.clone();
                }
                conditions.retain(|c| c.type_ != PROGRESSING);
                conditions.push(c);
            } else if timed_out(cond.as_ref(), deadline) {
                set_condition(
                    &mut conditions,
                    condition(
                        PROGRESSING,
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet {new_name:?} has timed out progressing."),
                    ),
                );
            }
        }
    }
    status.conditions = Some(conditions);
    let requeue = requeue_at_deadline(&status, deadline, paused);
    if status != current {
        write_status(state, d, status).await?;
    }
    Ok(requeue)
}

fn timed_out(cond: Option<&DeploymentCondition>, deadline: i64) -> bool {
    let Some(cond) = cond else { return false };
    match cond.reason.as_deref() {
        Some("ProgressDeadlineExceeded") => return true,
        Some("NewReplicaSetAvailable") => return false,
        _ => {}
    }
    let Some(from) = cond.last_update_time.as_ref() else {
        return false;
    };
    from.0.as_second() + deadline < now_secs()
}

/// When a rollout in progress should be looked at again for its deadline.
fn requeue_at_deadline(status: &DeploymentStatus, deadline: Option<i64>, paused: bool) -> Action {
    let (Some(deadline), false) = (deadline, paused) else {
        return Action::Done;
    };
    let cond = status
        .conditions
        .as_deref()
        .and_then(|cs| get_condition(cs, PROGRESSING));
    let Some(cond) = cond else {
        return Action::Done;
    };
    if matches!(
        cond.reason.as_deref(),
        Some("NewReplicaSetAvailable" | "ProgressDeadlineExceeded" | "DeploymentPaused")
    ) {
        return Action::Done;
    }
    let Some(from) = cond.last_update_time.as_ref() else {
        return Action::Done;
    };
    let left = from.0.as_second() + deadline - now_secs();
    Action::RequeueAfter(Duration::from_secs(left.max(0) as u64 + 1))
}

/// Writes the status through the status subresource; waits until the
/// write is in the Deployment cache.
async fn write_status(
    state: &Loop,
    d: &Deployment,
    status: DeploymentStatus,
) -> Result<(), ReconcileError> {
    match util::patch_status(&state.client, &state.deployments, d, &status, CACHE_WAIT).await {
        Err(ReconcileError::Api(e)) if e.code == 404 => Ok(()),
        result => result.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn hashes_are_stable_safe_and_template_specific() {
        let a = template("nginx:1.25");
        let h = template_hash(&a, None);
        assert_eq!(h, template_hash(&a, None));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(h, template_hash(&template("nginx:1.26"), None));
        assert_ne!(h, template_hash(&a, Some(1)));
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let a = template("nginx:1.25");
        let mut b = a.clone();
        b.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), "abc".into());
        assert!(equal_ignore_hash(&a, &b));
        assert!(!equal_ignore_hash(&a, &template("nginx:1.26")));
        // Empty values spelled out by a client are no difference.
        let mut c = a.clone();
        c.metadata.as_mut().unwrap().creation_timestamp = None;
        c.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
        c.spec.as_mut().unwrap().containers[0].env = Some(Vec::new());
        assert!(equal_ignore_hash(&a, &c));
    }
}
