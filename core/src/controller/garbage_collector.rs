//! The garbage collector: deletes objects whose owners are gone, and
//! carries out the `Foreground` and `Orphan` propagation policies, as
//! Kubernetes' garbage collector does.
//!
//! It caches the kinds that own and are owned in practice (Pods,
//! ReplicaSets, Deployments, StatefulSets, DaemonSets, Jobs, Services,
//! EndpointSlices), each indexed by the uids of its owners. Queue keys are
//! `Kind/namespace/name`. One reconcile looks at one object:
//! - marked for deletion with the `orphan` finalizer: the reference to it is
//!   removed from every dependent, then the finalizer (the registry then
//!   deletes the object);
//! - marked for deletion with the `foregroundDeletion` finalizer: its
//!   dependents are deleted (with `Foreground` themselves when they have
//!   dependents of their own), and once no dependent that blocks owner
//!   deletion is left, the finalizer is removed;
//! - otherwise, if it has owners: an owner that is neither in the caches
//!   nor found by a GET (same uid) is gone; a dependent whose owners are
//!   all gone is deleted (background propagation), one that keeps some has
//!   the dangling references removed. An owner of a kind orch does not
//!   serve cannot be checked, so its dependents are kept.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, Pod, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::informer::revision_of;
use super::{util, Action, Cache, LoopContext, ReconcileError};
use crate::client::Client;
use crate::error::ApiError;
use crate::patch::PatchType;
use crate::resource;

/// The finalizer of an owner deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer of an owner deleted with `propagationPolicy: Orphan`.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// How long a reconcile waits for its own writes to reach the caches.
const WRITE_WAIT: Duration = Duration::from_secs(5);
/// How often an owner waiting in foreground deletion looks again even if
/// no dependent changed.
const FOREGROUND_RECHECK: Duration = Duration::from_secs(5);

/// One cached kind, seen without its type.
trait Watched: Send + Sync {
    fn kind(&self) -> &'static str;
    fn meta(&self, key: &str) -> Option<ObjectMeta>;
    fn dependents(&self, owner_uid: &str) -> Vec<ObjectMeta>;
    fn wait(&self, rev: u64) -> BoxFuture<'_, bool>;
    fn delete<'a>(
        &'a self,
        client: &'a Client,
        namespace: &'a str,
        name: &'a str,
        options: Value,
    ) -> BoxFuture<'a, Result<u64, ApiError>>;
    fn json_patch<'a>(
        &'a self,
        client: &'a Client,
        namespace: &'a str,
        name: &'a str,
        patch: Value,
    ) -> BoxFuture<'a, Result<u64, ApiError>>;
    fn ready(&self) -> BoxFuture<'_, ()>;
}

struct Typed<K> {
    cache: Cache<K>,
}

impl<K> Watched for Typed<K>
where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    fn kind(&self) -> &'static str {
        K::KIND
    }

    fn meta(&self, key: &str) -> Option<ObjectMeta> {
        self.cache.get(key).map(|o| o.metadata().clone())
    }

    fn dependents(&self, owner_uid: &str) -> Vec<ObjectMeta> {
        self.cache
            .by_index(util::BY_OWNER, owner_uid)
            .iter()
            .map(|o| o.metadata().clone())
            .collect()
    }

    fn wait(&self, rev: u64) -> BoxFuture<'_, bool> {
        Box::pin(self.cache.wait_for_revision(rev, WRITE_WAIT))
    }

    fn delete<'a>(
        &'a self,
        client: &'a Client,
        namespace: &'a str,
        name: &'a str,
        options: Value,
    ) -> BoxFuture<'a, Result<u64, ApiError>> {
        Box::pin(async move {
            client
                .delete_with::<K>(Some(namespace), name, &options)
                .await
        })
    }

    fn json_patch<'a>(
        &'a self,
        client: &'a Client,
        namespace: &'a str,
        name: &'a str,
        patch: Value,
    ) -> BoxFuture<'a, Result<u64, ApiError>> {
        Box::pin(async move {
            let patched: K = client
                .patch(Some(namespace), name, None, PatchType::Json, &patch)
                .await?;
            Ok(revision_of(patched.metadata()))
        })
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        let mut cache = self.cache.clone();
        Box::pin(async move { cache.wait_until_ready().await })
    }
}

type Kinds = Arc<OnceLock<Vec<Arc<dyn Watched>>>>;

/// The queue key of an object of `kind`.
fn queue_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// Starts the informer of `K`: every change queues the object, its owners,
/// and (when it is gone or being deleted) its dependents.
fn watch_kind<K>(ctx: &LoopContext, queue: &super::Queue<String>, kinds: &Kinds) -> Arc<dyn Watched>
where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    let queue = queue.clone();
    let kinds = kinds.clone();
    let cache = ctx
        .informer::<K>()
        .index(util::BY_OWNER, util::owner_uids)
        .start(ctx.stop.clone(), move |obj: &K| {
            let meta = obj.metadata();
            let namespace = meta.namespace.as_deref().unwrap_or("");
            let name = meta.name.as_deref().unwrap_or("");
            let owners = meta.owner_references.iter().flatten();
            let Some(all) = kinds.get() else {
                // Still starting: look at everything.
                queue.add(queue_key(K::KIND, namespace, name));
                for owner in owners {
                    queue.add(queue_key(&owner.kind, namespace, &owner.name));
                }
                return;
            };
            // Most changes (a pod's status, say) concern nothing the
            // collector does: the object is not being deleted and every
            // owner is alive. Only the others are queued.
            let deleting = meta.deletion_timestamp.is_some();
            let owners_alive = owners.clone().all(|owner| {
                cached_owner(all, namespace, owner).is_some_and(|m| m.deletion_timestamp.is_none())
            });
            if deleting || !owners_alive {
                queue.add(queue_key(K::KIND, namespace, name));
            }
            let key = util::key(Some(namespace), name);
            let gone = all
                .iter()
                .find(|w| w.kind() == K::KIND)
                .is_some_and(|w| w.meta(&key).and_then(|m| m.uid) != meta.uid);
            if gone || deleting || !owners_alive {
                // A dependent going away may let an owner's foreground
                // deletion finish.
                for owner in owners {
                    queue.add(queue_key(&owner.kind, namespace, &owner.name));
                }
            }
            if gone || deleting {
                let uid = meta.uid.as_deref().unwrap_or("");
                for w in all {
                    for d in w.dependents(uid) {
                        queue.add(queue_key(
                            w.kind(),
                            d.namespace.as_deref().unwrap_or(""),
                            d.name.as_deref().unwrap_or(""),
                        ));
                    }
                }
            }
        });
    Arc::new(Typed { cache })
}

/// Runs the garbage collector until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let kinds: Kinds = Arc::new(OnceLock::new());
    let all: Vec<Arc<dyn Watched>> = vec![
        watch_kind::<Pod>(&ctx, &queue, &kinds),
        watch_kind::<ReplicaSet>(&ctx, &queue, &kinds),
        watch_kind::<Deployment>(&ctx, &queue, &kinds),
        watch_kind::<StatefulSet>(&ctx, &queue, &kinds),
        watch_kind::<DaemonSet>(&ctx, &queue, &kinds),
        watch_kind::<Job>(&ctx, &queue, &kinds),
        watch_kind::<Service>(&ctx, &queue, &kinds),
        watch_kind::<EndpointSlice>(&ctx, &queue, &kinds),
    ];
    // Judge owners only once every cache holds a full list, so an owner
    // is not taken for gone because its kind was not listed yet.
    for w in &all {
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            _ = w.ready() => {}
        }
    }
    let _ = kinds.set(all);
    let client = ctx.client.clone();
    ctx.run("garbage-collector", queue, move |key| {
        let client = client.clone();
        let kinds = kinds.clone();
        async move {
            let all = kinds.get().map(Vec::as_slice).unwrap_or(&[]);
            reconcile(&client, all, &key).await
        }
    })
    .await;
}

async fn reconcile(
    client: &Client,
    kinds: &[Arc<dyn Watched>],
    key: &str,
) -> Result<Action, ReconcileError> {
    let mut parts = key.splitn(3, '/');
    let (Some(kind), Some(namespace), Some(name)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(Action::Done);
    };
    let Some(watched) = kinds.iter().find(|w| w.kind() == kind) else {
        return Ok(Action::Done);
    };
    let Some(meta) = watched.meta(&util::key(Some(namespace), name)) else {
        return Ok(Action::Done);
    };
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    if meta.deletion_timestamp.is_some() {
        if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
            return orphan_dependents(client, kinds, watched.as_ref(), &meta).await;
        }
        if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
            return delete_dependents(client, kinds, watched.as_ref(), &meta).await;
        }
        return Ok(Action::Done);
    }
    collect_if_orphaned(client, kinds, watched.as_ref(), &meta).await
}

fn is_not_found(e: &ApiError) -> bool {
    e.code == 404
}

/// A JSON patch that applies only to the version of the object in `meta`.
fn guarded_patch(meta: &ObjectMeta, ops: Vec<Value>) -> Value {
    let mut all = vec![json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": meta.resource_version.clone().unwrap_or_default(),
    })];
    all.extend(ops);
    Value::Array(all)
}

/// The JSON patch op that sets `ownerReferences` to `refs`.
fn set_owner_references(refs: &[OwnerReference]) -> Value {
    if refs.is_empty() {
        json!({"op": "remove", "path": "/metadata/ownerReferences"})
    } else {
        json!({"op": "replace", "path": "/metadata/ownerReferences", "value": refs})
    }
}

/// Removes `finalizer` from the object in `meta` (the registry deletes it
/// when it was the last one).
async fn remove_finalizer(
    client: &Client,
    watched: &dyn Watched,
    meta: &ObjectMeta,
    finalizer: &str,
) -> Result<(), ReconcileError> {
    let rest: Vec<String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let op = if rest.is_empty() {
        json!({"op": "remove", "path": "/metadata/finalizers"})
    } else {
        json!({"op": "replace", "path": "/metadata/finalizers", "value": rest})
    };
    let namespace = meta.namespace.as_deref().unwrap_or("");
    let name = meta.name.as_deref().unwrap_or("");
    match watched
        .json_patch(client, namespace, name, guarded_patch(meta, vec![op]))
        .await
    {
        Ok(rev) => {
            watched.wait(rev).await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Orphan propagation: every dependent loses its reference to the owner,
/// then the owner loses its `orphan` finalizer.
async fn orphan_dependents(
    client: &Client,
    kinds: &[Arc<dyn Watched>],
    owner_kind: &dyn Watched,
    owner: &ObjectMeta,
) -> Result<Action, ReconcileError> {
    let uid = owner.uid.as_deref().unwrap_or("");
    for w in kinds {
        for d in w.dependents(uid) {
            let rest: Vec<OwnerReference> = d
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != uid)
                .cloned()
                .collect();
            let patch = guarded_patch(&d, vec![set_owner_references(&rest)]);
            let namespace = d.namespace.as_deref().unwrap_or("");
            let name = d.name.as_deref().unwrap_or("");
            match w.json_patch(client, namespace, name, patch).await {
                Ok(rev) => {
                    w.wait(rev).await;
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    remove_finalizer(client, owner_kind, owner, ORPHAN_FINALIZER).await?;
    Ok(Action::Done)
}

/// True if `dependent`'s reference to `owner_uid` blocks the owner's
/// foreground deletion.
fn blocks(dependent: &ObjectMeta, owner_uid: &str) -> bool {
    dependent
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner_uid && r.block_owner_deletion == Some(true))
}

/// Foreground propagation: deletes the owner's dependents; once none that
/// blocks it is left, removes the owner's `foregroundDeletion` finalizer.
async fn delete_dependents(
    client: &Client,
    kinds: &[Arc<dyn Watched>],
    owner_kind: &dyn Watched,
    owner: &ObjectMeta,
) -> Result<Action, ReconcileError> {
    let uid = owner.uid.as_deref().unwrap_or("");
    for w in kinds {
        for d in w.dependents(uid) {
            if d.deletion_timestamp.is_some() {
                continue;
            }
            let d_uid = d.uid.as_deref().unwrap_or("");
            let has_dependents = kinds.iter().any(|k| !k.dependents(d_uid).is_empty());
            let policy = if has_dependents {
                "Foreground"
            } else {
                "Background"
            };
            let options = json!({
                "propagationPolicy": policy,
                "preconditions": {"resourceVersion": d.resource_version},
            });
            let namespace = d.namespace.as_deref().unwrap_or("");
            let name = d.name.as_deref().unwrap_or("");
            match w.delete(client, namespace, name, options).await {
                Ok(rev) => {
                    w.wait(rev).await;
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let waiting = kinds
        .iter()
        .flat_map(|w| w.dependents(uid))
        .filter(|d| blocks(d, uid))
        .count();
    if waiting > 0 {
        tracing::debug!(waiting, "foreground deletion waits for dependents");
        return Ok(Action::RequeueAfter(FOREGROUND_RECHECK));
    }
    remove_finalizer(client, owner_kind, owner, FOREGROUND_FINALIZER).await?;
    Ok(Action::Done)
}

/// Whether an owner exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    Exists,
    Absent,
    /// Its kind is not served: it cannot be checked.
    Unknown,
}

/// Looks an owner up: in the caches first, then by a GET (the caches may
/// not have seen a new owner yet), comparing uids.
/// The owner as the caches have it, if they hold that very object (same
/// uid).
fn cached_owner(
    kinds: &[Arc<dyn Watched>],
    namespace: &str,
    owner: &OwnerReference,
) -> Option<ObjectMeta> {
    kinds
        .iter()
        .find(|w| w.kind() == owner.kind)?
        .meta(&util::key(Some(namespace), &owner.name))
        .filter(|m| m.uid.as_deref() == Some(owner.uid.as_str()))
}

async fn owner_state(
    client: &Client,
    kinds: &[Arc<dyn Watched>],
    namespace: &str,
    owner: &OwnerReference,
) -> Result<OwnerState, ApiError> {
    if cached_owner(kinds, namespace, owner).is_some() {
        return Ok(OwnerState::Exists);
    }
    Ok(
        match live_uid(
            client,
            &owner.api_version,
            &owner.kind,
            namespace,
            &owner.name,
        )
        .await?
        {
            None => OwnerState::Unknown,
            Some(uid) if uid.as_deref() == Some(owner.uid.as_str()) => OwnerState::Exists,
            Some(_) => OwnerState::Absent,
        },
    )
}

/// The uid of the object of `kind` named `name` as the API server has it
/// now: `None` if the kind is not served, `Some(None)` if there is no such
/// object.
async fn live_uid(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Option<String>>, ApiError> {
    let Some(served) = resource::find_kind(api_version, kind) else {
        return Ok(None);
    };
    let namespace = served.namespaced.then_some(namespace);
    macro_rules! uid_of {
        ($($ty:ty),* $(,)?) => {
            $(
                if kind == <$ty as Resource>::KIND {
                    return match client.get::<$ty>(namespace, name).await {
                        Ok(object) => Ok(Some(object.metadata.uid)),
                        Err(e) if is_not_found(&e) => Ok(Some(None)),
                        Err(e) => Err(e),
                    };
                }
            )*
        };
    }
    uid_of!(
        Namespace,
        Node,
        Pod,
        Service,
        Endpoints,
        ConfigMap,
        Secret,
        Event,
        ResourceQuota,
        LimitRange,
        Deployment,
        ReplicaSet,
        StatefulSet,
        DaemonSet,
        Job,
        Lease,
        EndpointSlice,
        Ingress,
        HorizontalPodAutoscaler,
    );
    Ok(None)
}

/// Background collection: deletes a dependent whose owners are all gone,
/// or removes the references to the gone ones when some remain.
async fn collect_if_orphaned(
    client: &Client,
    kinds: &[Arc<dyn Watched>],
    watched: &dyn Watched,
    meta: &ObjectMeta,
) -> Result<Action, ReconcileError> {
    let refs = meta.owner_references.clone().unwrap_or_default();
    if refs.is_empty() {
        return Ok(Action::Done);
    }
    let namespace = meta.namespace.as_deref().unwrap_or("");
    let name = meta.name.as_deref().unwrap_or("");
    let mut absent = Vec::new();
    let mut unknown = false;
    for owner in &refs {
        match owner_state(client, kinds, namespace, owner).await? {
            OwnerState::Exists => {}
            OwnerState::Absent => absent.push(owner.uid.clone()),
            OwnerState::Unknown => unknown = true,
        }
    }
    if absent.is_empty() {
        return Ok(Action::Done);
    }
    if absent.len() == refs.len() && !unknown {
        tracing::info!(kind = watched.kind(), name, "owners gone: deleting");
        let options = json!({
            "propagationPolicy": "Background",
            "preconditions": {"resourceVersion": meta.resource_version},
        });
        match watched.delete(client, namespace, name, options).await {
            Ok(rev) => {
                watched.wait(rev).await;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::Done);
    }
    let rest: Vec<OwnerReference> = refs
        .into_iter()
        .filter(|r| !absent.contains(&r.uid))
        .collect();
    let patch = guarded_patch(meta, vec![set_owner_references(&rest)]);
    match watched.json_patch(client, namespace, name, patch).await {
        Ok(rev) => {
            watched.wait(rev).await;
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_can_be_looked_up_live() {
        // live_uid names each served kind; a new served kind must be added.
        let named = [
            "Namespace",
            "Node",
            "Pod",
            "Service",
            "Endpoints",
            "ConfigMap",
            "Secret",
            "Event",
            "ResourceQuota",
            "LimitRange",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "Lease",
            "EndpointSlice",
            "Ingress",
            "HorizontalPodAutoscaler",
        ];
        for r in resource::RESOURCES {
            assert!(named.contains(&r.kind), "{} is not looked up", r.kind);
        }
    }

    #[test]
    fn guarded_patches_test_the_resource_version_first() {
        let meta = ObjectMeta {
            resource_version: Some("42".into()),
            ..Default::default()
        };
        let patch = guarded_patch(&meta, vec![set_owner_references(&[])]);
        assert_eq!(patch[0]["op"], "test");
        assert_eq!(patch[0]["value"], "42");
        assert_eq!(patch[1]["op"], "remove");
    }
}
