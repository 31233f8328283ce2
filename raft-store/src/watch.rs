//! Watch fan-out.
//!
//! The state machine publishes each applied batch into a bounded broadcast
//! ring and never waits for watchers. Each watcher is a task that first
//! replays history from RocksDB, then follows the ring; when it falls behind
//! the ring (lagged) or sees a jump in revisions (a snapshot was installed),
//! it replays the gap from history again. Events are delivered in revision
//! order with no gap and no duplicate; a start revision below the compacted
//! one gets a `Compacted` error, after which the client must re-list.

use std::sync::Arc;
use std::time::Duration;

use rocksdb::DB;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Result, StoreError};
use crate::storage::mvcc::read_history;
use crate::types::{Event, Revision, WatchRequest, WatchResponse};

/// The changes of one apply call: every revision in `(from_revision, revision]`.
#[derive(Debug, Clone)]
pub struct WatchBatch {
    /// Store revision before the batch.
    pub from_revision: Revision,
    /// Store revision after the batch.
    pub revision: Revision,
    /// The events, in revision order.
    pub events: Vec<Event>,
}

/// The publishing side of watches, shared by the state machine and the node.
#[derive(Clone)]
pub struct WatchHub {
    ring: broadcast::Sender<Arc<WatchBatch>>,
    revision: Arc<watch::Sender<Revision>>,
    closed: Arc<watch::Sender<bool>>,
}

/// A stream of watch responses; ends when the member stops or after an error.
pub type WatchStream = ReceiverStream<Result<WatchResponse>>;

/// How many history revisions a watcher reads per replay step.
const REPLAY_CHUNK: usize = 1024;
/// How many responses may wait for a slow consumer before its task blocks
/// (and then falls back to history replay).
const WATCHER_BUFFER: usize = 256;

impl WatchHub {
    /// A hub whose ring holds `capacity` batches.
    pub fn new(capacity: usize) -> Self {
        let (ring, _) = broadcast::channel(capacity.max(16));
        let (revision, _) = watch::channel(0);
        let (closed, _) = watch::channel(false);
        WatchHub {
            ring,
            revision: Arc::new(revision),
            closed: Arc::new(closed),
        }
    }

    /// Ends every watch stream (the member is shutting down).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Publishes an applied batch; never blocks.
    pub fn publish(&self, batch: WatchBatch) {
        self.revision.send_replace(batch.revision);
        let _ = self.ring.send(Arc::new(batch));
    }

    /// Records the applied revision without events (startup, snapshot install).
    pub fn set_revision(&self, revision: Revision) {
        self.revision.send_replace(revision);
    }

    /// The latest applied revision.
    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// A receiver that sees every change of the applied revision.
    pub fn revision_receiver(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }

    /// Starts a watcher task over `db` and returns its stream.
    pub fn watch(&self, db: Arc<DB>, req: WatchRequest) -> Result<WatchStream> {
        req.range.validate()?;
        if req.start_revision < 0 {
            return Err(StoreError::InvalidArgument(
                "start revision must not be negative".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let next = if req.start_revision > 0 {
            req.start_revision
        } else {
            self.revision() + 1
        };
        let watcher = Watcher {
            hub: self.clone(),
            db,
            req,
            next,
            out: tx,
        };
        tokio::spawn(watcher.run());
        Ok(ReceiverStream::new(rx))
    }
}

struct Watcher {
    hub: WatchHub,
    db: Arc<DB>,
    req: WatchRequest,
    /// The first revision not yet delivered.
    next: Revision,
    out: mpsc::Sender<Result<WatchResponse>>,
}

/// Why the live phase ended.
enum LiveEnd {
    /// Fell behind the ring or saw a revision jump: replay from history.
    Replay,
    /// The consumer went away or the store stopped.
    Stop,
}

impl Watcher {
    async fn run(self) {
        let mut closed = self.hub.closed.subscribe();
        tokio::select! {
            _ = self.follow() => {}
            _ = closed.wait_for(|closed| *closed) => {}
        }
    }

    async fn follow(mut self) {
        loop {
            // Subscribe before replaying, so nothing committed after the
            // replay's snapshot can be missed; duplicates are skipped by revision.
            let ring = self.hub.ring.subscribe();
            match self.replay().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = self.out.send(Err(e)).await;
                    return;
                }
            }
            match self.live(ring).await {
                LiveEnd::Replay => continue,
                LiveEnd::Stop => return,
            }
        }
    }

    fn filter(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.kv.mod_revision >= self.next && self.req.range.contains(&e.kv.key))
            .map(|e| {
                let mut e = e.clone();
                if !self.req.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }

    /// Replays history from `next` to the current revision. Returns false if
    /// the consumer is gone.
    async fn replay(&mut self) -> Result<bool> {
        loop {
            let db = self.db.clone();
            let from = self.next;
            let read = tokio::task::spawn_blocking(move || read_history(&db, from, REPLAY_CHUNK))
                .await
                .map_err(|e| StoreError::Raft(format!("history reader failed: {e}")))??;
            if self.next < read.compacted {
                return Err(StoreError::Compacted {
                    requested: self.next,
                    compacted: read.compacted,
                });
            }
            let complete = read.revisions.len() < REPLAY_CHUNK;
            for (rev, events) in &read.revisions {
                let events = self.filter(events);
                if !events.is_empty()
                    && self
                        .out
                        .send(Ok(WatchResponse {
                            revision: *rev,
                            events,
                        }))
                        .await
                        .is_err()
                {
                    return Ok(false);
                }
                self.next = rev + 1;
            }
            if complete {
                self.next = self.next.max(read.revision + 1);
                return Ok(true);
            }
        }
    }

    async fn live(&mut self, mut ring: broadcast::Receiver<Arc<WatchBatch>>) -> LiveEnd {
        let progress = Duration::from_millis(self.req.progress_notify_ms);
        let mut ticker = tokio::time::interval(if progress.is_zero() {
            Duration::from_secs(3600)
        } else {
            progress
        });
        ticker.reset();
        loop {
            tokio::select! {
                msg = ring.recv() => match msg {
                    Ok(batch) => {
                        if batch.revision < self.next {
                            continue;
                        }
                        if batch.from_revision >= self.next {
                            return LiveEnd::Replay;
                        }
                        let events = self.filter(&batch.events);
                        self.next = batch.revision + 1;
                        if !events.is_empty() {
                            ticker.reset();
                            let resp = WatchResponse { revision: batch.revision, events };
                            if self.out.send(Ok(resp)).await.is_err() {
                                return LiveEnd::Stop;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return LiveEnd::Replay,
                    Err(broadcast::error::RecvError::Closed) => return LiveEnd::Stop,
                },
                _ = ticker.tick(), if !progress.is_zero() => {
                    // A snapshot install moves the revision without a batch.
                    if self.hub.revision() >= self.next {
                        return LiveEnd::Replay;
                    }
                    let resp = WatchResponse { revision: self.next - 1, events: Vec::new() };
                    if self.out.send(Ok(resp)).await.is_err() {
                        return LiveEnd::Stop;
                    }
                }
                _ = self.out.closed() => return LiveEnd::Stop,
            }
        }
    }
}
