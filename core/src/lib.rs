//! orch's control plane over its replicated store: Kubernetes objects, the
//! API server real kubectl drives, and (next) the client, scheduler and
//! controllers.
//!
//! Objects are kept as JSON (`serde_json::Value`) in the Kubernetes shapes
//! of the `k8s-openapi` types, so that manifests and clients work unchanged
//! and fields orch does not model yet are preserved, not dropped.
//!
//! Architecture invariant: core talks to the store only through
//! `orch-raft-store`'s API and knows nothing of containers or hosts.

pub mod admission;
pub mod client;
pub mod cluster_ca;
pub mod control_plane;
pub mod controller;
pub mod defaults;
pub mod encryption;
pub mod error;
pub mod heartbeat;
pub mod hollow;
pub mod managed_fields;
pub mod node_ports;
pub mod object;
pub mod patch;
pub mod quantity;
pub mod registry;
pub mod resource;
pub mod selector;
pub mod server;
pub mod service_ips;
pub mod tls;
pub mod typed;
pub mod validation;

pub use client::Client;
pub use control_plane::{ControlPlane, ControlPlaneConfig};
pub use error::ApiError;
pub use registry::Registry;
