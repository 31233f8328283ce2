//! Hollow nodes, as Kubernetes' kubemark has them: fake node agents that
//! look like real kubelets to the control plane, without running anything.
//! Each registers a Node (capacity, addresses, nodeInfo, Ready), renews its
//! Lease in `kube-node-lease`, reports the pods bound to it as Running and
//! Ready at once, and deletes the pods marked for deletion at once (grace
//! period 0: "stopping the containers" takes no time).
//!
//! A [`HollowCluster`] runs thousands of them in one process with shared
//! machinery rather than per-node tasks: one pod informer for all of them
//! (indexed by `spec.nodeName`), one Node informer, one task renewing every
//! lease (spread over the renewal interval, with a bound on requests in
//! flight), and a bounded pool of workers for status patches and deletes
//! (many concurrent patches are packed into few Raft entries by the store's
//! proposal batcher). It talks to the API through an [`crate::Client`], in
//! process or over HTTP, with optional failover addresses.

mod agent;
mod endpoints;
pub mod objects;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::controller::{Backoff, Cache, ObjectKey, Queue};
use crate::error::ApiError;
use endpoints::Endpoints;

pub use crate::heartbeat::LEASE_NAMESPACE;

/// The pod cache index by `spec.nodeName`.
pub const BY_NODE: &str = "node";

/// How a hollow cluster looks and behaves.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// Nodes registered at start.
    pub nodes: usize,
    /// Node names are this prefix followed by a number from 0.
    pub name_prefix: String,
    /// CPU capacity (and allocatable) of every node, e.g. `"4"`.
    pub cpu: String,
    /// Memory capacity (and allocatable) of every node, e.g. `"16Gi"`.
    pub memory: String,
    /// Pod capacity of every node.
    pub pods: u32,
    /// The value of the `node-role.kubernetes.io/<role>` label.
    pub node_role: String,
    /// More labels for every node.
    pub labels: BTreeMap<String, String>,
    /// How often each node renews its Lease.
    pub renew_interval: Duration,
    /// The Leases' `leaseDurationSeconds`.
    pub lease_duration_seconds: i32,
    /// Workers reporting pod status and deleting pods.
    pub workers: usize,
    /// Lease renewals and registrations in flight at most.
    pub max_in_flight: usize,
    /// More API addresses (`host:port`, HTTP) to fail over to, in order,
    /// when the client's endpoint answers 503 or cannot be reached.
    pub failover: Vec<String>,
}

impl Default for HollowConfig {
    fn default() -> Self {
        HollowConfig {
            nodes: 1,
            name_prefix: "hollow-node-".into(),
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: 110,
            node_role: "worker".into(),
            labels: BTreeMap::new(),
            renew_interval: Duration::from_secs(1),
            lease_duration_seconds: 40,
            workers: 128,
            max_in_flight: 256,
            failover: Vec::new(),
        }
    }
}

/// Why a hollow cluster could not start or grow.
#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    /// A node could not be registered.
    #[error("registering hollow node {node}: {source}")]
    Register {
        /// The node.
        node: String,
        /// The API's answer.
        source: ApiError,
    },
    /// The cluster was shut down.
    #[error("the hollow cluster is shut down")]
    ShutDown,
}

/// Counters of a hollow cluster since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HollowStats {
    /// Registered nodes.
    pub nodes: usize,
    /// Nodes stopped with [`HollowCluster::stop_node`].
    pub stopped_nodes: usize,
    /// Pods reported Running.
    pub pods_started: u64,
    /// Pods deleted after being marked for deletion.
    pub pods_deleted: u64,
    /// Failed status patches and deletes (retried with back-off).
    pub pod_errors: u64,
    /// Lease renewals that succeeded.
    pub lease_renewals: u64,
    /// Lease renewals that failed.
    pub lease_errors: u64,
    /// Running pods that were marked not Ready (while their node was
    /// unreachable) and were reported Ready again.
    pub pod_ready_reports: u64,
    /// Times a live node found itself not Ready (e.g. marked so by node
    /// lifecycle) and reported Ready again.
    pub ready_reports: u64,
}

/// Samples of bound-to-Running latency kept at most.
const MAX_LATENCY_SAMPLES: usize = 1 << 20;

/// One hollow node.
pub(crate) struct NodeEntry {
    pub(crate) name: String,
    pub(crate) index: u64,
    pub(crate) alive: AtomicBool,
    /// A lease renewal of this node is in flight.
    pub(crate) renewing: AtomicBool,
    /// Pod addresses handed out so far.
    pub(crate) next_ip: AtomicU64,
}

impl NodeEntry {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) pods_started: AtomicU64,
    pub(crate) pods_deleted: AtomicU64,
    pub(crate) pod_errors: AtomicU64,
    pub(crate) lease_renewals: AtomicU64,
    pub(crate) lease_errors: AtomicU64,
    pub(crate) ready_reports: AtomicU64,
    pub(crate) pod_ready_reports: AtomicU64,
}

/// What every task of a hollow cluster shares.
pub(crate) struct Shared {
    pub(crate) config: HollowConfig,
    pub(crate) endpoints: Endpoints,
    pub(crate) nodes: RwLock<HashMap<String, Arc<NodeEntry>>>,
    /// Nodes by lease renewal slot.
    pub(crate) slots: RwLock<Vec<Vec<Arc<NodeEntry>>>>,
    pub(crate) next_index: AtomicU64,
    pub(crate) pods: RwLock<Option<Cache<Pod>>>,
    pub(crate) node_cache: RwLock<Option<Cache<Node>>>,
    /// Pods and nodes to look at: pod keys are `namespace/name`, node keys
    /// are bare names.
    pub(crate) queue: Queue<ObjectKey>,
    pub(crate) counters: Counters,
    /// When each pod was first seen bound to a hollow node.
    pub(crate) first_seen: Mutex<HashMap<ObjectKey, Instant>>,
    pub(crate) latencies: Mutex<Vec<Duration>>,
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    pub(crate) stop: CancellationToken,
}

impl Shared {
    pub(crate) fn node(&self, name: &str) -> Option<Arc<NodeEntry>> {
        self.nodes.read().expect("nodes lock").get(name).cloned()
    }

    pub(crate) fn pod_cache(&self) -> Option<Cache<Pod>> {
        self.pods.read().expect("pods lock").clone()
    }

    pub(crate) fn node_cache(&self) -> Option<Cache<Node>> {
        self.node_cache.read().expect("nodes lock").clone()
    }

    pub(crate) fn record_latency(&self, key: &str) {
        let seen = self.first_seen.lock().expect("seen lock").remove(key);
        if let Some(seen) = seen {
            let mut samples = self.latencies.lock().expect("latency lock");
            if samples.len() < MAX_LATENCY_SAMPLES {
                samples.push(seen.elapsed());
            }
        }
    }

    /// Queues the node and every pod bound to it.
    pub(crate) fn requeue_node(&self, name: &str) {
        self.queue.add(name.to_string());
        if let Some(pods) = self.pod_cache() {
            for pod in pods.by_index(BY_NODE, name) {
                self.queue
                    .add(crate::controller::informer::key_of(&pod.metadata));
            }
        }
    }
}

/// Lease renewal slots per interval: each node renews in one of them.
pub(crate) const RENEW_SLOTS: usize = 50;

/// A set of hollow nodes sharing one process. Dropping it (or
/// [`HollowCluster::shutdown`]) stops every node.
pub struct HollowCluster {
    shared: Arc<Shared>,
    tasks: Mutex<JoinSet<()>>,
}

impl HollowCluster {
    /// Starts the shared machinery and registers `config.nodes` nodes;
    /// returns once every one is registered.
    pub async fn start(client: Client, config: HollowConfig) -> Result<HollowCluster, HollowError> {
        let endpoints = Endpoints::new(client, &config.failover);
        let initial = config.nodes;
        let shared = Arc::new(Shared {
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
            config,
            endpoints,
            nodes: RwLock::new(HashMap::new()),
            slots: RwLock::new(vec![Vec::new(); RENEW_SLOTS]),
            next_index: AtomicU64::new(0),
            pods: RwLock::new(None),
            node_cache: RwLock::new(None),
            queue: Queue::new(Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_secs(5),
            }),
            counters: Counters::default(),
            first_seen: Mutex::new(HashMap::new()),
            latencies: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(agent::informers(
            shared.clone(),
            shared.endpoints.subscribe(),
        ));
        tasks.spawn(agent::workers(shared.clone()));
        tasks.spawn(agent::renew_leases(shared.clone()));
        let cluster = HollowCluster {
            shared,
            tasks: Mutex::new(tasks),
        };
        cluster.add_nodes(initial).await?;
        Ok(cluster)
    }

    /// Registers `n` more nodes; returns their names.
    pub async fn add_nodes(&self, n: usize) -> Result<Vec<String>, HollowError> {
        if self.shared.stop.is_cancelled() {
            return Err(HollowError::ShutDown);
        }
        let first = self.shared.next_index.fetch_add(n as u64, Ordering::AcqRel);
        let mut registrations = JoinSet::new();
        for index in first..first + n as u64 {
            let shared = self.shared.clone();
            registrations.spawn(async move {
                let _permit = shared.in_flight.clone().acquire_owned().await;
                agent::register(&shared, index).await
            });
        }
        let mut names = Vec::with_capacity(n);
        while let Some(done) = registrations.join_next().await {
            match done {
                Ok(Ok(name)) => names.push(name),
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(HollowError::Register {
                        node: format!("#{first}+"),
                        source: ApiError::internal(e.to_string()),
                    })
                }
            }
        }
        names.sort_by_key(|name| self.shared.node(name).map_or(0, |n| n.index));
        Ok(names)
    }

    /// The names of every node, in registration order.
    pub fn node_names(&self) -> Vec<String> {
        let nodes = self.shared.nodes.read().expect("nodes lock");
        let mut all: Vec<&Arc<NodeEntry>> = nodes.values().collect();
        all.sort_by_key(|n| n.index);
        all.iter().map(|n| n.name.clone()).collect()
    }

    /// Kills node `name`: it stops renewing its Lease and handling its
    /// pods (as a node that lost power). False if there is no such node.
    pub fn stop_node(&self, name: &str) -> bool {
        match self.shared.node(name) {
            Some(node) => {
                node.alive.store(false, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Brings a stopped node back: it renews its Lease again, reports
    /// itself Ready and handles its pods. False if there is no such node.
    pub fn resume_node(&self, name: &str) -> bool {
        match self.shared.node(name) {
            Some(node) => {
                node.alive.store(true, Ordering::Release);
                self.shared.requeue_node(name);
                let shared = self.shared.clone();
                tokio::spawn(async move { agent::renew_one(&shared, &node).await });
                true
            }
            None => false,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> HollowStats {
        let nodes = self.shared.nodes.read().expect("nodes lock");
        let c = &self.shared.counters;
        HollowStats {
            nodes: nodes.len(),
            stopped_nodes: nodes.values().filter(|n| !n.is_alive()).count(),
            pods_started: c.pods_started.load(Ordering::Relaxed),
            pods_deleted: c.pods_deleted.load(Ordering::Relaxed),
            pod_errors: c.pod_errors.load(Ordering::Relaxed),
            lease_renewals: c.lease_renewals.load(Ordering::Relaxed),
            lease_errors: c.lease_errors.load(Ordering::Relaxed),
            ready_reports: c.ready_reports.load(Ordering::Relaxed),
            pod_ready_reports: c.pod_ready_reports.load(Ordering::Relaxed),
        }
    }

    /// Takes the latency samples collected so far: from the moment a pod
    /// was first seen bound to a hollow node to the moment its Running
    /// status was written.
    pub fn take_start_latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.shared.latencies.lock().expect("latency lock"))
    }

    /// Stops every node and the shared tasks, and waits for them.
    pub async fn shutdown(self) {
        self.shared.stop.cancel();
        self.shared.queue.close();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        while tasks.join_next().await.is_some() {}
    }
}

impl Drop for HollowCluster {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.queue.close();
    }
}
