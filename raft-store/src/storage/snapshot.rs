//! Whole-state snapshots: the content Raft ships to a lagging member, and the
//! file `snapshot save` writes and `snapshot restore` reads.
//!
//! A snapshot holds every current key, every lease, the history not yet
//! compacted, and the revision counters, all read from one RocksDB snapshot
//! together with the applied log id and membership they correspond to.
//!
//! File format: `ORCHSNAP` magic, u32 BE format version, u64 BE payload
//! length, the bincode payload, u32 BE CRC-32 of the payload.

use std::io::{Read, Write};
use std::path::Path;

use openraft::{LogId, StoredMembership};
use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::mvcc::{history_key, LeaseRecord, KEY_COMPACTED, KEY_REVISION};
use super::state_machine::{KEY_APPLIED, KEY_MEMBERSHIP};
use super::{cf, read_meta, CF_HISTORY, CF_LEASE, CF_RAFT_META, CF_STATE};
use crate::codec::{decode, encode, read_u64_key, u64_key};
use crate::error::{Result, StoreError};
use crate::types::{Event, KeyValue, LeaseId, NodeId, Revision};

const MAGIC: &[u8; 8] = b"ORCHSNAP";
const FILE_VERSION: u32 = 1;

/// Everything a member's state machine holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDump {
    /// Log id of the last entry the state reflects.
    pub applied: Option<LogId<NodeId>>,
    /// Membership as of `applied`.
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// Current revision.
    pub revision: Revision,
    /// Compacted revision.
    pub compacted: Revision,
    /// Every current key, in key order.
    pub kvs: Vec<KeyValue>,
    /// Every lease.
    pub leases: Vec<(LeaseId, LeaseRecord)>,
    /// Uncompacted history, in revision order.
    pub history: Vec<Event>,
}

/// Reads the whole state machine from one consistent RocksDB snapshot.
pub fn dump(db: &DB) -> Result<StateDump> {
    let snap = db.snapshot();
    let mut out = StateDump {
        applied: read_meta(db, Some(&snap), KEY_APPLIED)?,
        membership: read_meta(db, Some(&snap), KEY_MEMBERSHIP)?,
        revision: read_meta(db, Some(&snap), KEY_REVISION)?,
        compacted: read_meta(db, Some(&snap), KEY_COMPACTED)?,
        ..StateDump::default()
    };
    for item in snap.iterator_cf(cf(db, CF_STATE), IteratorMode::Start) {
        let (_, value) = item.map_err(|e| StoreError::storage("dumping keys", e))?;
        out.kvs.push(decode(&value, "stored key")?);
    }
    for item in snap.iterator_cf(cf(db, CF_LEASE), IteratorMode::Start) {
        let (key, value) = item.map_err(|e| StoreError::storage("dumping leases", e))?;
        let id = read_u64_key(&key, "lease key")? as LeaseId;
        out.leases.push((id, decode(&value, "lease record")?));
    }
    for item in snap.iterator_cf(cf(db, CF_HISTORY), IteratorMode::Start) {
        let (_, value) = item.map_err(|e| StoreError::storage("dumping history", e))?;
        out.history.push(decode(&value, "history event")?);
    }
    Ok(out)
}

/// Replaces the whole state machine with `dump`, atomically and synced.
pub fn load(db: &DB, dump: &StateDump) -> Result<()> {
    let mut batch = WriteBatch::default();
    for name in [CF_STATE, CF_LEASE, CF_HISTORY] {
        let family = cf(db, name);
        for item in db.iterator_cf(family, IteratorMode::Start) {
            let (key, _) = item.map_err(|e| StoreError::storage("clearing state", e))?;
            batch.delete_cf(family, key);
        }
    }
    for kv in &dump.kvs {
        batch.put_cf(cf(db, CF_STATE), &kv.key, encode(kv));
    }
    for (id, record) in &dump.leases {
        batch.put_cf(cf(db, CF_LEASE), u64_key(*id as u64), encode(record));
    }
    let mut index = 0u32;
    let mut last_rev = 0;
    for event in &dump.history {
        if event.kv.mod_revision != last_rev {
            last_rev = event.kv.mod_revision;
            index = 0;
        }
        batch.put_cf(
            cf(db, CF_HISTORY),
            history_key(last_rev, index),
            encode(event),
        );
        index += 1;
    }
    let meta = cf(db, CF_RAFT_META);
    batch.put_cf(meta, KEY_APPLIED, encode(&dump.applied));
    batch.put_cf(meta, KEY_MEMBERSHIP, encode(&dump.membership));
    batch.put_cf(meta, KEY_REVISION, encode(&dump.revision));
    batch.put_cf(meta, KEY_COMPACTED, encode(&dump.compacted));
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)
        .map_err(|e| StoreError::storage("installing snapshot", e))
}

/// Encodes a dump with the file framing (magic, version, length, CRC).
pub fn encode_framed(dump: &StateDump) -> Vec<u8> {
    let payload = encode(dump);
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FILE_VERSION.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out
}

/// Decodes a framed dump, checking magic, version, length and CRC.
pub fn decode_framed(bytes: &[u8]) -> Result<StateDump> {
    let bad = |detail: &str| StoreError::corrupt("reading snapshot", detail);
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err(bad("not an orch snapshot (bad magic)"));
    }
    let version = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FILE_VERSION {
        return Err(bad(&format!(
            "snapshot format version {version}, this orch reads {FILE_VERSION}"
        )));
    }
    let len = u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    if bytes.len() != 20 + len + 4 {
        return Err(bad("truncated or oversized snapshot"));
    }
    let payload = &bytes[20..20 + len];
    let crc = u32::from_be_bytes(bytes[20 + len..].try_into().expect("4 bytes"));
    if crc32fast::hash(payload) != crc {
        return Err(bad("checksum mismatch"));
    }
    decode(payload, "snapshot payload")
}

/// Writes a framed dump to `path` (via a temporary file, fsynced, renamed).
pub fn write_file(path: &Path, dump: &StateDump) -> Result<()> {
    write_bytes(path, &encode_framed(dump))
}

/// Writes already framed snapshot bytes to `path`, checking them first
/// (via a temporary file, fsynced, renamed).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    decode_framed(bytes)?;
    let tmp = path.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| StoreError::storage(format!("writing snapshot {}", path.display()), e))
}

/// Reads and checks a snapshot file.
pub fn read_file(path: &Path) -> Result<StateDump> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| StoreError::storage(format!("reading snapshot {}", path.display()), e))?;
    decode_framed(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateDump {
        StateDump {
            revision: 7,
            compacted: 2,
            kvs: vec![KeyValue {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                create_revision: 3,
                mod_revision: 7,
                version: 2,
                lease: 0,
            }],
            ..StateDump::default()
        }
    }

    #[test]
    fn framed_snapshot_round_trips() {
        let bytes = encode_framed(&sample());
        assert_eq!(decode_framed(&bytes).unwrap(), sample());
    }

    #[test]
    fn damaged_snapshots_are_refused_not_misread() {
        let bytes = encode_framed(&sample());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 6;
        flipped[last] ^= 1;
        assert!(matches!(
            decode_framed(&flipped),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_framed(&bytes[..bytes.len() - 1]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_framed(b"not a snapshot at all, really"),
            Err(StoreError::Corrupt { .. })
        ));
        let mut future = bytes.clone();
        future[11] = 9;
        let err = decode_framed(&future).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }
}
