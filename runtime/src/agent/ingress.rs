//! The node's Ingress proxy: the agent serves HTTP on its `--ingress-addr`
//! (port 80 of every address by default), routing by host and path from
//! the cluster's Ingresses (class `orch`, or none) to the ready endpoints
//! of their Services ([`crate::ingress`]). A port it cannot bind is tried
//! again every few seconds; the rest of the agent runs on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use orch_core::Client;
use tokio_util::sync::CancellationToken;

use super::services::ServiceCaches;
use crate::ingress::{CacheSource, IngressProxy, ProxyConfig};

/// How long a failed bind waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Serves Ingresses on `listen` until `stop`.
pub async fn serve(
    listen: SocketAddr,
    client: Client,
    node_name: String,
    services: ServiceCaches,
    stop: CancellationToken,
) {
    let source = Arc::new(CacheSource::start(&client, services, &stop));
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
