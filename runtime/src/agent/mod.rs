//! The node agent (orch's kubelet): registers this host as a Node, renews
//! its Lease, watches the pods bound to it and drives each one to its spec
//! through the [`crate::pod`] runtime, reporting their status back through
//! `orch-core`'s client.

pub mod env;
pub mod volumes;
