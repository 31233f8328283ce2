//! The control-loop runtime and the loops built on it. Every loop is an
//! informer (list + watch into an indexed cache) feeding a de-duplicating
//! work queue, drained by a runner that calls `reconcile(key) -> Action`.
//! Loops run only on the Raft leader, with writes fenced to its term
//! ([`leader`]).

pub mod informer;
pub mod leader;
pub mod queue;
pub mod runner;
pub mod util;

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod garbage_collector;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod scheduler;
pub mod statefulset;

pub use informer::{Cache, Informer, ObjectKey};
pub use leader::{ControlLoops, LeaderLoops, LoopContext, LoopSettings, MetricsRegistry};
pub use queue::{Backoff, Queue};
pub use runner::{Action, Metrics, ReconcileError};

/// Every loop of a Kubernetes control plane: the scheduler and the
/// controllers, as a master runs them while it leads.
pub fn standard_loops(settings: LoopSettings) -> ControlLoops {
    ControlLoops::new(settings)
        .with("scheduler", scheduler::run)
        .with("replicaset", replicaset::run)
        .with("deployment", deployment::run)
        .with("statefulset", statefulset::run)
        .with("daemonset", daemonset::run)
        .with("job", job::run)
        .with("garbage-collector", garbage_collector::run)
        .with("namespace", namespace::run)
        .with("node-lifecycle", node_lifecycle::run)
        .with("endpointslice", endpoints::run)
        .with("node-ipam", node_ipam::run)
        .with("horizontal-pod-autoscaler", hpa::run)
}
