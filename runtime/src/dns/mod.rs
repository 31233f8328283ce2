//! Cluster DNS for pods, as CoreDNS' `kubernetes` and `forward` plugins
//! serve it in a Kubernetes cluster:
//!
//! - [`records`]: the cluster zone (`cluster.local` by default), computed on
//!   every query from the Services and EndpointSlices of a
//!   [`ServiceSource`] (the agent's informer caches, or fixed lists in
//!   tests), so there is no copy of the zone to keep in step;
//! - [`server`]: [`ClusterDns`], a UDP and TCP listener on tokio answering
//!   from [`Records`] and forwarding every other name to the upstream
//!   servers (the node's own, see [`upstream_from_resolv_conf`]);
//! - [`resolv_conf`]: the `/etc/resolv.conf` a pod gets for its
//!   `dnsPolicy` and `dnsConfig` ([`pod_resolv_conf`]).
//!
//! Only the wire format comes from `hickory-proto` (parsing queries,
//! building responses); the serving loop is ours, a few dozen lines,
//! rather than `hickory-server`, whose authority API changes between
//! versions and which would bring a resolver we do not need.

pub mod records;
pub mod resolv_conf;
pub mod server;
pub mod source;

mod forward;

pub use records::{Answer, Records};
pub use resolv_conf::{pod_resolv_conf, upstream_from_resolv_conf};
pub use server::ClusterDns;
pub use source::{ServiceSource, StaticSource};

use std::net::SocketAddr;

/// What can go wrong serving cluster DNS.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listening socket could not be bound.
    #[error("binding DNS {proto} socket on {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster domain is not a valid DNS name.
    #[error("invalid cluster domain {0:?}")]
    Domain(String),
    /// No upstream server answered in time.
    #[error("no upstream DNS server answered")]
    NoUpstream,
    /// Talking to an upstream server failed.
    #[error("upstream DNS server {server}: {source}")]
    Upstream {
        /// The server.
        server: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A DNS message could not be encoded or decoded.
    #[error("DNS message: {0}")]
    Proto(String),
}

#[cfg(test)]
mod tests;
