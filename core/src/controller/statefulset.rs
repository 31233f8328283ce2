//! The StatefulSet loop: pods with stable names `<set>-0 .. <set>-(n-1)`,
//! created, replaced and removed in ordinal order.
//!
//! - Pods are named `<set>-<ordinal>` and labelled
//!   `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`
//!   and `controller-revision-hash`; they get `hostname` = their name and
//!   `subdomain` = `spec.serviceName`, and the set as controller owner.
//! - `podManagementPolicy: OrderedReady` (the default): pod `i` is created
//!   only once pods `0..i` are Running and Ready; scale-down removes the
//!   highest ordinal first, one at a time, each gone before the next.
//!   `Parallel` creates and deletes every pod at once.
//! - A failed (or finished, or deleted) pod is deleted and recreated under
//!   the same name.
//! - `updateStrategy: RollingUpdate` deletes pods whose template is out of
//!   date from the highest ordinal down to `partition`, one at a time, only
//!   while every pod is Running and Ready (so each replacement is Ready
//!   before the next pod goes). `OnDelete` leaves that to the user.
//! - Revisions: ControllerRevision objects are not served by orch, so a
//!   revision is the hash of the pod template ([`template_hash`]), carried
//!   by each pod's `controller-revision-hash` label and reported as
//!   `status.currentRevision` / `status.updateRevision`. Only the newest
//!   template is known, so a pod below the partition that has to be
//!   recreated comes back at the update revision.
//! - `volumeClaimTemplates` are not supported yet (PersistentVolumeClaims
//!   are not served): a set that has them gets a Warning Event
//!   (`VolumeClaimTemplatesUnsupported`) and its pods run without the claims.
//! - Pods are found through their controller owner reference; orphans that
//!   match the selector are not adopted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::Resource;

use super::informer::{revision_of, Cache, ObjectKey};
use super::util;
use super::{Action, LoopContext, ReconcileError};
use crate::client::Client;

/// Label naming a StatefulSet pod (its stable identity).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label carrying a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label carrying the template revision a pod was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// How long a reconcile waits for its own write to reach its cache.
const WRITE_VISIBLE: Duration = Duration::from_secs(5);

/// The revision of a pod template: FNV-1a (64 bit) of its JSON form, as
/// hex. Stable across processes and versions (the JSON form of the
/// `k8s-openapi` types has a fixed field order and sorted maps).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:x}", hash & 0xff_ffff_ffff)
}

/// The ordinal of pod `pod` of set `set` (`web-3` -> 3).
fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

fn running_and_ready(pod: &Pod) -> bool {
    util::pod_phase(pod) == "Running"
        && util::is_pod_ready(pod)
        && pod.metadata.deletion_timestamp.is_none()
}

/// True once a pod has been Ready for `min_ready_seconds`.
pub(crate) fn available(pod: &Pod, min_ready_seconds: i32) -> bool {
    if !util::is_pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref());
    match since {
        Some(t) => {
            let ready_for = util::now().duration_since(t.0);
            ready_for.as_secs() >= i64::from(min_ready_seconds)
        }
        None => false,
    }
}

pub(crate) fn revision_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .map(String::as_str)
}

struct Shared {
    client: Client,
    sets: Cache<StatefulSet>,
    pods: Cache<Pod>,
}

/// Runs the statefulset loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let sets = util::watch_primary::<StatefulSet>(&ctx, &queue);
    let pods = util::watch_owned_pods(&ctx, &queue, StatefulSet::KIND);
    if !util::wait_ready(&ctx.stop, &[&sets, &pods]).await {
        return;
    }
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        sets,
        pods,
    });
    ctx.run("statefulset", queue, move |key| {
        let shared = shared.clone();
        async move { reconcile(&shared, key).await }
    })
    .await;
}

fn new_pod(set: &StatefulSet, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let mut pod = util::pod_from_template(set, &spec.template);
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.to_string());
    let pod_spec = pod.spec.get_or_insert_with(Default::default);
    pod_spec.hostname = Some(name);
    if let Some(service) = spec.service_name.filter(|s| !s.is_empty()) {
        pod_spec.subdomain = Some(service);
    }
    pod
}

async fn create_pod(
    shared: &Shared,
    set: &StatefulSet,
    ordinal: i32,
    revision: &str,
) -> Result<(), ReconcileError> {
    let pod = new_pod(set, ordinal, revision);
    let created = shared
        .client
        .create(set.metadata.namespace.as_deref(), &pod)
        .await?;
    tracing::debug!(pod = ?created.metadata.name, "created pod");
    util::wait_written(&shared.pods, revision_of(&created.metadata), WRITE_VISIBLE).await
}

async fn delete_pod(shared: &Shared, pod: &Pod) -> Result<(), ReconcileError> {
    let rev = util::delete_exact(&shared.client, pod, false).await?;
    if rev == 0 {
        return Ok(());
    }
    tracing::debug!(
        pod = pod.metadata.name.as_deref().unwrap_or(""),
        "deleted pod"
    );
    util::wait_written(&shared.pods, rev, WRITE_VISIBLE).await
}

async fn reconcile(shared: &Shared, key: ObjectKey) -> Result<Action, ReconcileError> {
    let Some(set) = shared.sets.get(&key) else {
        return Ok(Action::Done);
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let spec = set.spec.clone().unwrap_or_default();
    let generation = set.metadata.generation;
    let status = set.status.clone().unwrap_or_default();
    let new_generation = status.observed_generation != generation;
    let set_name = set.metadata.name.clone().unwrap_or_default();

    if let Some((reason, message)) = util::template_mismatch(&spec.selector, &spec.template) {
        if new_generation {
            util::record_event(&shared.client, set.as_ref(), "Warning", reason, &message).await;
            let next = StatefulSetStatus {
                observed_generation: generation,
                ..status
            };
            util::patch_status(&shared.client, &shared.sets, &*set, &next, WRITE_VISIBLE).await?;
        }
        return Ok(Action::Done);
    }
    if new_generation
        && spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|v| !v.is_empty())
    {
        util::record_event(
            &shared.client,
            set.as_ref(),
            "Warning",
            "VolumeClaimTemplatesUnsupported",
            "volumeClaimTemplates are not supported yet (PersistentVolumeClaims are not served): pods are created without the claims",
        )
        .await;
    }

    let replicas = spec.replicas.unwrap_or(1).max(0);
    let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
    let update_revision = template_hash(&spec.template);
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let owned = util::controlled_by(&shared.pods, &uid);
    let mut slots: Vec<Option<Arc<Pod>>> = vec![None; replicas as usize];
    let mut condemned: Vec<(Option<i32>, Arc<Pod>)> = Vec::new();
    for pod in &owned {
        let ordinal = ordinal_of(&set_name, pod.metadata.name.as_deref().unwrap_or(""));
        match ordinal {
            Some(i) if i < replicas => slots[i as usize] = Some(pod.clone()),
            _ => condemned.push((ordinal, pod.clone())),
        }
    }
    // Highest ordinal first; pods without an ordinal before all others.
    condemned.sort_by_key(|(ordinal, _)| std::cmp::Reverse(ordinal.unwrap_or(i32::MAX)));

    'act: {
        // 1. Every ordinal below `replicas` has a healthy pod.
        let mut all_healthy = true;
        for (i, slot) in slots.iter().enumerate() {
            match slot {
                None => {
                    all_healthy = false;
                    create_pod(shared, &set, i as i32, &update_revision).await?;
                    if ordered {
                        break 'act;
                    }
                }
                Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                    all_healthy = false;
                    if ordered {
                        break 'act;
                    }
                }
                Some(pod) if matches!(util::pod_phase(pod), "Failed" | "Succeeded") => {
                    all_healthy = false;
                    delete_pod(shared, pod).await?;
                    if ordered {
                        break 'act;
                    }
                }
                Some(pod) if !running_and_ready(pod) => {
                    all_healthy = false;
                    if ordered {
                        break 'act;
                    }
                }
                Some(_) => {}
            }
        }
        // 2. Pods beyond `replicas` go, highest ordinal first.
        for (_, pod) in &condemned {
            all_healthy = false;
            if pod.metadata.deletion_timestamp.is_none() {
                delete_pod(shared, pod).await?;
            }
            if ordered {
                break 'act;
            }
        }
        // 3. Rolling update, one pod at a time, while everything is healthy.
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if rolling && all_healthy {
            let partition = spec
                .update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0)
                .max(0);
            for i in (partition..replicas).rev() {
                if let Some(pod) = &slots[i as usize] {
                    if revision_label(pod) != Some(update_revision.as_str()) {
                        delete_pod(shared, pod).await?;
                        break 'act;
                    }
                }
            }
        }
    }

    // Status, from what this reconcile saw (its own writes bring it back).
    let live: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
    let updated = count(&|p| revision_label(p) == Some(update_revision.as_str()));
    let mut current_revision = status
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_revision.clone());
    if updated == replicas && live.len() as i32 == replicas {
        current_revision = update_revision.clone();
    }
    let next = StatefulSetStatus {
        replicas: live.len() as i32,
        ready_replicas: Some(count(&|p| util::is_pod_ready(p))),
        available_replicas: Some(count(&|p| available(p, min_ready))),
        current_replicas: Some(count(&|p| {
            revision_label(p) == Some(current_revision.as_str())
        })),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(update_revision),
        observed_generation: generation,
        collision_count: status.collision_count,
        conditions: status.conditions.clone(),
    };
    if next != status {
        util::patch_status(&shared.client, &shared.sets, &*set, &next, WRITE_VISIBLE).await?;
    }
    // Pods counting toward minReadySeconds become available with time only.
    let waiting_for_available = min_ready > 0
        && live
            .iter()
            .any(|p| util::is_pod_ready(p) && !available(p, min_ready));
    Ok(if waiting_for_available {
        Action::RequeueAfter(Duration::from_secs(1))
    } else {
        Action::Done
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    #[test]
    fn ordinals_come_from_stable_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn template_hash_follows_the_template() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t);
        assert_eq!(a, template_hash(&t));
        t.metadata = Some(ObjectMeta {
            labels: Some(BTreeMap::from([("app".to_string(), "x".to_string())])),
            ..Default::default()
        });
        assert_ne!(a, template_hash(&t));
    }
}
