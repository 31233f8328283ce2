//! The runner: workers that take keys from a [`Queue`] and reconcile them,
//! never two reconciles of one key at once (the queue keeps a key in flight
//! until its worker is done). Each reconcile runs in a tracing span and is
//! counted in the loop's [`Metrics`]; a failed one comes back after the
//! queue's back-off, a requeue after the delay it asked for.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::Instrument;

use super::informer::ObjectKey;
use super::queue::Queue;
use crate::error::ApiError;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the object (or something it watches) changes.
    Done,
    /// Look again after this delay even if nothing changes (e.g. to check
    /// a deadline).
    RequeueAfter(Duration),
}

/// Why a reconcile failed. Every variant is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A call to the API failed.
    #[error("API call failed: {0}")]
    Api(#[from] ApiError),
    /// The loop's own view is not yet current (e.g. its writes are not yet
    /// in its cache).
    #[error("cache not current: {0}")]
    Stale(String),
    /// A step outside the API failed (e.g. a node agent's work on its
    /// host).
    #[error("{0}")]
    Local(String),
}

/// Upper bounds (milliseconds) of the reconcile latency histogram.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

/// Counters of one control loop. Shared by its workers; read by anyone.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: AtomicU64,
    /// Reconciles per latency bucket; the last slot counts the slower ones.
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    total_micros: AtomicU64,
    queue_depth: AtomicU64,
}

/// A copy of a loop's counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Reconciles finished (successful or not).
    pub reconciles: u64,
    /// Reconciles that failed.
    pub errors: u64,
    /// Reconciles per bucket of [`LATENCY_BUCKETS_MS`], then the slower ones.
    pub latency_buckets: Vec<u64>,
    /// Sum of all reconcile latencies, in microseconds.
    pub total_micros: u64,
    /// Keys waiting in the queue when last sampled.
    pub queue_depth: u64,
}

impl Metrics {
    fn record(&self, elapsed: Duration, failed: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = elapsed.as_millis() as u64;
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.total_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            reconciles: self.reconciles.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_buckets: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            total_micros: self.total_micros.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
        }
    }
}

/// Runs `workers` workers reconciling keys from `queue` until the queue is
/// closed or the returned future is dropped (which aborts the workers).
pub async fn run<F, Fut>(
    name: &'static str,
    queue: Queue<ObjectKey>,
    workers: usize,
    metrics: Arc<Metrics>,
    reconcile: F,
) where
    F: Fn(ObjectKey) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let mut tasks = JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let metrics = metrics.clone();
        let reconcile = reconcile.clone();
        tasks.spawn(async move {
            while let Some(key) = queue.next().await {
                metrics
                    .queue_depth
                    .store(queue.len() as u64, Ordering::Relaxed);
                let span = tracing::info_span!("reconcile", controller = name, key = %key);
                let started = Instant::now();
                let result = reconcile(key.clone()).instrument(span.clone()).await;
                metrics.record(started.elapsed(), result.is_err());
                match result {
                    Ok(Action::Done) => queue.done(&key, true),
                    Ok(Action::RequeueAfter(delay)) => {
                        queue.done(&key, true);
                        queue.add_after(key, delay);
                    }
                    Err(e) => {
                        span.in_scope(
                            || tracing::warn!(error = %e, "reconcile failed; backing off"),
                        );
                        queue.done(&key, false);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
