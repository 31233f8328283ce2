//! The store's data model, as in etcd v3: keys and values are bytes, every
//! mutation bumps one cluster-wide revision, and each key carries its
//! create revision, mod revision, version and lease.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// Identifies a member of a store cluster.
pub type NodeId = u64;

/// A cluster-wide revision; the first write of a new store gets revision 1.
pub type Revision = i64;

/// Identifies a lease; 0 means "no lease".
pub type LeaseId = i64;

/// One key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty when read with `keys_only`).
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation; 1 after the create.
    pub version: i64,
    /// Lease the key is attached to, 0 if none.
    pub lease: LeaseId,
}

/// Which keys a request addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// First key of the range.
    pub start: Vec<u8>,
    /// Where the range ends.
    pub end: RangeEnd,
}

/// The end of a [`KeyRange`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeEnd {
    /// Only the key `start` itself.
    Single,
    /// Keys in `[start, end)`.
    Before(Vec<u8>),
    /// Every key `>= start`.
    Unbounded,
}

impl KeyRange {
    /// Exactly one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: key.into(),
            end: RangeEnd::Single,
        }
    }

    /// Every key starting with `prefix` (every key at all for an empty prefix).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = match prefix_end(&start) {
            Some(end) => RangeEnd::Before(end),
            None => RangeEnd::Unbounded,
        };
        KeyRange { start, end }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: start.into(),
            end: RangeEnd::Before(end.into()),
        }
    }

    /// Every key `>= start`.
    pub fn from(start: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: start.into(),
            end: RangeEnd::Unbounded,
        }
    }

    /// Checks the range is well formed: a single key must not be empty, and the
    /// end must not sort before the start.
    pub fn validate(&self) -> Result<()> {
        match &self.end {
            RangeEnd::Single if self.start.is_empty() => Err(StoreError::EmptyKey),
            RangeEnd::Before(end) if end.as_slice() < self.start.as_slice() => {
                Err(StoreError::InvertedRange)
            }
            _ => Ok(()),
        }
    }

    /// True if `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Before(end) => key >= self.start.as_slice() && key < end.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
        }
    }

    /// The range as bounds over byte strings.
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let start = Bound::Included(self.start.as_slice());
        let end = match &self.end {
            RangeEnd::Single => Bound::Included(self.start.as_slice()),
            RangeEnd::Before(end) => Bound::Excluded(end.as_slice()),
            RangeEnd::Unbounded => Bound::Unbounded,
        };
        (start, end)
    }

    /// Encoded size, for request size limits.
    pub fn size(&self) -> usize {
        self.start.len()
            + match &self.end {
                RangeEnd::Before(end) => end.len(),
                _ => 0,
            }
    }
}

/// The smallest key greater than every key with this prefix, or `None` when
/// no such key exists (empty prefix or all bytes 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A read of one key or a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The keys to read.
    pub range: KeyRange,
    /// Return at most this many keys (0: no limit); `more` tells if some were left.
    pub limit: usize,
    /// Read at this revision (0: the current one).
    pub revision: Revision,
    /// Leave values out.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Serve from this member's local state without confirming leadership
    /// (may be stale); the default is a linearizable read.
    pub serializable: bool,
}

impl RangeRequest {
    /// A linearizable read of `range` at the current revision.
    pub fn new(range: KeyRange) -> Self {
        RangeRequest {
            range,
            limit: 0,
            revision: 0,
            keys_only: false,
            count_only: false,
            serializable: false,
        }
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RangeResponse {
    /// The store revision the read was served at.
    pub revision: Revision,
    /// The keys found, in key order (empty for `count_only`).
    pub kvs: Vec<KeyValue>,
    /// How many keys are in the range in total (ignoring `limit`).
    pub count: u64,
    /// True if `limit` left keys out.
    pub more: bool,
}

/// Sets a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key; must not be empty.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Attach the key to this lease (0: none).
    pub lease: LeaseId,
    /// Return the previous key-value.
    pub prev_kv: bool,
}

impl PutRequest {
    /// A plain put without lease.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        PutRequest {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
        }
    }
}

/// The answer to a [`PutRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PutResponse {
    /// The revision of this write.
    pub revision: Revision,
    /// The key before the write, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// Deletes one key or a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// The keys to delete.
    pub range: KeyRange,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// The answer to a [`DeleteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeleteResponse {
    /// The store revision after the delete (unchanged if nothing was deleted).
    pub revision: Revision,
    /// How many keys were deleted.
    pub deleted: u64,
    /// The deleted key-values, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value (a missing key compares as absent: only `NotEqual` holds).
    Value(Vec<u8>),
    /// The version (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    CreateRevision(Revision),
    /// The mod revision (0 for a missing key).
    ModRevision(Revision),
    /// The lease (0 for none or a missing key).
    Lease(LeaseId),
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Equal to the target.
    Equal,
    /// Not equal to the target.
    NotEqual,
    /// Greater than the target.
    Greater,
    /// Less than the target.
    Less,
}

/// One guard of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared; must not be empty.
    pub key: Vec<u8>,
    /// How to compare.
    pub op: CompareOp,
    /// What to compare with.
    pub target: CompareTarget,
}

impl Compare {
    /// `key`'s mod revision equals `rev` (0: the key does not exist).
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: Revision) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(rev),
        }
    }

    /// `key`'s version compared to `version` (0: the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    /// `key`'s create revision compared to `rev`.
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, rev: Revision) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::CreateRevision(rev),
        }
    }

    /// `key`'s value compared to `value`.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Value(value.into()),
        }
    }
}

/// One operation inside a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// A read, evaluated at the transaction's point in the log.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    Delete(DeleteRequest),
}

/// The result of one [`TxnOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResponse {
    /// Result of a read.
    Range(RangeResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a delete.
    Delete(DeleteResponse),
}

/// If every compare holds, run `success`, else run `failure`; all under one
/// revision, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnRequest {
    /// Guards, all of which must hold.
    pub compare: Vec<Compare>,
    /// Operations when every guard holds.
    pub success: Vec<TxnOp>,
    /// Operations when some guard fails.
    pub failure: Vec<TxnOp>,
}

/// The answer to a [`TxnRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TxnResponse {
    /// The store revision after the transaction.
    pub revision: Revision,
    /// True if every guard held and `success` ran.
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (explicitly or by lease expiry).
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, only `key` and `mod_revision`
    /// (the revision of the delete) are set.
    pub kv: KeyValue,
    /// The key before the change, if it existed and the watcher asked for it.
    pub prev_kv: Option<KeyValue>,
}

/// Starts a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The keys watched.
    pub range: KeyRange,
    /// Deliver events from this revision on (0: only future events).
    pub start_revision: Revision,
    /// Include the previous key-value in each event.
    pub prev_kv: bool,
    /// Send a progress notification (an empty response carrying the revision
    /// up to which the watcher has seen everything) when idle this long.
    pub progress_notify_ms: u64,
}

impl WatchRequest {
    /// Watch `range` for future events, without previous values or progress.
    pub fn new(range: KeyRange) -> Self {
        WatchRequest {
            range,
            start_revision: 0,
            prev_kv: false,
            progress_notify_ms: 0,
        }
    }
}

/// One message on a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    /// Every event up to and including this revision has been delivered.
    pub revision: Revision,
    /// The events, in revision order (empty for a progress notification).
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// True for a progress notification (bookmark).
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }
}

/// The answer to a lease grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The lease id.
    pub id: LeaseId,
    /// Its time to live, in seconds.
    pub ttl_secs: i64,
}

/// A snapshot of cluster state as one member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// This member's id.
    pub id: NodeId,
    /// The leader's id, if known.
    pub leader: Option<NodeId>,
    /// Current Raft term.
    pub term: u64,
    /// Store revision applied on this member.
    pub revision: Revision,
    /// Compacted revision.
    pub compacted: Revision,
    /// Index of the last applied log entry.
    pub applied_index: u64,
    /// Term and index of the last entry in this member's log.
    pub last_log: Option<(u64, u64)>,
    /// Voting members and their addresses.
    pub voters: Vec<(NodeId, String)>,
    /// Learners and their addresses.
    pub learners: Vec<(NodeId, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn ranges_contain_what_they_say() {
        let prefix = KeyRange::prefix("a/");
        assert!(prefix.contains(b"a/"));
        assert!(prefix.contains(b"a/zzz"));
        assert!(!prefix.contains(b"a0"));
        assert!(KeyRange::prefix("").contains(b"\xff\xff"));
        assert!(KeyRange::key("k").contains(b"k"));
        assert!(!KeyRange::key("k").contains(b"k2"));
        assert!(!KeyRange::between("b", "d").contains(b"d"));
    }

    #[test]
    fn malformed_ranges_are_refused() {
        assert_eq!(KeyRange::key("").validate(), Err(StoreError::EmptyKey));
        assert_eq!(
            KeyRange::between("z", "a").validate(),
            Err(StoreError::InvertedRange)
        );
        assert_eq!(KeyRange::between("a", "a").validate(), Ok(()));
    }
}
