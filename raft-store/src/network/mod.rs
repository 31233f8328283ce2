//! How members talk: HTTP/2 (over mutual TLS when the member has
//! [`PeerTls`], else cleartext with prior knowledge) carrying bincode
//! bodies. Every message is a `POST` to one of the paths below; the body of a
//! Raft RPC is an [`Envelope`] naming the sender, which the receiver checks
//! against its membership; the answer is a bincode `Result` of the RPC.
//!
//! | path                     | body                        | answer                                 |
//! |--------------------------|-----------------------------|----------------------------------------|
//! | `/raft/append`           | `Envelope<AppendEntriesRequest>` | `Result<AppendEntriesResponse, RaftError>` |
//! | `/raft/vote`             | `Envelope<VoteRequest>`     | `Result<VoteResponse, RaftError>`      |
//! | `/raft/snapshot`         | `Envelope<InstallSnapshotRequest>` | `Result<InstallSnapshotResponse, RaftError<InstallSnapshotError>>` |
//! | `/client/propose`        | `Vec<Command>` (leader only) | `Result<Vec<CommandResult>, StoreError>` |
//! | `/client/command`        | `Command` (any member)      | `Result<CommandResult, StoreError>`   |
//! | `/client/read-index`     | `()` (leader only)          | `Result<u64, StoreError>`              |
//! | `/client/range`          | `RangeRequest`              | `Result<RangeResponse, StoreError>`    |
//! | `/client/keepalive`      | `LeaseId`                   | `Result<i64, StoreError>`              |
//! | `/client/watch`          | `WatchRequest`              | stream of frames: u32 BE length + bincode `Result<WatchResponse, StoreError>` |
//! | `/client/status`         | `()`                        | `Result<MemberStatus, StoreError>`     |
//! | `/admin/membership`      | `MembershipChange`          | `Result<MemberStatus, StoreError>`     |
//! | `/admin/snapshot`        | `()`                        | framed snapshot bytes or an error      |
//! | `/admin/campaign`        | `Envelope<()>` (from the leader) | `Result<(), StoreError>`: start an election now |
//!
//! Transports are pluggable ([`Transport`]): [`HttpTransport`] is the real
//! one; [`FaultyTransport`] wraps any transport to drop, delay or partition
//! messages between members for tests.

mod fault;
mod http;
mod http_server;
mod raft_network;
pub mod server;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use fault::{FaultRules, FaultyTransport};
pub use http::HttpTransport;
pub use http_server::{serve_http, serve_https};
pub use raft_network::NetworkFactory;
pub use tls::{crypto_provider, PeerTls};

use crate::types::NodeId;

/// Path of the append-entries RPC.
pub const PATH_APPEND: &str = "/raft/append";
/// Path of the vote RPC.
pub const PATH_VOTE: &str = "/raft/vote";
/// Path of the install-snapshot RPC.
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
/// Path where the leader accepts batches proposed by other members.
pub const PATH_PROPOSE: &str = "/client/propose";
/// Path where any member accepts one command (and forwards it).
pub const PATH_COMMAND: &str = "/client/command";
/// Path where the leader hands out a read index.
pub const PATH_READ_INDEX: &str = "/client/read-index";
/// Path of range reads.
pub const PATH_RANGE: &str = "/client/range";
/// Path of lease keep-alives.
pub const PATH_KEEPALIVE: &str = "/client/keepalive";
/// Path of watch streams.
pub const PATH_WATCH: &str = "/client/watch";
/// Path of member status.
pub const PATH_STATUS: &str = "/client/status";
/// Path of membership changes.
pub const PATH_MEMBERSHIP: &str = "/admin/membership";
/// Path of snapshot downloads.
pub const PATH_SNAPSHOT_SAVE: &str = "/admin/snapshot";
/// Path where a leader that hands over asks its successor to campaign.
pub const PATH_CAMPAIGN: &str = "/admin/campaign";

/// A Raft RPC with its sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The sending member.
    pub from: NodeId,
    /// The RPC.
    pub body: T,
}

/// A membership change request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a learner and wait until it has caught up.
    AddLearner {
        /// The new member's id.
        id: NodeId,
        /// Its address.
        addr: String,
    },
    /// Make learners voters.
    Promote(Vec<NodeId>),
    /// Remove members (voters or learners).
    Remove(Vec<NodeId>),
}

/// Why a call to another member failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The request was certainly not delivered (connection refused, dropped
    /// by a fault rule).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer within the time limit; the request may have been applied.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed after sending; the request may have been applied.
    #[error("connection failed: {0}")]
    Broken(String),
    /// The peer answered with an HTTP error status.
    #[error("peer answered {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// Response body as text.
        body: String,
    },
}

/// A boxed future, as transports return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries one request to a member and brings back its answer.
pub trait Transport: Send + Sync + 'static {
    /// Posts `body` to `path` on member `target` at `addr`, with a time limit.
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        path: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>>;
}
