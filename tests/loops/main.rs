//! The control loops: scheduler and controllers against a real control
//! plane (RocksDB, the API server), driven through the typed client and
//! the real kubectl.

mod controllers;
mod gc_namespace_nodes;
mod hollow;
mod leader;
mod rollout;
mod scheduler;
mod workloads;
