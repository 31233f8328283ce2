//! orch's replicated, watchable key-value store: etcd's v3 data model
//! (revisions, ranges, transactions, watches, leases, compaction) replicated
//! by Raft ([openraft]) and persisted in RocksDB.
//!
//! Start a member with [`StoreNode::start`], bootstrap a cluster with
//! [`StoreNode::initialize`], grow it with [`StoreNode::add_learner`] and
//! [`StoreNode::promote`]. Use the member's own API in-process, or [`Client`]
//! from another process.
//!
//! Architecture invariant: this crate knows nothing of Kubernetes objects;
//! keys and values are bytes.

pub mod client;
pub mod codec;
pub mod command;
pub mod config;
pub mod error;
mod failover;
mod handover;
pub mod kv;
mod lease;
pub mod member;
mod membership;
pub mod network;
pub mod node;
mod proposer;
mod read_index;
pub mod storage;
pub mod types;
pub mod watch;

pub use client::Client;
pub use command::{Batch, BatchResult, Command, CommandResult};
pub use config::{NodeConfig, RaftTiming};
pub use error::{Result, StoreError};
pub use kv::Kv;
pub use node::{restore_snapshot, StoreNode};
pub use types::*;
pub use watch::WatchStream;

use std::io::Cursor;

openraft::declare_raft_types!(
    /// openraft's type configuration for the store: an entry carries a
    /// [`Batch`] of commands and yields a [`BatchResult`].
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
);
