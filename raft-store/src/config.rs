//! Settings of one store member.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::network::PeerTls;
use crate::types::NodeId;

/// etcd's default request size limit, which orch keeps.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// How one member runs. `NodeConfig::new` gives production defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's id; unique in the cluster, never reused.
    pub id: NodeId,
    /// Where the member keeps its data (created if missing).
    pub data_dir: PathBuf,
    /// Where the member listens for peers and clients (port 0: any free port).
    pub listen_addr: SocketAddr,
    /// The address other members and clients use (default: the bound address).
    pub advertise_addr: Option<String>,
    /// Sync the Raft log to disk before acknowledging (default true). Turning
    /// it off risks losing acknowledged writes on power loss: benchmarks only.
    pub fsync: bool,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// How many log entries to keep behind a snapshot (for followers that
    /// are only slightly behind).
    pub logs_kept_after_snapshot: u64,
    /// Largest accepted request (key + value, or a whole txn).
    pub max_request_bytes: usize,
    /// Most commands packed into one Raft entry.
    pub max_batch_commands: usize,
    /// Most Raft entries proposed by this member at once.
    pub max_inflight_batches: usize,
    /// Batches held in the watch ring before slow watchers fall back to
    /// replaying history from disk.
    pub watch_ring_capacity: usize,
    /// Time limit of a write or linearizable read, including leader changes.
    pub request_timeout: Duration,
    /// Time limit of one message between members.
    pub rpc_timeout: Duration,
    /// How often the leader checks leases for expiry.
    pub lease_check_interval: Duration,
    /// Mutual TLS with the other members and clients (`None`: cleartext,
    /// for tests and trusted networks).
    pub peer_tls: Option<PeerTls>,
}

/// Raft's clock: how often the leader sends heartbeats and how long a
/// follower waits before it campaigns. In openraft 0.9 a follower that
/// heard from a leader also refuses other candidates for
/// `election_timeout_max` (the leader lease) and campaigns only after the
/// lease plus a random election timeout: a leader that dies is replaced
/// after about `election_timeout_max + rand(min..max)`. The heartbeat is
/// also the time limit of each append-entries call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat period (and append time limit).
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout (and the lease).
    pub election_timeout_max: Duration,
}

impl NodeConfig {
    /// Sets Raft's clock.
    pub fn set_timing(&mut self, timing: RaftTiming) {
        self.heartbeat_interval = timing.heartbeat_interval;
        self.election_timeout_min = timing.election_timeout_min;
        self.election_timeout_max = timing.election_timeout_max;
    }

    /// Production defaults for member `id` keeping its data in `data_dir`,
    /// listening on `listen_addr`.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, listen_addr: SocketAddr) -> Self {
        NodeConfig {
            id,
            data_dir: data_dir.into(),
            listen_addr,
            advertise_addr: None,
            fsync: true,
            // openraft 0.9 also uses the heartbeat interval as the time
            // limit of each append-entries call, so it must cover a synced
            // append of a full batch on a loaded machine: at 100 ms (etcd's
            // heartbeat) a busy 2-core master timed out every append and
            // replication stalled. Elections wait 4-8 heartbeats (etcd: 10).
            heartbeat_interval: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_after_logs: 20_000,
            logs_kept_after_snapshot: 5_000,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_batch_commands: 1024,
            max_inflight_batches: 2,
            watch_ring_capacity: 4096,
            request_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_millis(1000),
            lease_check_interval: Duration::from_millis(200),
            peer_tls: None,
        }
    }
}
