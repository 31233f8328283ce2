//! The node's cluster DNS server: once the pod network's bridge is up, the
//! agent answers DNS on the bridge's address, port 53 (UDP and TCP) — the
//! `nameserver` of its pods' resolv.conf — from the Services and
//! EndpointSlices it caches ([`crate::dns`]), forwarding other names to
//! the host's resolvers. Every node serves its own pods, as NodeLocal
//! DNSCache does, so no query leaves the node for a cluster name.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::network::PodNetwork;
use super::services::ServiceCaches;
use crate::dns::{upstream_from_resolv_conf, ClusterDns, Records};

/// How long a failed bind waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Serves cluster DNS on the bridge's address until `stop`.
pub async fn serve(network: Arc<PodNetwork>, caches: ServiceCaches, stop: CancellationToken) {
    let Some(gateway) = network.wait_gateway(&stop).await else {
        return;
    };
    let addr = SocketAddr::from((gateway, 53));
    loop {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstream: Vec<SocketAddr> = upstream_from_resolv_conf(&host)
            .into_iter()
            .filter(|a| a.ip() != IpAddr::V4(gateway))
            .collect();
        match ClusterDns::bind(addr, Records::new(caches.clone()), upstream).await {
            Ok(dns) => {
                tracing::info!(%addr, "cluster DNS serving");
                dns.run(stop.clone()).await;
                return;
            }
            Err(e) => tracing::warn!(%addr, error = %e, "cluster DNS cannot listen; trying again"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}
