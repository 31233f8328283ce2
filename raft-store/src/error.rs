//! The store's one error type.
//!
//! Every variant carries plain data so that an error can cross the wire
//! unchanged: a client talking to a remote member sees the same variant a caller
//! of the in-process API would see.

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Revision};

/// Everything that can go wrong in the store, grouped as: invalid input, MVCC
/// state, leases, cluster state, storage, transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    // --- invalid input -----------------------------------------------------
    /// A key was empty where a key is required.
    #[error("invalid argument: key must not be empty")]
    EmptyKey,
    /// A range's end sorts before its start.
    #[error("invalid argument: range end sorts before range start")]
    InvertedRange,
    /// A request (key plus value, or a whole txn) is larger than the limit.
    #[error("request too large: {size} bytes, limit is {limit} bytes")]
    RequestTooLarge {
        /// Encoded size of the request.
        size: usize,
        /// Configured limit (`max_request_bytes`).
        limit: usize,
    },
    /// A request argument is invalid for another reason, described in the text.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    // --- MVCC state ----------------------------------------------------------
    /// The requested revision was removed by compaction.
    #[error(
        "required revision {requested} has been compacted (compacted revision is {compacted})"
    )]
    Compacted {
        /// The revision the caller asked for.
        requested: Revision,
        /// The store's compacted revision.
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("required revision {requested} is a future revision (current revision is {current})")]
    FutureRevision {
        /// The revision the caller asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },

    // --- leases --------------------------------------------------------------
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {0:x} not found")]
    LeaseNotFound(i64),
    /// A lease with this id already exists.
    #[error("lease {0:x} already exists")]
    LeaseExists(i64),

    // --- cluster state -------------------------------------------------------
    /// This member is not the leader and the caller asked not to be forwarded.
    #[error("not the leader; leader is {}", leader_display(.leader_id, .leader_addr))]
    NotLeader {
        /// The leader's id, if known.
        leader_id: Option<NodeId>,
        /// The leader's address, if known.
        leader_addr: Option<String>,
    },
    /// The cluster cannot serve the request right now (no leader, no quorum,
    /// timed out). Whether a write that failed this way was applied is unknown.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Another membership change is still being committed; retry later.
    #[error("membership change refused: another change is in progress")]
    MembershipChangeInProgress,
    /// A message came from a member that is not in this member's configuration.
    #[error("rejected message from node {0}: not a member of this cluster")]
    UnknownSender(NodeId),
    /// A fenced command was proposed by a leader of another term: the
    /// leadership its control loops relied on is gone. Nothing was changed.
    #[error("fenced out: the write was bound to leadership term {fence}, but was proposed in term {term}")]
    Fenced {
        /// The term the write was bound to.
        fence: u64,
        /// The term of the leader that proposed the entry.
        term: u64,
    },
    /// The member is shutting down or has stopped.
    #[error("the store member has stopped")]
    Stopped,

    // --- storage -------------------------------------------------------------
    /// The data directory is locked by another process.
    #[error("data dir {path} is locked by another process")]
    DataDirLocked {
        /// The data directory.
        path: String,
    },
    /// The data directory is not an orch store, or of an unknown format version.
    #[error("data dir {path} has an unknown format: {detail}")]
    UnknownFormat {
        /// The data directory.
        path: String,
        /// What was found.
        detail: String,
    },
    /// The data on disk could not be read back: corruption.
    #[error("data corrupt ({context}): {detail}")]
    Corrupt {
        /// What was being read.
        context: String,
        /// The underlying complaint.
        detail: String,
    },
    /// A RocksDB or file system call failed.
    #[error("storage error while {context}: {detail}")]
    Storage {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        detail: String,
    },

    // --- transport -----------------------------------------------------------
    /// A call to another member or to a server failed.
    #[error("transport error talking to {target}: {detail}")]
    Transport {
        /// The address or node called.
        target: String,
        /// The underlying error.
        detail: String,
    },
    /// Catch-all for a failure inside the Raft engine.
    #[error("raft: {0}")]
    Raft(String),
}

fn leader_display(id: &Option<NodeId>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        _ => "unknown".to_string(),
    }
}

impl StoreError {
    /// A storage error with the step that failed.
    pub fn storage(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        StoreError::Storage {
            context: context.into(),
            detail: err.to_string(),
        }
    }

    /// A corruption error with what was being decoded.
    pub fn corrupt(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            context: context.into(),
            detail: err.to_string(),
        }
    }

    /// True when retrying the same request elsewhere or later may succeed
    /// without risk of applying it twice (it was certainly not applied).
    pub fn is_retryable_before_send(&self) -> bool {
        matches!(self, StoreError::NotLeader { .. })
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
