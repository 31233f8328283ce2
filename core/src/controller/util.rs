//! Small facts about objects that several loops need: owners, selectors,
//! pod readiness. One place, so every loop reads them the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::informer::{key_of, revision_of, Cache, ObjectKey};
use super::{LoopContext, Queue, ReconcileError};
use crate::client::Client;
use crate::error::ApiError;
use crate::patch::PatchType;

/// The name of the cache index of objects by the uid of each owner.
pub const BY_OWNER: &str = "owner";

/// Index function: the uids of an object's owners.
pub fn owner_uids<K: Metadata<Ty = ObjectMeta>>(object: &K) -> Vec<String> {
    object
        .metadata()
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.clone())
        .collect()
}

/// An informer handler that queues the key of every object it sees (the
/// loop's primary kind).
pub fn enqueue_self<K: Metadata<Ty = ObjectMeta>>(
    queue: &Queue<ObjectKey>,
) -> impl Fn(&K) + Send + Sync + 'static {
    let queue = queue.clone();
    move |object: &K| queue.add(key_of(object.metadata()))
}

/// An informer handler for dependents (e.g. pods): queues the key of an
/// object's controller owner when that owner is a `kind`.
pub fn enqueue_owner<D: Metadata<Ty = ObjectMeta>>(
    queue: &Queue<ObjectKey>,
    kind: &'static str,
) -> impl Fn(&D) + Send + Sync + 'static {
    let queue = queue.clone();
    move |dependent: &D| {
        let meta = dependent.metadata();
        if let Some(owner) = controller_of(meta).filter(|o| o.kind == kind) {
            queue.add(key(meta.namespace.as_deref(), &owner.name));
        }
    }
}

/// Starts the informer of a loop's primary kind `K`: every change queues
/// the object's own key ([`enqueue_self`]).
pub fn watch_primary<K>(ctx: &LoopContext, queue: &Queue<ObjectKey>) -> Cache<K>
where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    ctx.informer::<K>()
        .start(ctx.stop.clone(), enqueue_self(queue))
}

/// Starts the pod informer of a controller of `kind`: pods indexed by
/// owner ([`BY_OWNER`], see [`controlled_by`]), every change queueing the
/// pod's controller owner of that kind ([`enqueue_owner`]).
pub fn watch_owned_pods(
    ctx: &LoopContext,
    queue: &Queue<ObjectKey>,
    kind: &'static str,
) -> Cache<Pod> {
    ctx.informer::<Pod>()
        .index(BY_OWNER, owner_uids)
        .start(ctx.stop.clone(), enqueue_owner(queue, kind))
}

/// A cache whose first full list can be waited for ([`wait_ready`]).
pub trait Ready: Send + Sync {
    /// Resolves once the cache holds its first full list.
    fn ready(&self) -> BoxFuture<'static, ()>;
}

impl<K: Send + Sync + 'static> Ready for Cache<K> {
    fn ready(&self) -> BoxFuture<'static, ()> {
        let mut cache = self.clone();
        Box::pin(async move { cache.wait_until_ready().await })
    }
}

/// Waits until every one of `caches` holds its first full list, so a loop
/// acts only on complete views; false if `stop` came first.
pub async fn wait_ready(stop: &CancellationToken, caches: &[&dyn Ready]) -> bool {
    let all = join_all(caches.iter().map(|c| c.ready()));
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = all => true,
    }
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// An owner reference to `owner`, as its controller (blocking the owner's
/// foreground deletion).
pub fn controller_reference<K: Resource + Metadata<Ty = ObjectMeta>>(owner: &K) -> OwnerReference {
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_string(),
        kind: K::KIND.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The objects in `cache` whose controller is the owner with `uid` (looked
/// up through the [`BY_OWNER`] index, which the cache must have).
pub fn controlled_by<K: Metadata<Ty = ObjectMeta>>(cache: &Cache<K>, uid: &str) -> Vec<Arc<K>> {
    cache
        .by_index(BY_OWNER, uid)
        .into_iter()
        .filter(|o| controller_of(o.metadata()).is_some_and(|c| c.uid == uid))
        .collect()
}

/// A new pod of `owner` from `template`: named `<owner>-<random>`, in the
/// owner's namespace, with the template's labels, annotations and spec,
/// and `owner` as its controller. Callers add what their kind adds.
pub fn pod_from_template<K: Resource + Metadata<Ty = ObjectMeta>>(
    owner: &K,
    template: &PodTemplateSpec,
) -> Pod {
    let meta = owner.metadata();
    let template_meta = template.metadata.as_ref();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", meta.name.as_deref().unwrap_or_default())),
            namespace: meta.namespace.clone(),
            labels: template_meta.and_then(|m| m.labels.clone()),
            annotations: template_meta.and_then(|m| m.annotations.clone()),
            owner_references: Some(vec![controller_reference(owner)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Deletes `object` only if it is still the same object (a uid
/// precondition), with `gracePeriodSeconds: 0` when `force`. Returns the
/// deletion's revision, or 0 if the object was gone or replaced already.
pub async fn delete_exact<K: Resource + Metadata<Ty = ObjectMeta>>(
    client: &Client,
    object: &K,
    force: bool,
) -> Result<u64, ApiError> {
    let meta = object.metadata();
    let mut options = json!({"preconditions": {"uid": meta.uid}});
    if force {
        options["gracePeriodSeconds"] = json!(0);
    }
    match client
        .delete_with::<K>(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or(""),
            &options,
        )
        .await
    {
        Ok(rev) => Ok(rev),
        Err(e) if e.code == 404 || e.code == 409 => Ok(0),
        Err(e) => Err(e),
    }
}

/// A pod's `status.phase` ("" when it has none).
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The `SelectorEmpty` problem (reason, message) of a controller whose
/// selector has neither matchLabels nor matchExpressions: it would select
/// every pod in its namespace.
pub fn empty_selector(selector: &LabelSelector) -> Option<(&'static str, String)> {
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    empty.then(|| {
        (
            "SelectorEmpty",
            "spec.selector is empty: it would select every pod in the namespace".into(),
        )
    })
}

/// The `SelectorMismatch` problem (reason, message) of a controller whose
/// selector does not select the labels of its pod template.
pub fn template_mismatch(
    selector: &LabelSelector,
    template: &PodTemplateSpec,
) -> Option<(&'static str, String)> {
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    (!selector_matches(Some(selector), labels)).then(|| {
        (
            "SelectorMismatch",
            "spec.selector does not match the labels of spec.template".into(),
        )
    })
}

/// True if `labels` satisfy `selector` (matchLabels and matchExpressions).
/// An empty selector matches everything; a missing one matches nothing.
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let match_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let match_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    match_labels && match_expressions
}

/// True for a pod that counts toward its controller's replicas: not
/// finished and not being deleted.
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// True for a pod whose Ready condition is True.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Records a Kubernetes Event about `object` in its namespace (`type_` is
/// `Normal` or `Warning`). Best effort: a failure is logged, not returned,
/// so a loop never retries because of its own event.
pub async fn record_event<K: Resource + Metadata<Ty = ObjectMeta>>(
    client: &Client,
    object: &K,
    type_: &str,
    reason: &str,
    message: &str,
) {
    record_event_from(
        client,
        "orch-controller-manager",
        None,
        object,
        type_,
        reason,
        message,
    )
    .await
}

/// Records an Event as [`record_event`] does, from `component` (e.g.
/// `kubelet`) on `host` (a node name).
pub async fn record_event_from<K: Resource + Metadata<Ty = ObjectMeta>>(
    client: &Client,
    component: &str,
    host: Option<&str>,
    object: &K,
    type_: &str,
    reason: &str,
    message: &str,
) {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    let meta = object.metadata();
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let now = now_time();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::API_VERSION.to_string()),
            kind: Some(K::KIND.to_string()),
            name: Some(name),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        type_: Some(type_.to_string()),
        source: Some(EventSource {
            component: Some(component.into()),
            host: host.map(str::to_string),
        }),
        reporting_component: Some(component.into()),
        reporting_instance: host.map(str::to_string),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    if let Err(e) = client.create(Some(&namespace), &event).await {
        tracing::warn!(reason, error = %e, "could not record event");
    }
}

/// The current time in whole seconds, the precision of Kubernetes'
/// `metav1.Time` (which is also all a `Time` keeps on the wire).
pub fn now() -> Timestamp {
    Timestamp::from_second(crate::object::now_secs()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The current time as a `metav1.Time` (see [`now`]).
pub fn now_time() -> Time {
    Time(now())
}

/// Waits (at most `timeout`) until `cache` has seen revision `rev` (a
/// write of the caller's own; 0 for none), so the next reconcile does not
/// act on a view without it; else [`ReconcileError::Stale`].
pub async fn wait_written<K: Resource>(
    cache: &Cache<K>,
    rev: u64,
    timeout: Duration,
) -> Result<(), ReconcileError> {
    if rev == 0 || cache.wait_for_revision(rev, timeout).await {
        Ok(())
    } else {
        Err(ReconcileError::Stale(format!(
            "{} cache has not reached revision {rev}",
            K::KIND
        )))
    }
}

/// Writes `status` to `object` through its status subresource with a
/// merge patch, then waits (at most `timeout`) until `cache` has seen the
/// write ([`wait_written`]). Returns the object as written.
pub async fn patch_status<K>(
    client: &Client,
    cache: &Cache<K>,
    object: &K,
    status: &impl Serialize,
    timeout: Duration,
) -> Result<K, ReconcileError>
where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned,
{
    let status = serde_json::to_value(status).map_err(|e| ApiError::internal(e.to_string()))?;
    let meta = object.metadata();
    let written: K = client
        .patch(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or(""),
            Some("status"),
            PatchType::Merge,
            &json!({ "status": status }),
        )
        .await?;
    wait_written(cache, revision_of(written.metadata()), timeout).await?;
    Ok(written)
}

/// `namespace/name` of an object.
pub fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Splits a `namespace/name` key (a key without `/` is cluster-scoped).
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "front".to_string()),
        ]);
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["front".into(), "back".into()]),
            }]),
        };
        assert!(selector_matches(Some(&selector), Some(&labels)));
        let other = BTreeMap::from([("app".to_string(), "db".to_string())]);
        assert!(!selector_matches(Some(&selector), Some(&other)));
        assert!(selector_matches(Some(&LabelSelector::default()), None));
        assert!(!selector_matches(None, Some(&labels)));
    }

    #[test]
    fn keys_split_into_namespace_and_name() {
        assert_eq!(split_key("default/web"), (Some("default"), "web"));
        assert_eq!(split_key("node-1"), (None, "node-1"));
        assert_eq!(key(Some("a"), "b"), "a/b");
    }
}
