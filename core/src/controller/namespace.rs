//! The namespace controller: empties a Namespace that is being deleted,
//! then finalizes it.
//!
//! Deleting a Namespace marks it Terminating (deletionTimestamp, phase
//! Terminating) while its `spec.finalizers` holds `kubernetes`. This loop
//! deletes every namespaced object in it, kind by kind (every namespaced
//! resource orch serves), and looks again until none is left; then it
//! removes `kubernetes` from `spec.finalizers` with an update, and the
//! registry deletes the Namespace.
//!
//! Pods bound to a node are deleted with their grace period and removed by
//! their node agent. A pod still terminating [`FORCE_AFTER`] past its grace
//! period, or whose node is gone or not Ready (no agent will finish it), is
//! deleted with `gracePeriodSeconds: 0`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, Pod, ResourceQuota, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::informer::revision_of;
use super::{util, Action, Cache, LoopContext, ReconcileError};
use crate::client::Client;
use crate::error::ApiError;
use crate::resource;

/// The finalizer of `spec.finalizers` this controller owns.
pub const FINALIZER: &str = "kubernetes";

/// How long past its grace period a terminating pod waits for its node
/// agent before it is deleted with `gracePeriodSeconds: 0`.
pub const FORCE_AFTER: Duration = Duration::from_secs(5);

/// How soon a namespace that still has contents is looked at again.
const RECHECK: Duration = Duration::from_millis(300);

/// How long a reconcile waits for its own write to reach the cache.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// Runs the namespace controller until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let q = queue.clone();
    let namespaces = ctx
        .informer::<Namespace>()
        .start(ctx.stop.clone(), move |ns: &Namespace| {
            if ns.metadata.deletion_timestamp.is_some() {
                q.add(ns.metadata.name.clone().unwrap_or_default());
            }
        });
    let nodes = ctx
        .informer::<Node>()
        .start(ctx.stop.clone(), |_: &Node| {});
    let client = ctx.client.clone();
    ctx.run("namespace", queue, move |key| {
        let client = client.clone();
        let namespaces = namespaces.clone();
        let nodes = nodes.clone();
        async move { reconcile(&client, &namespaces, &nodes, &key).await }
    })
    .await;
}

async fn reconcile(
    client: &Client,
    namespaces: &Cache<Namespace>,
    nodes: &Cache<Node>,
    name: &str,
) -> Result<Action, ReconcileError> {
    let Some(ns) = namespaces.get(name) else {
        return Ok(Action::Done);
    };
    let finalizing = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    if ns.metadata.deletion_timestamp.is_none() || !finalizing {
        return Ok(Action::Done);
    }
    let remaining = delete_contents(client, nodes, name).await?;
    if remaining > 0 {
        tracing::debug!(namespace = name, remaining, "namespace not empty yet");
        return Ok(Action::RequeueAfter(RECHECK));
    }
    // Empty: drop our finalizer; the registry then deletes the namespace.
    let mut current: Namespace = match client.get(None, name).await {
        Ok(ns) => ns,
        Err(e) if e.code == 404 => return Ok(Action::Done),
        Err(e) => return Err(e.into()),
    };
    if let Some(spec) = current.spec.as_mut() {
        if let Some(finalizers) = spec.finalizers.as_mut() {
            finalizers.retain(|f| f != FINALIZER);
        }
    }
    let written = client.replace(None, name, &current).await?;
    namespaces
        .wait_for_revision(revision_of(&written.metadata), WRITE_WAIT)
        .await;
    tracing::info!(namespace = name, "namespace emptied and finalized");
    Ok(Action::Done)
}

/// Deletes everything in `namespace`; returns how many objects were there
/// (0 means the namespace is empty).
async fn delete_contents(
    client: &Client,
    nodes: &Cache<Node>,
    namespace: &str,
) -> Result<usize, ApiError> {
    let mut remaining = delete_pods(client, nodes, namespace).await?;
    macro_rules! sweep {
        ($($ty:ty),* $(,)?) => {
            $( remaining += delete_all::<$ty>(client, namespace).await?; )*
        };
    }
    sweep!(
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
    Ok(remaining)
}

/// The kinds [`delete_contents`] sweeps, for the check that none of the
/// served namespaced kinds is forgotten.
#[cfg(test)]
const SWEPT: &[&str] = &[
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

/// Deletes every `K` in `namespace` not yet marked for deletion; returns
/// how many there were.
async fn delete_all<K>(client: &Client, namespace: &str) -> Result<usize, ApiError>
where
    K: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned,
{
    if !resource::RESOURCES
        .iter()
        .any(|r| r.kind == K::KIND && r.api_version() == K::API_VERSION)
    {
        return Ok(0);
    }
    let (items, _) = client.list::<K>(Some(namespace), None).await?;
    for item in &items {
        let meta = item.metadata();
        if meta.deletion_timestamp.is_some() {
            continue;
        }
        let name = meta.name.as_deref().unwrap_or("");
        match client
            .delete_with::<K>(
                Some(namespace),
                name,
                &json!({"propagationPolicy": "Background"}),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(items.len())
}

/// True if `node` exists and its Ready condition is True.
fn node_ready(nodes: &Cache<Node>, node: &str) -> bool {
    nodes.get(node).is_some_and(|n| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
}

/// Deletes the pods of `namespace`, forcing those no agent will finish;
/// returns how many there were.
async fn delete_pods(
    client: &Client,
    nodes: &Cache<Node>,
    namespace: &str,
) -> Result<usize, ApiError> {
    let (pods, _) = client.list::<Pod>(Some(namespace), None).await?;
    let now = util::now();
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let options = match &pod.metadata.deletion_timestamp {
            None => json!({"propagationPolicy": "Background"}),
            Some(since) => {
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .unwrap_or("");
                let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
                let waited = now.as_second() - since.0.as_second();
                let overdue = waited > grace + FORCE_AFTER.as_secs() as i64;
                if !overdue && node_ready(nodes, node) {
                    continue;
                }
                tracing::info!(namespace, pod = name, node, "forcing deletion of pod");
                json!({"gracePeriodSeconds": 0})
            }
        };
        match client
            .delete_with::<Pod>(Some(namespace), name, &options)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pods.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_namespaced_kind_is_swept() {
        for r in resource::RESOURCES.iter().filter(|r| r.namespaced) {
            assert!(SWEPT.contains(&r.kind), "{} is not swept", r.kind);
        }
    }
}
