//! The Raft log and Raft metadata in RocksDB (`log` and `raft_meta` column
//! families). Appends are fsynced before openraft is told they are durable,
//! unless the member runs with `fsync = false` (benchmarks only).

// openraft's `StorageError` is the error type its storage traits require;
// it is large, and boxing it is not ours to choose.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{cf, CF_LOG, CF_RAFT_META};
use crate::codec::{decode, encode, read_u64_key, u64_key};
use crate::types::NodeId;
use crate::TypeConfig;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// How many of the latest entries stay in memory.
const RECENT_ENTRIES: usize = 4096;

/// The log store; cheap to clone (it doubles as the log reader).
///
/// The latest entries are also kept in memory: the leader replicates what it
/// has just appended, and reading those back from RocksDB and decoding them
/// again cost more than keeping them. The cache always ends at the last log
/// entry (truncate and purge trim it too), so a range it covers is served
/// from memory and anything older from RocksDB.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    fsync: bool,
    recent: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(&std::io::Error::other(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

impl LogStore {
    /// A log store over an open database.
    pub fn new(db: Arc<DB>, fsync: bool) -> Self {
        LogStore {
            db,
            fsync,
            recent: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn write_options(&self) -> WriteOptions {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.fsync);
        opts
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        let bytes = self
            .db
            .get_cf(cf(&self.db, CF_RAFT_META), key)
            .map_err(read_err)?;
        bytes
            .map(|b| decode(&b, "raft metadata").map_err(read_err))
            .transpose()
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
    ) -> Result<(), StorageError<NodeId>> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync && self.fsync);
        self.db
            .put_cf_opt(cf(&self.db, CF_RAFT_META), key, encode(value), &opts)
            .map_err(write_err)
    }

    /// The entries of `range` if the in-memory cache holds all of them.
    fn read_recent<RB: RangeBounds<u64>>(
        &self,
        range: &RB,
        start: u64,
    ) -> Option<Vec<Entry<TypeConfig>>> {
        let recent = self.recent.lock().expect("log cache lock");
        let (&first, _) = recent.first_key_value()?;
        if start < first {
            return None;
        }
        let entries: Vec<Entry<TypeConfig>> = recent
            .range((range.start_bound().cloned(), range.end_bound().cloned()))
            .map(|(_, e)| e.clone())
            .collect();
        let contiguous = entries
            .windows(2)
            .all(|w| w[1].log_id.index == w[0].log_id.index + 1);
        contiguous.then_some(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        last_log_id(&self.db)
    }
}

/// The id of the last entry of the log kept in `db`.
pub(crate) fn last_log_id(db: &DB) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
    let mut iter = db.iterator_cf(cf(db, CF_LOG), rocksdb::IteratorMode::End);
    match iter.next() {
        None => Ok(None),
        Some(item) => {
            let (_, value) = item.map_err(read_err)?;
            let entry: Entry<TypeConfig> = decode(&value, "log entry").map_err(read_err)?;
            Ok(Some(entry.log_id))
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(n) => *n,
            Bound::Excluded(n) => n + 1,
            Bound::Unbounded => 0,
        };
        if let Some(entries) = self.read_recent(&range, start) {
            return Ok(entries);
        }
        let mut entries = Vec::new();
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_LOG),
            rocksdb::IteratorMode::From(&u64_key(start), rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(read_err)?;
            let index = read_u64_key(&key, "log key").map_err(read_err)?;
            if !range.contains(&index) {
                break;
            }
            entries.push(decode(&value, "log entry").map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(KEY_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(KEY_VOTE, vote, true)
            .map_err(|_| StorageIOError::write_vote(&std::io::Error::other("saving vote")).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced: losing it only makes a restarted member wait for the
        // leader to tell it again what is committed.
        self.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let log = cf(&self.db, CF_LOG);
        let mut batch = WriteBatch::default();
        for entry in &entries {
            batch.put_cf(log, u64_key(entry.log_id.index), encode(entry));
        }
        // The synced write waits on the disk: do it on a blocking thread so
        // the runtime's workers keep serving (this member has few of them).
        let db = self.db.clone();
        let options = self.write_options();
        let result = tokio::task::spawn_blocking(move || db.write_opt(batch, &options))
            .await
            .map_err(write_err)?;
        if result.is_ok() {
            let mut recent = self.recent.lock().expect("log cache lock");
            for entry in entries {
                recent.insert(entry.log_id.index, entry);
            }
            while recent.len() > RECENT_ENTRIES {
                recent.pop_first();
            }
        }
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncating log");
        self.recent
            .lock()
            .expect("log cache lock")
            .split_off(&log_id.index);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOG),
            u64_key(log_id.index),
            u64_key(u64::MAX),
        );
        self.db
            .write_opt(batch, &self.write_options())
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging log");
        {
            let mut recent = self.recent.lock().expect("log cache lock");
            let kept = recent.split_off(&(log_id.index + 1));
            *recent = kept;
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT_META), KEY_PURGED, encode(&log_id));
        batch.delete_range_cf(cf(&self.db, CF_LOG), u64_key(0), u64_key(log_id.index + 1));
        self.db
            .write_opt(batch, &self.write_options())
            .map_err(write_err)
    }
}
