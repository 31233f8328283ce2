//! The agent's service proxy (orch's kube-proxy, nftables mode): turns
//! the cluster's Services and EndpointSlices into the rules of
//! [`crate::net::service_rules`] and keeps them in step.
//!
//! A change of a Service or an EndpointSlice wakes the loop; it waits a
//! moment for more changes to gather ([`ProxyConfig::gather`]), computes
//! the rules the caches describe, and applies only their difference from
//! what it applied last, in one `nft` transaction. On start the table is
//! rebuilt whole; every [`ProxyConfig::resync`] the loop checks that the
//! table is still there (rebuilding it if someone deleted it); when the
//! agent stops, the table is removed.
//!
//! Endpoints: those of the Service's EndpointSlices (label
//! `kubernetes.io/service-name`) whose `ready` condition is not false; if
//! none is, those still serving while terminating (as kube-proxy does, so
//! a Service whose last pods are shutting down keeps answering). A Service
//! port's endpoint port is the slice port of the same name and protocol.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::services::ServiceCaches;
use crate::net::nft;
use crate::net::service_rules::{Protocol, ProxyRules, ServicePort};
use crate::net::Cidr;

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The nftables table (`ip <name>`).
    pub table: String,
    /// How long a change waits for others before the rules are updated.
    pub gather: Duration,
    /// How often the table's presence is checked.
    pub resync: Duration,
}

impl ProxyConfig {
    /// The proxy of the agent whose bridge is `bridge`.
    pub fn new(bridge: &str) -> Self {
        ProxyConfig {
            table: crate::net::service_rules::table_name(bridge),
            gather: Duration::from_millis(5),
            resync: Duration::from_secs(30),
        }
    }
}

/// The rules' Service ports for one Service and its slices. Headless and
/// ExternalName Services have none.
pub fn service_ports(service: &Service, slices: &[Arc<EndpointSlice>]) -> Vec<ServicePort> {
    let Some(spec) = &service.spec else {
        return vec![];
    };
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    if cluster_ip.is_none() || spec.type_.as_deref() == Some("ExternalName") {
        return vec![];
    }
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(10_800)
    });
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP")) else {
            continue;
        };
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        let port_name = port.name.clone().unwrap_or_default();
        let label = if port_name.is_empty() {
            number.to_string()
        } else {
            port_name.clone()
        };
        out.push(ServicePort {
            id: format!("{namespace}/{name}/{}/{label}", protocol.nft()),
            cluster_ip,
            protocol,
            port: number,
            node_port: port.node_port.and_then(|p| u16::try_from(p).ok()),
            affinity_timeout,
            endpoints: endpoints_of(slices, &port_name, protocol),
        });
    }
    out
}

/// The endpoints of a Service port (named `port_name`, `""` for an
/// unnamed one) in its slices: the ready ones, else the serving
/// terminating ones.
fn endpoints_of(
    slices: &[Arc<EndpointSlice>],
    port_name: &str,
    protocol: Protocol,
) -> Vec<SocketAddrV4> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or("") == port_name;
            let same_protocol =
                Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")) == Some(protocol);
            (same_name && same_protocol)
                .then_some(p.port)
                .flatten()
                .and_then(|p| u16::try_from(p).ok())
        }) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<Ipv4Addr>() else {
                    continue;
                };
                let at = SocketAddrV4::new(ip, target);
                if is_ready {
                    ready.insert(at);
                } else if serving && is_terminating {
                    terminating.insert(at);
                }
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}

/// What the caches describe now.
pub fn desired(caches: &ServiceCaches, table: &str, cluster: Vec<Cidr>) -> ProxyRules {
    let mut rules = ProxyRules::new(table, cluster);
    for service in caches.services.list() {
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let slices = caches.slices_of(namespace, name);
        for port in service_ports(&service, &slices) {
            rules.services.insert(port.id.clone(), port);
        }
    }
    rules
}

/// The service proxy of one agent.
pub struct ServiceProxy {
    config: ProxyConfig,
    caches: ServiceCaches,
    cluster: watch::Receiver<Vec<Cidr>>,
    applied_revision: watch::Sender<u64>,
}

impl ServiceProxy {
    /// A proxy over `caches`; `cluster` follows the cluster's pod CIDRs
    /// (traffic from elsewhere to a ClusterIP is masqueraded).
    pub fn new(
        config: ProxyConfig,
        caches: ServiceCaches,
        cluster: watch::Receiver<Vec<Cidr>>,
    ) -> Self {
        ServiceProxy {
            config,
            caches,
            cluster,
            applied_revision: watch::channel(0).0,
        }
    }

    /// Follows the revision of the API up to which the rules in the
    /// kernel reflect every Service and EndpointSlice.
    pub fn applied_revision(&self) -> watch::Receiver<u64> {
        self.applied_revision.subscribe()
    }

    /// Keeps the rules in step until `stop`, then removes the table.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut services = self.caches.services.clone();
        let mut slices = self.caches.slices.clone();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { services.wait_until_ready().await; slices.wait_until_ready().await } => {}
        }
        // What the kernel holds (`None`: unknown, rebuild the table).
        let mut kernel: Option<ProxyRules> = None;
        let mut tick = tokio::time::interval(self.config.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let revision = self
                .caches
                .services
                .revision()
                .max(self.caches.slices.revision());
            let changed = self.caches.take_changed();
            let cluster = self.cluster.borrow().clone();
            kernel = match kernel.take() {
                Some(rules) if rules.cluster == cluster => self.update(rules, &changed).await,
                _ => self.rebuild(cluster).await,
            };
            if kernel.is_some() {
                self.applied_revision.send_if_modified(|r| {
                    let newer = revision > *r;
                    *r = (*r).max(revision);
                    newer
                });
            }
            let mut check = false;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.caches.changed.notified() => {}
                _ = self.cluster.changed() => {}
                _ = tick.tick() => check = true,
                // A failed build is tried again soon, changes or not.
                _ = tokio::time::sleep(Duration::from_secs(1)), if kernel.is_none() => {}
            }
            if check && kernel.is_some() {
                match nft::table_exists(&self.config.table).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(table = %self.config.table, "service table gone; rebuilding it");
                        kernel = None;
                    }
                    Err(e) => tracing::warn!(error = %e, "listing the service table"),
                }
            }
            tokio::time::sleep(self.config.gather).await;
        }
        if let Err(e) = nft::remove_table(&self.config.table).await {
            tracing::warn!(error = %e, table = %self.config.table, "removing the service table");
        }
    }

    /// Rebuilds the table whole from the caches; what the kernel holds
    /// then (`None` if the rebuild failed).
    async fn rebuild(&self, cluster: Vec<Cidr>) -> Option<ProxyRules> {
        let started = Instant::now();
        let rules = desired(&self.caches, &self.config.table, cluster);
        let span = tracing::debug_span!("service_proxy_sync", table = %self.config.table, full = true, services = rules.services.len());
        let _enter = span.enter();
        match ProxyRules::apply(&self.config.table, &rules.full()).await {
            Ok(()) => {
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "service table built"
                );
                Some(rules)
            }
            Err(e) => {
                tracing::error!(error = %e, "service table not built");
                None
            }
        }
    }

    /// Applies the change of the Services `changed` (`namespace/name`) to
    /// the kernel holding `rules`; what it holds then (`None`: unknown,
    /// the next pass rebuilds).
    async fn update(
        &self,
        mut rules: ProxyRules,
        changed: &BTreeSet<String>,
    ) -> Option<ProxyRules> {
        if changed.is_empty() {
            return Some(rules);
        }
        let started = Instant::now();
        let mut before = Vec::new();
        for key in changed {
            let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
            let ports = match self.caches.services.get(key) {
                Some(service) => service_ports(&service, &self.caches.slices_of(namespace, name)),
                None => Vec::new(),
            };
            before.extend(rules.replace_service(key, ports));
        }
        let Some(transaction) = rules.changes_since(&before, changed) else {
            return Some(rules);
        };
        let span = tracing::debug_span!("service_proxy_sync", table = %self.config.table, full = false, services = changed.len());
        let _enter = span.enter();
        let computed = started.elapsed();
        match ProxyRules::apply(&self.config.table, &transaction).await {
            Ok(()) => {
                tracing::debug!(
                    compute_ms = computed.as_secs_f64() * 1e3,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "service rules applied"
                );
                Some(rules)
            }
            Err(e) => {
                tracing::warn!(error = %e, "service rules update failed; rebuilding the table");
                None
            }
        }
    }
}
