//! Leader-bound control loops. The scheduler and the controllers run only
//! on the master that is the store's Raft leader. When a master becomes
//! leader in term T, every registered loop starts with a client whose
//! writes are fenced to T (the state machine refuses them once any other
//! leader proposes them); when it loses leadership, or leads again in a new
//! term, the loops are stopped and started afresh. A new leader resumes
//! from the store alone: loops are level-triggered and re-list everything.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use orch_raft_store::StoreNode;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::informer::{Informer, ObjectKey, SharedInformers};
use super::queue::{Backoff, Queue};
use super::runner::{self, Action, Metrics, ReconcileError};
use crate::client::Client;
use crate::registry::Registry;
use crate::server::ApiServer;

/// Timings and sizes the control loops follow.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// A node whose Lease has not been renewed for this long is NotReady.
    pub node_monitor_grace: Duration,
    /// How often the node lifecycle loop looks at every node's Lease.
    pub node_monitor_period: Duration,
    /// The cluster's pod address range, split into one range per node.
    pub cluster_cidr: String,
    /// Prefix length of each node's pod range.
    pub node_cidr_prefix: u8,
    /// Workers per loop.
    pub workers: usize,
}

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            node_monitor_grace: Duration::from_secs(2),
            node_monitor_period: Duration::from_millis(500),
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_prefix: 24,
            workers: 4,
        }
    }
}

/// What a control loop is started with.
#[derive(Clone)]
pub struct LoopContext {
    /// An in-process client whose writes are fenced to this leadership.
    pub client: Client,
    /// The leadership term the loops run in.
    pub term: u64,
    /// Cancelled when leadership ends; every informer and queue stops.
    pub stop: CancellationToken,
    /// Timings and sizes.
    pub settings: Arc<LoopSettings>,
    metrics: MetricsRegistry,
    informers: SharedInformers,
}

impl LoopContext {
    /// A context for loops run by hand (tests, embedding without a store
    /// leader): `client` is used as is.
    pub fn new(client: Client, settings: LoopSettings) -> LoopContext {
        let stop = CancellationToken::new();
        LoopContext {
            client,
            term: 0,
            informers: SharedInformers::new(stop.clone()),
            stop,
            settings: Arc::new(settings),
            metrics: MetricsRegistry::default(),
        }
    }

    /// An informer of `K`, shared by every loop of this context that asks
    /// for the same kind and namespace (one list + watch and one cache,
    /// with the indexes all of them added); it stops with the loops.
    pub fn informer<K>(&self) -> Informer<K>
    where
        K: k8s_openapi::Resource
            + Metadata<Ty = ObjectMeta>
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        Informer::shared(self.client.clone(), self.informers.clone())
    }

    /// A work queue that is closed when the loops stop.
    pub fn queue(&self) -> Queue<ObjectKey> {
        let queue = Queue::new(Backoff::default());
        let closer = queue.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            closer.close();
        });
        queue
    }

    /// Runs the loop `name`: `settings.workers` workers reconciling keys
    /// from `queue` until the loops stop.
    pub async fn run<F, Fut>(&self, name: &'static str, queue: Queue<ObjectKey>, reconcile: F)
    where
        F: Fn(ObjectKey) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
    {
        let metrics = self.metrics.register(name);
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = runner::run(name, queue, self.settings.workers, metrics, reconcile) => {}
        }
    }

    /// The metrics of every loop started in this context.
    pub fn metrics(&self) -> MetricsRegistry {
        self.metrics.clone()
    }
}

/// The metrics of the loops, by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct MetricsRegistry(Arc<Mutex<BTreeMap<&'static str, Arc<Metrics>>>>);

impl MetricsRegistry {
    /// The metrics of loop `name` (made on first use).
    pub fn register(&self, name: &'static str) -> Arc<Metrics> {
        self.0
            .lock()
            .expect("metrics lock")
            .entry(name)
            .or_default()
            .clone()
    }

    /// Every loop's metrics, by loop name.
    pub fn all(&self) -> BTreeMap<&'static str, Arc<Metrics>> {
        self.0.lock().expect("metrics lock").clone()
    }

    /// The metrics in Prometheus' text format.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        for (name, metrics) in self.all() {
            let s = metrics.snapshot();
            out.push_str(&format!(
                "orch_controller_reconciles_total{{controller=\"{name}\"}} {}\n",
                s.reconciles
            ));
            out.push_str(&format!(
                "orch_controller_reconcile_errors_total{{controller=\"{name}\"}} {}\n",
                s.errors
            ));
            out.push_str(&format!(
                "orch_controller_queue_depth{{controller=\"{name}\"}} {}\n",
                s.queue_depth
            ));
            let mut cumulative = 0;
            for (i, count) in s.latency_buckets.iter().enumerate() {
                cumulative += count;
                let le = runner::LATENCY_BUCKETS_MS
                    .get(i)
                    .map_or("+Inf".to_string(), |ms| format!("{}", *ms as f64 / 1000.0));
                out.push_str(&format!(
                    "orch_controller_reconcile_seconds_bucket{{controller=\"{name}\",le=\"{le}\"}} {cumulative}\n"
                ));
            }
            out.push_str(&format!(
                "orch_controller_reconcile_seconds_sum{{controller=\"{name}\"}} {}\n",
                s.total_micros as f64 / 1e6
            ));
            out.push_str(&format!(
                "orch_controller_reconcile_seconds_count{{controller=\"{name}\"}} {}\n",
                s.reconciles
            ));
        }
        out
    }
}

/// A future a loop runs as.
pub type LoopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts one loop in a context.
pub type LoopStart = Arc<dyn Fn(LoopContext) -> LoopFuture + Send + Sync>;

/// The set of loops a master runs while it leads.
#[derive(Clone, Default)]
pub struct ControlLoops {
    loops: Vec<(&'static str, LoopStart)>,
    settings: LoopSettings,
}

impl ControlLoops {
    /// No loops yet, with these settings.
    pub fn new(settings: LoopSettings) -> Self {
        ControlLoops {
            loops: Vec::new(),
            settings,
        }
    }

    /// Adds a loop.
    pub fn with<F, Fut>(mut self, name: &'static str, start: F) -> Self
    where
        F: Fn(LoopContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.loops.push((
            name,
            Arc::new(move |ctx| Box::pin(start(ctx)) as LoopFuture),
        ));
        self
    }

    /// The names of the loops, in start order.
    pub fn names(&self) -> Vec<&'static str> {
        self.loops.iter().map(|(name, _)| *name).collect()
    }

    /// Starts every loop in `ctx`; they run until `ctx.stop` is cancelled
    /// or the returned set is dropped.
    pub fn start(&self, ctx: &LoopContext) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for (name, start) in &self.loops {
            let run = start(ctx.clone());
            let name = *name;
            tasks.spawn(async move {
                run.await;
                tracing::debug!(loop_name = name, "control loop ended");
            });
        }
        tasks
    }

    /// Runs the loops whenever `store` is the Raft leader, until the member
    /// stops. The handle tells which term the loops run in.
    pub fn run_on_leader(self, store: StoreNode) -> LeaderLoops {
        self.run_on_leader_with(Registry::new(store))
    }

    /// [`run_on_leader`](Self::run_on_leader) with the loops' objects read
    /// and written through `registry` (its Secret key, say), fenced to each
    /// term.
    pub fn run_on_leader_with(self, objects: Registry) -> LeaderLoops {
        let store = objects.store().clone();
        let (term_tx, term) = watch::channel(None);
        let metrics = MetricsRegistry::default();
        let registry = metrics.clone();
        let settings = Arc::new(self.settings.clone());
        let task = tokio::spawn(async move {
            let mut current: Option<u64> = None;
            // Dropping the guard (also when this task is aborted) cancels
            // the loops' stop token, which ends their informers and queues.
            let mut running: Option<(DropGuard, JoinSet<()>)> = None;
            loop {
                let next = match store.leadership_changed(current).await {
                    Ok(next) => next,
                    Err(_) => break,
                };
                if let Some((stop, tasks)) = running.take() {
                    tracing::info!(term = ?current, "leadership ended: stopping control loops");
                    drop(stop);
                    drop(tasks);
                }
                current = next;
                term_tx.send_replace(current);
                if let Some(term) = current {
                    tracing::info!(term, "leading: starting control loops");
                    let server = ApiServer::new(objects.over(store.fenced(term)));
                    let stop = CancellationToken::new();
                    let ctx = LoopContext {
                        client: Client::in_process(server),
                        term,
                        informers: SharedInformers::new(stop.clone()),
                        stop,
                        settings: settings.clone(),
                        metrics: registry.clone(),
                    };
                    let tasks = self.start(&ctx);
                    running = Some((ctx.stop.drop_guard(), tasks));
                }
            }
            drop(running);
            term_tx.send_replace(None);
        });
        LeaderLoops {
            term,
            metrics,
            task,
        }
    }
}

/// The loops of one master, started and stopped with its leadership.
pub struct LeaderLoops {
    term: watch::Receiver<Option<u64>>,
    metrics: MetricsRegistry,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderLoops {
    /// The term the loops run in now (`None`: this master does not lead).
    pub fn running_term(&self) -> Option<u64> {
        *self.term.borrow()
    }

    /// The loops' metrics (kept across terms).
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.metrics
    }

    /// Stops the loops for good.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for LeaderLoops {
    fn drop(&mut self) {
        self.task.abort();
    }
}
