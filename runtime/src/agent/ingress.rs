//! The node's Ingress proxy: the agent serves HTTP on its `--ingress-addr`
//! (port 80 of every address by default), routing by host and path from
//! the cluster's Ingresses (class `orch`, or none) to the ready endpoints
//! of their Services ([`crate::ingress`]). A port it cannot bind is tried
//! again every few seconds; the rest of the agent runs on. Every node adds
//! its address to the `status.loadBalancer` of the Ingresses it serves
//! (the ADDRESS `kubectl get ingress` shows), as k3s' ingress does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use orch_core::Client;
use tokio_util::sync::CancellationToken;

use super::services::ServiceCaches;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use orch_core::patch::PatchType;

use crate::ingress::routes::class_matches;
use crate::ingress::{CacheSource, IngressProxy, IngressSource, ProxyConfig, DEFAULT_CLASS};

/// How long a failed bind waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Serves Ingresses on `listen` until `stop`, publishing `address` (the
/// node's) in their status.
pub async fn serve(
    listen: SocketAddr,
    client: Client,
    node_name: String,
    address: String,
    services: ServiceCaches,
    stop: CancellationToken,
) {
    let source = Arc::new(CacheSource::start(&client, services, &stop));
    tokio::spawn(publish_address(
        source.clone(),
        client.clone(),
        address,
        stop.clone(),
    ));
    let mut config = ProxyConfig::new(listen);
    config.client = Some(client);
    config.node_name = node_name;
    loop {
        match IngressProxy::start(config.clone(), source.clone(), stop.clone()).await {
            Ok(proxy) => {
                proxy.stopped().await;
                return;
            }
            Err(e) => {
                tracing::warn!(%listen, error = %e, "ingress proxy cannot listen; trying again")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// How often the node checks that its address is in the Ingresses' status.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps `address` in `status.loadBalancer.ingress` of every Ingress of
/// the served class, until `stop`. Nodes add themselves; a write that
/// raced with another node's is corrected on a later pass.
async fn publish_address(
    source: Arc<CacheSource>,
    client: Client,
    address: String,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !source.is_ready() {
            continue;
        }
        for ingress in source.ingresses() {
            if !class_matches(&ingress, DEFAULT_CLASS) {
                continue;
            }
            let mut listed: Vec<IngressLoadBalancerIngress> = ingress
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.clone())
                .unwrap_or_default();
            if listed
                .iter()
                .any(|i| i.ip.as_deref() == Some(address.as_str()))
            {
                continue;
            }
            listed.push(IngressLoadBalancerIngress {
                ip: Some(address.clone()),
                ..Default::default()
            });
            listed.sort_by(|a, b| a.ip.cmp(&b.ip));
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": listed}}});
            let name = ingress.metadata.name.as_deref().unwrap_or_default();
            if let Err(e) = client
                .patch::<Ingress>(
                    ingress.metadata.namespace.as_deref(),
                    name,
                    Some("status"),
                    PatchType::Merge,
                    &patch,
                )
                .await
            {
                tracing::debug!(ingress = %name, error = %e.message, "publishing the node's address");
            }
        }
    }
}
