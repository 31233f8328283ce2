//! What one Raft entry carries: a batch of commands from many clients, and
//! the per-command results the state machine returns.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::types::{
    DeleteRequest, DeleteResponse, LeaseGrant, LeaseId, PutRequest, PutResponse, Revision,
    TxnRequest, TxnResponse,
};

/// One state-changing operation, as proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key.
    Put(PutRequest),
    /// Delete a key or a range.
    Delete(DeleteRequest),
    /// Guarded, atomic group of operations.
    Txn(TxnRequest),
    /// Forget history below a revision.
    Compact(Revision),
    /// Create a lease (the id is chosen by the proposer).
    LeaseGrant {
        /// The new lease's id.
        id: LeaseId,
        /// Time to live in seconds.
        ttl_secs: i64,
    },
    /// Delete a lease and every key attached to it (revoke or expiry).
    LeaseRevoke(LeaseId),
    /// A command applied only if the Raft entry carrying it was proposed by
    /// the leader of `term`: the fence of a leader's control loops, so a
    /// deposed leader's loops can never change state under a new leader.
    Fenced {
        /// The leadership term the proposer held.
        term: u64,
        /// The command to apply within that term.
        command: Box<Command>,
    },
}

impl Command {
    /// Approximate encoded size, for request size limits.
    pub fn size(&self) -> usize {
        match self {
            Command::Put(put) => put.key.len() + put.value.len() + 16,
            Command::Delete(del) => del.range.size() + 8,
            Command::Txn(txn) => {
                let ops = |ops: &[crate::types::TxnOp]| -> usize {
                    ops.iter()
                        .map(|op| match op {
                            crate::types::TxnOp::Range(r) => r.range.size() + 16,
                            crate::types::TxnOp::Put(p) => p.key.len() + p.value.len() + 16,
                            crate::types::TxnOp::Delete(d) => d.range.size() + 8,
                        })
                        .sum()
                };
                let compares: usize = txn
                    .compare
                    .iter()
                    .map(|c| {
                        c.key.len()
                            + match &c.target {
                                crate::types::CompareTarget::Value(v) => v.len(),
                                _ => 8,
                            }
                    })
                    .sum();
                compares + ops(&txn.success) + ops(&txn.failure)
            }
            Command::Compact(_) | Command::LeaseGrant { .. } | Command::LeaseRevoke(_) => 16,
            Command::Fenced { command, .. } => command.size() + 8,
        }
    }

    /// Checks what can be checked before proposing: non-empty keys, ranges in
    /// order, size within `max_bytes`.
    pub fn validate(&self, max_bytes: usize) -> Result<(), StoreError> {
        let size = self.size();
        if size > max_bytes {
            return Err(StoreError::RequestTooLarge {
                size,
                limit: max_bytes,
            });
        }
        match self {
            Command::Put(put) if put.key.is_empty() => Err(StoreError::EmptyKey),
            Command::Put(_) => Ok(()),
            Command::Delete(del) => del.range.validate(),
            Command::Txn(txn) => {
                for compare in &txn.compare {
                    if compare.key.is_empty() {
                        return Err(StoreError::EmptyKey);
                    }
                }
                for op in txn.success.iter().chain(txn.failure.iter()) {
                    match op {
                        crate::types::TxnOp::Range(r) => r.range.validate()?,
                        crate::types::TxnOp::Put(p) if p.key.is_empty() => {
                            return Err(StoreError::EmptyKey)
                        }
                        crate::types::TxnOp::Put(_) => {}
                        crate::types::TxnOp::Delete(d) => d.range.validate()?,
                    }
                }
                Ok(())
            }
            Command::Compact(rev) if *rev < 0 => Err(StoreError::InvalidArgument(
                "compaction revision must not be negative".into(),
            )),
            Command::LeaseGrant { ttl_secs, .. } if *ttl_secs <= 0 => Err(
                StoreError::InvalidArgument("lease TTL must be positive".into()),
            ),
            Command::Fenced { command, .. } if matches!(**command, Command::Fenced { .. }) => Err(
                StoreError::InvalidArgument("a fenced command cannot be fenced again".into()),
            ),
            Command::Fenced { command, .. } => command.validate(max_bytes),
            _ => Ok(()),
        }
    }
}

/// The state machine's answer to one [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Answer to a put.
    Put(PutResponse),
    /// Answer to a delete.
    Delete(DeleteResponse),
    /// Answer to a txn.
    Txn(TxnResponse),
    /// Answer to a compaction: the revision compacted to.
    Compact(Revision),
    /// Answer to a lease grant.
    LeaseGrant(LeaseGrant),
    /// Answer to a lease revoke: the revision of the deletes it caused.
    LeaseRevoke(Revision),
    /// The command was refused by the state machine (it changed nothing).
    Failed(StoreError),
}

/// The payload of one Raft entry: commands from many clients, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Batch(pub Vec<Command>);

/// The state machine's answer to one [`Batch`], one result per command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BatchResult(pub Vec<CommandResult>);
