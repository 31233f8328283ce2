//! The MVCC key space: applying commands to a RocksDB write batch, and reading
//! keys at the current or an earlier revision.
//!
//! Current keys live in the `state` column family. Every change is also
//! recorded in `history` under (revision, index) with the key's previous value,
//! which serves both watch replay and reads at an earlier revision: the value a
//! key had at revision R is the previous value of its first change after R.

use std::collections::{BTreeMap, BTreeSet};

use rocksdb::{DBIteratorWithThreadMode, IteratorMode, ReadOptions, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::{cf, read_meta, CF_HISTORY, CF_LEASE, CF_RAFT_META, CF_STATE};
use crate::codec::{decode, encode, u64_key};
use crate::command::{Command, CommandResult};
use crate::error::{Result, StoreError};
use crate::types::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, Event, EventKind, KeyRange,
    KeyValue, LeaseGrant, LeaseId, PutRequest, PutResponse, RangeRequest, RangeResponse, Revision,
    TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
};

/// Meta key of the current revision.
pub const KEY_REVISION: &[u8] = b"sm/revision";
/// Meta key of the compacted revision.
pub const KEY_COMPACTED: &[u8] = b"sm/compacted";

/// A lease as stored: its TTL and the keys attached to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Time to live in seconds.
    pub ttl_secs: i64,
    /// Keys attached to the lease.
    pub keys: BTreeSet<Vec<u8>>,
}

/// The state machine's in-memory view of what is also on disk: revision
/// counters and the lease table.
#[derive(Debug, Clone, Default)]
pub struct MvccState {
    /// Revision of the last applied change.
    pub revision: Revision,
    /// Revisions below this one have been compacted away.
    pub compacted: Revision,
    /// Every live lease.
    pub leases: BTreeMap<LeaseId, LeaseRecord>,
}

impl MvccState {
    /// Loads counters and leases from the database.
    pub fn load(db: &DB) -> Result<Self> {
        let revision = read_meta(db, None, KEY_REVISION)?;
        let compacted = read_meta(db, None, KEY_COMPACTED)?;
        let mut leases = BTreeMap::new();
        for item in db.iterator_cf(cf(db, CF_LEASE), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| StoreError::storage("reading leases", e))?;
            let id = crate::codec::read_u64_key(&key, "lease key")? as LeaseId;
            leases.insert(id, decode(&value, "lease record")?);
        }
        Ok(MvccState {
            revision,
            compacted,
            leases,
        })
    }
}

/// The history key of the `index`-th event of revision `rev`.
pub fn history_key(rev: Revision, index: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&u64_key(rev as u64));
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Applies commands to one write batch. Changes made earlier in the batch are
/// visible to later commands through an overlay, since RocksDB does not read
/// its own unwritten batch.
pub struct Applier<'a> {
    db: &'a DB,
    state: &'a mut MvccState,
    batch: WriteBatch,
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    events: Vec<Event>,
    history_index: u32,
}

impl<'a> Applier<'a> {
    /// Starts a batch over the database and the in-memory state.
    pub fn new(db: &'a DB, state: &'a mut MvccState) -> Self {
        Applier {
            db,
            state,
            batch: WriteBatch::default(),
            overlay: BTreeMap::new(),
            events: Vec::new(),
            history_index: 0,
        }
    }

    /// The write batch so far, with revision counters included, and the events
    /// it produced (in revision order).
    pub fn finish(mut self) -> (WriteBatch, Vec<Event>) {
        let meta = cf(self.db, CF_RAFT_META);
        self.batch
            .put_cf(meta, KEY_REVISION, encode(&self.state.revision));
        self.batch
            .put_cf(meta, KEY_COMPACTED, encode(&self.state.compacted));
        (self.batch, self.events)
    }

    /// Adds a raw write (e.g. the applied log id) to the batch.
    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// Applies one command of an entry proposed in leadership `term`; a
    /// refused command changes nothing.
    pub fn apply(&mut self, command: &Command, term: u64) -> CommandResult {
        let command = match command {
            Command::Fenced { term: fence, .. } if *fence != term => {
                return CommandResult::Failed(StoreError::Fenced {
                    fence: *fence,
                    term,
                })
            }
            Command::Fenced { command, .. } => command,
            command => command,
        };
        match self.apply_inner(command) {
            Ok(result) => result,
            Err(e) => CommandResult::Failed(e),
        }
    }

    fn apply_inner(&mut self, command: &Command) -> Result<CommandResult> {
        // Commands are validated before proposing, but a log written by a
        // faulty or older proposer must not be able to corrupt the state.
        command.validate(usize::MAX)?;
        match command {
            Command::Put(put) => {
                self.check_lease(put.lease)?;
                let rev = self.next_revision();
                let resp = self.put(put, rev)?;
                self.commit_revision(rev);
                Ok(CommandResult::Put(resp))
            }
            Command::Delete(del) => {
                let rev = self.next_revision();
                let mut resp = self.delete(del, rev)?;
                if resp.deleted > 0 {
                    self.commit_revision(rev);
                }
                resp.revision = self.state.revision;
                Ok(CommandResult::Delete(resp))
            }
            Command::Txn(txn) => Ok(CommandResult::Txn(self.txn(txn)?)),
            Command::Compact(rev) => {
                self.compact(*rev)?;
                Ok(CommandResult::Compact(*rev))
            }
            Command::LeaseGrant { id, ttl_secs } => {
                if *id <= 0 {
                    return Err(StoreError::InvalidArgument(
                        "lease id must be positive".into(),
                    ));
                }
                if self.state.leases.contains_key(id) {
                    return Err(StoreError::LeaseExists(*id));
                }
                let record = LeaseRecord {
                    ttl_secs: *ttl_secs,
                    keys: BTreeSet::new(),
                };
                self.write_lease(*id, &record);
                self.state.leases.insert(*id, record);
                Ok(CommandResult::LeaseGrant(LeaseGrant {
                    id: *id,
                    ttl_secs: *ttl_secs,
                }))
            }
            Command::Fenced { .. } => Err(StoreError::InvalidArgument(
                "a fenced command cannot be fenced again".into(),
            )),
            Command::LeaseRevoke(id) => {
                let record = self
                    .state
                    .leases
                    .get(id)
                    .cloned()
                    .ok_or(StoreError::LeaseNotFound(*id))?;
                let rev = self.next_revision();
                let mut deleted = 0;
                for key in &record.keys {
                    let del = DeleteRequest {
                        range: KeyRange::key(key.clone()),
                        prev_kv: false,
                    };
                    deleted += self.delete(&del, rev)?.deleted;
                }
                if deleted > 0 {
                    self.commit_revision(rev);
                }
                self.state.leases.remove(id);
                self.batch
                    .delete_cf(cf(self.db, CF_LEASE), u64_key(*id as u64));
                Ok(CommandResult::LeaseRevoke(self.state.revision))
            }
        }
    }

    fn next_revision(&self) -> Revision {
        self.state.revision + 1
    }

    fn commit_revision(&mut self, rev: Revision) {
        self.state.revision = rev;
        self.history_index = 0;
    }

    fn check_lease(&self, lease: LeaseId) -> Result<()> {
        if lease != 0 && !self.state.leases.contains_key(&lease) {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(())
    }

    fn write_lease(&mut self, id: LeaseId, record: &LeaseRecord) {
        self.batch
            .put_cf(cf(self.db, CF_LEASE), u64_key(id as u64), encode(record));
    }

    fn attach(&mut self, lease: LeaseId, key: &[u8], attach: bool) {
        if lease == 0 {
            return;
        }
        if let Some(mut record) = self.state.leases.remove(&lease) {
            if attach {
                record.keys.insert(key.to_vec());
            } else {
                record.keys.remove(key);
            }
            self.write_lease(lease, &record);
            self.state.leases.insert(lease, record);
        }
    }

    /// The current value of a key, including this batch's changes.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        if let Some(entry) = self.overlay.get(key) {
            return Ok(entry.clone());
        }
        match self
            .db
            .get_cf(cf(self.db, CF_STATE), key)
            .map_err(|e| StoreError::storage("reading a key", e))?
        {
            Some(bytes) => Ok(Some(decode(&bytes, "stored key")?)),
            None => Ok(None),
        }
    }

    /// Current keys in a range, including this batch's changes.
    fn range_current(&self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let mut iter = range_iter(self.db, None, range);
        let overrides: BTreeMap<Vec<u8>, Option<KeyValue>> = self
            .overlay
            .range::<[u8], _>(range.bounds())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        merge_range(&mut iter, range, &overrides, |kv| {
            out.push(kv);
            true
        })?;
        Ok(out)
    }

    fn record(&mut self, rev: Revision, event: Event) {
        self.batch.put_cf(
            cf(self.db, CF_HISTORY),
            history_key(rev, self.history_index),
            encode(&event),
        );
        self.history_index += 1;
        self.events.push(event);
    }

    fn put(&mut self, put: &PutRequest, rev: Revision) -> Result<PutResponse> {
        let prev = self.get(&put.key)?;
        let kv = KeyValue {
            key: put.key.clone(),
            value: put.value.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease: put.lease,
        };
        if let Some(prev) = &prev {
            if prev.lease != put.lease {
                self.attach(prev.lease, &put.key, false);
            }
        }
        self.attach(put.lease, &put.key, true);
        self.batch
            .put_cf(cf(self.db, CF_STATE), &put.key, encode(&kv));
        self.overlay.insert(put.key.clone(), Some(kv.clone()));
        self.record(
            rev,
            Event {
                kind: EventKind::Put,
                kv,
                prev_kv: prev.clone(),
            },
        );
        Ok(PutResponse {
            revision: rev,
            prev_kv: if put.prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, del: &DeleteRequest, rev: Revision) -> Result<DeleteResponse> {
        let victims = self.range_current(&del.range)?;
        let mut resp = DeleteResponse {
            revision: rev,
            deleted: victims.len() as u64,
            prev_kvs: Vec::new(),
        };
        for prev in victims {
            self.attach(prev.lease, &prev.key, false);
            self.batch.delete_cf(cf(self.db, CF_STATE), &prev.key);
            self.overlay.insert(prev.key.clone(), None);
            let tombstone = KeyValue {
                key: prev.key.clone(),
                mod_revision: rev,
                ..KeyValue::default()
            };
            self.record(
                rev,
                Event {
                    kind: EventKind::Delete,
                    kv: tombstone,
                    prev_kv: Some(prev.clone()),
                },
            );
            if del.prev_kv {
                resp.prev_kvs.push(prev);
            }
        }
        Ok(resp)
    }

    fn compare(&self, compare: &Compare) -> Result<bool> {
        let kv = self.get(&compare.key)?;
        let ordering = match (&compare.target, &kv) {
            (CompareTarget::Value(_), None) => return Ok(compare.op == CompareOp::NotEqual),
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), kv) => kv.as_ref().map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::CreateRevision(r), kv) => {
                kv.as_ref().map_or(0, |kv| kv.create_revision).cmp(r)
            }
            (CompareTarget::ModRevision(r), kv) => {
                kv.as_ref().map_or(0, |kv| kv.mod_revision).cmp(r)
            }
            (CompareTarget::Lease(l), kv) => kv.as_ref().map_or(0, |kv| kv.lease).cmp(l),
        };
        Ok(match compare.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => !ordering.is_eq(),
            CompareOp::Greater => ordering.is_gt(),
            CompareOp::Less => ordering.is_lt(),
        })
    }

    fn txn(&mut self, txn: &TxnRequest) -> Result<TxnResponse> {
        let mut succeeded = true;
        for compare in &txn.compare {
            if !self.compare(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Check everything that could refuse the txn before changing anything,
        // so a refused txn leaves no partial writes.
        for op in ops {
            match op {
                TxnOp::Put(put) => self.check_lease(put.lease)?,
                TxnOp::Range(range) if range.revision != 0 => {
                    return Err(StoreError::InvalidArgument(
                        "a range inside a txn reads the current revision only".into(),
                    ))
                }
                _ => {}
            }
        }
        let rev = self.next_revision();
        let mut changed = false;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Range(range) => {
                    let kvs = self.range_current(&range.range)?;
                    TxnOpResponse::Range(shape_response(kvs, range, self.state.revision))
                }
                TxnOp::Put(put) => {
                    changed = true;
                    TxnOpResponse::Put(self.put(put, rev)?)
                }
                TxnOp::Delete(del) => {
                    let resp = self.delete(del, rev)?;
                    changed |= resp.deleted > 0;
                    TxnOpResponse::Delete(resp)
                }
            });
        }
        if changed {
            self.commit_revision(rev);
        }
        let revision = self.state.revision;
        for resp in &mut responses {
            match resp {
                TxnOpResponse::Put(p) => p.revision = revision,
                TxnOpResponse::Delete(d) => d.revision = revision,
                TxnOpResponse::Range(r) => r.revision = revision,
            }
        }
        Ok(TxnResponse {
            revision,
            succeeded,
            responses,
        })
    }

    fn compact(&mut self, rev: Revision) -> Result<()> {
        if rev > self.state.revision {
            return Err(StoreError::FutureRevision {
                requested: rev,
                current: self.state.revision,
            });
        }
        if rev <= self.state.compacted {
            return Err(StoreError::Compacted {
                requested: rev,
                compacted: self.state.compacted,
            });
        }
        self.batch.delete_range_cf(
            cf(self.db, CF_HISTORY),
            history_key(0, 0),
            history_key(rev, 0),
        );
        self.state.compacted = rev;
        Ok(())
    }
}

fn shape_response(kvs: Vec<KeyValue>, req: &RangeRequest, revision: Revision) -> RangeResponse {
    let count = kvs.len() as u64;
    let mut kvs = kvs;
    let more = req.limit > 0 && kvs.len() > req.limit;
    if req.limit > 0 {
        kvs.truncate(req.limit);
    }
    if req.count_only {
        kvs.clear();
    } else if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse {
        revision,
        kvs,
        count,
        more,
    }
}

fn range_iter<'a>(
    db: &'a DB,
    snapshot: Option<&rocksdb::Snapshot<'a>>,
    range: &KeyRange,
) -> DBIteratorWithThreadMode<'a, DB> {
    let mut opts = ReadOptions::default();
    if let crate::types::RangeEnd::Before(end) = &range.end {
        opts.set_iterate_upper_bound(end.clone());
    }
    if let Some(snapshot) = snapshot {
        opts.set_snapshot(snapshot);
    }
    db.iterator_cf_opt(
        cf(db, CF_STATE),
        opts,
        IteratorMode::From(&range.start, rocksdb::Direction::Forward),
    )
}

/// Walks the keys of `range` in order, taking `overrides` (key -> value at
/// the wanted point, `None` = absent) over what the iterator yields; calls
/// `visit` until it returns false.
fn merge_range<I>(
    iter: &mut I,
    range: &KeyRange,
    overrides: &BTreeMap<Vec<u8>, Option<KeyValue>>,
    mut visit: impl FnMut(KeyValue) -> bool,
) -> Result<()>
where
    I: Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
{
    let mut pending = overrides.iter().peekable();
    for item in iter {
        let (key, value) = item.map_err(|e| StoreError::storage("iterating keys", e))?;
        if !range.contains(&key) {
            break;
        }
        // Overrides for keys before this one come first.
        while let Some((okey, ovalue)) = pending.peek() {
            if okey.as_slice() < &*key {
                if let Some(kv) = ovalue {
                    if !visit(kv.clone()) {
                        return Ok(());
                    }
                }
                pending.next();
            } else {
                break;
            }
        }
        let kv = match pending.peek() {
            Some((okey, ovalue)) if okey.as_slice() == &*key => {
                let kv = (*ovalue).clone();
                pending.next();
                kv
            }
            _ => Some(decode::<KeyValue>(&value, "stored key")?),
        };
        if let Some(kv) = kv {
            if !visit(kv) {
                return Ok(());
            }
        }
    }
    for (_, ovalue) in pending {
        if let Some(kv) = ovalue {
            if !visit(kv.clone()) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Reads a range at the current revision or an earlier one, from one
/// consistent RocksDB snapshot.
pub fn read_range(db: &DB, req: &RangeRequest) -> Result<RangeResponse> {
    req.range.validate()?;
    let snap = db.snapshot();
    let revision: Revision = read_meta(db, Some(&snap), KEY_REVISION)?;
    let compacted: Revision = read_meta(db, Some(&snap), KEY_COMPACTED)?;
    if req.revision > revision {
        return Err(StoreError::FutureRevision {
            requested: req.revision,
            current: revision,
        });
    }
    if req.revision > 0 && req.revision < compacted {
        return Err(StoreError::Compacted {
            requested: req.revision,
            compacted,
        });
    }
    let mut overrides = BTreeMap::new();
    if req.revision > 0 && req.revision < revision {
        // Undo every change made after the wanted revision.
        for item in snap.iterator_cf(
            cf(db, CF_HISTORY),
            IteratorMode::From(
                &history_key(req.revision + 1, 0),
                rocksdb::Direction::Forward,
            ),
        ) {
            let (_, value) = item.map_err(|e| StoreError::storage("reading history", e))?;
            let event: Event = decode(&value, "history event")?;
            if req.range.contains(&event.kv.key) && !overrides.contains_key(&event.kv.key) {
                overrides.insert(event.kv.key.clone(), event.prev_kv);
            }
        }
    }
    let mut iter = range_iter(db, Some(&snap), &req.range);
    let mut kvs = Vec::new();
    let mut count = 0u64;
    let limit = if req.limit == 0 {
        usize::MAX
    } else {
        req.limit
    };
    merge_range(&mut iter, &req.range, &overrides, |mut kv| {
        count += 1;
        if !req.count_only && kvs.len() < limit {
            if req.keys_only {
                kv.value.clear();
            }
            kvs.push(kv);
        }
        true
    })?;
    Ok(RangeResponse {
        revision,
        more: (kvs.len() as u64) < count && !req.count_only,
        kvs,
        count,
    })
}

/// History between two revisions (inclusive), grouped by revision, read from
/// one consistent snapshot; also returns the snapshot's current and compacted
/// revisions so the caller knows how far the replay reaches.
pub struct HistoryRead {
    /// Events grouped by revision, in order.
    pub revisions: Vec<(Revision, Vec<Event>)>,
    /// The store revision the read was taken at.
    pub revision: Revision,
    /// The compacted revision at that point.
    pub compacted: Revision,
}

/// Reads the history from `from` up to the current revision (at most
/// `max_revisions` revisions, to bound memory; the caller continues from the
/// last one).
pub fn read_history(db: &DB, from: Revision, max_revisions: usize) -> Result<HistoryRead> {
    let snap = db.snapshot();
    let revision = read_meta(db, Some(&snap), KEY_REVISION)?;
    let compacted = read_meta(db, Some(&snap), KEY_COMPACTED)?;
    let mut revisions: Vec<(Revision, Vec<Event>)> = Vec::new();
    if from < compacted {
        return Ok(HistoryRead {
            revisions,
            revision,
            compacted,
        });
    }
    for item in snap.iterator_cf(
        cf(db, CF_HISTORY),
        IteratorMode::From(&history_key(from.max(1), 0), rocksdb::Direction::Forward),
    ) {
        let (_, value) = item.map_err(|e| StoreError::storage("reading history", e))?;
        let event: Event = decode(&value, "history event")?;
        let rev = event.kv.mod_revision;
        match revisions.last_mut() {
            Some((last, events)) if *last == rev => events.push(event),
            _ => {
                if revisions.len() == max_revisions {
                    // Stop at a revision boundary: the caller resumes here.
                    return Ok(HistoryRead {
                        revision: revisions.last().map_or(revision, |(r, _)| *r),
                        revisions,
                        compacted,
                    });
                }
                revisions.push((rev, vec![event]));
            }
        }
    }
    Ok(HistoryRead {
        revisions,
        revision,
        compacted,
    })
}
