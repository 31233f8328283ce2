//! The Raft state machine: applies committed batches to the MVCC key space
//! in RocksDB, publishes the resulting events to watchers, and builds and
//! installs snapshots.
//!
//! Architecture invariant: the applied log id and membership are written in
//! the same WriteBatch as the state they produced, so after a crash the state
//! and "how far it got" can never disagree.

// openraft's `StorageError` is the error type its storage traits require;
// it is large, and boxing it is not ours to choose.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rocksdb::{WriteOptions, DB};

use super::mvcc::{Applier, MvccState};
use super::snapshot::{decode_framed, dump, encode_framed, load};
use super::{cf, CF_RAFT_META};
use crate::codec::encode;
use crate::command::BatchResult;
use crate::error::StoreError;
use crate::types::NodeId;
use crate::watch::{WatchBatch, WatchHub};
use crate::TypeConfig;

/// Meta key of the last applied log id.
pub const KEY_APPLIED: &[u8] = b"sm/applied";
/// Meta key of the last applied membership.
pub const KEY_MEMBERSHIP: &[u8] = b"sm/membership";

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// The last snapshot built or installed: its meta and its framed bytes.
type SnapshotCache = Arc<Mutex<Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>>>;

fn sm_read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn sm_write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snapshot_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

/// The state machine handed to openraft; the node keeps clones of `mvcc`
/// (for the lease keeper) and of the watch hub.
pub struct StateMachine {
    db: Arc<DB>,
    mvcc: Arc<Mutex<MvccState>>,
    hub: WatchHub,
    current: SnapshotCache,
}

impl StateMachine {
    /// Opens the state machine over a database, loading counters and leases.
    pub fn open(db: Arc<DB>, hub: WatchHub) -> Result<Self, StoreError> {
        let mvcc = MvccState::load(&db)?;
        hub.set_revision(mvcc.revision);
        Ok(StateMachine {
            db,
            mvcc: Arc::new(Mutex::new(mvcc)),
            hub,
            current: Arc::new(Mutex::new(None)),
        })
    }

    /// Shared handle on the in-memory MVCC state (revision, leases).
    pub fn mvcc(&self) -> Arc<Mutex<MvccState>> {
        self.mvcc.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned + Default>(
        &self,
        key: &[u8],
    ) -> Result<T, StorageError<NodeId>> {
        super::read_meta(&self.db, None, key).map_err(sm_read_err)
    }
}

/// Builds snapshots from a consistent RocksDB snapshot, off the apply path.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    current: SnapshotCache,
}

async fn build(
    db: Arc<DB>,
) -> Result<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>), StorageError<NodeId>> {
    let (meta, data) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let state = dump(&db)?;
        let meta = SnapshotMeta {
            last_log_id: state.applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                state.applied.map_or(0, |id| id.index),
                state.revision
            ),
        };
        Ok((meta, encode_framed(&state)))
    })
    .await
    .map_err(snapshot_err)?
    .map_err(snapshot_err)?;
    Ok((meta, data))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, data) = build(self.db.clone()).await?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        *self.current.lock().expect("snapshot cache lock") = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((
            self.read_meta(KEY_APPLIED)?,
            self.read_meta(KEY_MEMBERSHIP)?,
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let (batch, events, from_revision, revision) = {
            let mut state = self.mvcc.lock().expect("mvcc lock");
            let from_revision = state.revision;
            let mut applier = Applier::new(&self.db, &mut state);
            let mut applied = None;
            let mut membership = None;
            for entry in entries {
                applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(BatchResult::default()),
                    EntryPayload::Normal(batch) => results.push(BatchResult(
                        batch
                            .0
                            .iter()
                            .map(|c| applier.apply(c, entry.log_id.leader_id.term))
                            .collect(),
                    )),
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                        results.push(BatchResult::default());
                    }
                }
            }
            let meta = cf(&self.db, CF_RAFT_META);
            applier
                .batch_mut()
                .put_cf(meta, KEY_APPLIED, encode(&applied));
            if let Some(membership) = &membership {
                applier
                    .batch_mut()
                    .put_cf(meta, KEY_MEMBERSHIP, encode(membership));
            }
            let (batch, events) = applier.finish();
            (batch, events, from_revision, state.revision)
        };
        // Not synced: the log is, and a lost apply is redone from it.
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts).map_err(sm_write_err)?;
        if revision != from_revision {
            self.hub.publish(WatchBatch {
                from_revision,
                revision,
                events,
            });
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), "installing snapshot");
        let db = self.db.clone();
        let applied = meta.last_log_id;
        let membership = meta.last_membership.clone();
        let data_for_cache = data.clone();
        let state = tokio::task::spawn_blocking(move || -> Result<MvccState, StoreError> {
            let mut state = decode_framed(&data)?;
            state.applied = applied;
            state.membership = membership;
            load(&db, &state)?;
            MvccState::load(&db)
        })
        .await
        .map_err(sm_write_err)?
        .map_err(sm_write_err)?;
        let revision = state.revision;
        *self.mvcc.lock().expect("mvcc lock") = state;
        *self.current.lock().expect("snapshot cache lock") = Some((meta.clone(), data_for_cache));
        // Watchers see the jump in revision and replay the gap from history.
        self.hub.set_revision(revision);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // openraft rebuilds a snapshot itself at startup when the log was
        // purged and none is cached, so only the cached one is returned.
        let Some((meta, data)) = self.current.lock().expect("snapshot cache lock").clone() else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
