//! One store member: storage, Raft, the HTTP server, and the client API.
//!
//! Write path: a command is validated, queued for the proposer, packed with
//! other waiting commands into one Raft entry, replicated, applied, and its
//! result handed back. On a follower, the proposer forwards the whole batch
//! to the leader. Read path: a linearizable read obtains a read index from
//! the leader (one confirmation round shared by every waiting reader), waits
//! until this member has applied that far, then reads its local RocksDB.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::codec::{decode, encode};
use crate::command::{Command, CommandResult};
use crate::config::NodeConfig;
use crate::error::{Result, StoreError};
use crate::kv::Kv;
use crate::lease::LeaseDeadlines;
use crate::network::{
    HttpTransport, NetworkFactory, Transport, TransportError, PATH_PROPOSE, PATH_READ_INDEX,
};
use crate::storage::log_store::LogStore;
use crate::storage::mvcc::{read_range, MvccState};
use crate::storage::snapshot::{dump, encode_framed};
use crate::storage::state_machine::StateMachine;
use crate::storage::{cf, open_data_dir, DataDir, CF_RAFT_META};
use crate::types::{LeaseId, MemberStatus, NodeId, RangeRequest, RangeResponse, WatchRequest};
use crate::watch::{WatchHub, WatchStream};
use crate::{proposer, read_index, TypeConfig};

/// Meta key set by snapshot restore: start as a new single-member cluster.
pub(crate) const KEY_BOOTSTRAP_SINGLE: &[u8] = b"bootstrap-single";

/// Where the leader is, as this member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leader {
    /// This member leads.
    Local,
    /// Another member leads.
    Remote(NodeId, String),
    /// No leader known (election in progress, or no quorum).
    Unknown,
}

pub(crate) struct NodeInner {
    pub(crate) id: NodeId,
    pub(crate) addr: String,
    pub(crate) config: NodeConfig,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) db: Arc<rocksdb::DB>,
    pub(crate) hub: WatchHub,
    pub(crate) mvcc: Arc<Mutex<MvccState>>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) leases: LeaseDeadlines,
    /// Since when this member leads (term and instant), as first seen.
    pub(crate) leading_since: Mutex<Option<(u64, std::time::Instant)>>,
    /// When the leader last reached this member (an append or heartbeat
    /// it accepted).
    leader_contact: Mutex<Option<std::time::Instant>>,
    proposals: mpsc::Sender<proposer::Proposal>,
    reads: mpsc::Sender<oneshot::Sender<Result<u64>>>,
    pub(crate) shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    _data_dir: DataDir,
}

/// A running store member. Cheap to clone; every clone drives the same member.
#[derive(Clone)]
pub struct StoreNode {
    pub(crate) inner: Arc<NodeInner>,
    /// When set, every command sent through [`Kv`] is bound to this
    /// leadership term (see [`StoreNode::fenced`]).
    fence: Option<u64>,
}

/// The term of member `id`'s leadership in `m`, if it leads.
fn leader_term_of(m: &openraft::RaftMetrics<NodeId, BasicNode>, id: NodeId) -> Option<u64> {
    (m.current_leader == Some(id) && m.state == ServerState::Leader).then_some(m.current_term)
}

fn raft_config(config: &NodeConfig) -> Result<Arc<openraft::Config>> {
    let raft = openraft::Config {
        cluster_name: "orch".into(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: config.election_timeout_min.as_millis() as u64,
        election_timeout_max: config.election_timeout_max.as_millis() as u64,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_after_logs),
        max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
        max_payload_entries: 64,
        ..Default::default()
    };
    Ok(Arc::new(raft.validate().map_err(|e| {
        StoreError::InvalidArgument(format!("raft settings: {e}"))
    })?))
}

impl StoreNode {
    /// Starts a member with the real HTTP transport (over mutual TLS when
    /// the config has [`peer_tls`](NodeConfig::peer_tls)).
    pub async fn start(config: NodeConfig) -> Result<StoreNode> {
        let transport = match &config.peer_tls {
            Some(tls) => HttpTransport::with_tls(tls.client.clone()),
            None => HttpTransport::new(),
        };
        Self::start_with_transport(config, Arc::new(transport)).await
    }

    /// Starts a member whose messages to other members go through `transport`
    /// (tests wrap the real one in a [`FaultyTransport`](crate::network::FaultyTransport)).
    pub async fn start_with_transport(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<StoreNode> {
        let data_dir = open_data_dir(&config.data_dir)?;
        let db = data_dir.db.clone();
        let hub = WatchHub::new(config.watch_ring_capacity);
        let log_store = LogStore::new(db.clone(), config.fsync);
        let state_machine = StateMachine::open(db.clone(), hub.clone())?;
        let mvcc = state_machine.mvcc();
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| StoreError::storage(format!("binding {}", config.listen_addr), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| StoreError::storage("reading the bound address", e))?;
        let addr = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let raft = Raft::new(
            config.id,
            raft_config(&config)?,
            NetworkFactory::new(config.id, transport.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StoreError::Raft(format!("starting raft: {e}")))?;

        let (proposals_tx, proposals_rx) = mpsc::channel(config.max_batch_commands * 4);
        let (reads_tx, reads_rx) = mpsc::channel(4096);
        let (shutdown, _) = watch::channel(false);
        let node = StoreNode {
            fence: None,
            inner: Arc::new(NodeInner {
                id: config.id,
                addr,
                config: config.clone(),
                raft,
                db,
                hub,
                mvcc,
                transport,
                leases: LeaseDeadlines::default(),
                leading_since: Mutex::new(None),
                leader_contact: Mutex::new(None),
                proposals: proposals_tx,
                reads: reads_tx,
                shutdown,
                tasks: Mutex::new(Vec::new()),
                _data_dir: data_dir,
            }),
        };
        let tasks = vec![
            tokio::spawn(crate::network::server::serve(listener, node.clone())),
            tokio::spawn(proposer::run(node.clone(), proposals_rx)),
            tokio::spawn(read_index::run(node.clone(), reads_rx)),
            tokio::spawn(crate::lease::run_keeper(node.clone())),
            tokio::spawn(crate::handover::track_leadership(node.clone())),
            tokio::spawn(crate::failover::campaign_when_leader_is_silent(
                node.clone(),
            )),
        ];
        node.inner.tasks.lock().expect("tasks lock").extend(tasks);
        node.bootstrap_if_restored().await?;
        tracing::info!(id = node.id(), addr = %node.addr(), "store member started");
        Ok(node)
    }

    async fn bootstrap_if_restored(&self) -> Result<()> {
        let meta = cf(&self.inner.db, CF_RAFT_META);
        let marker = self
            .inner
            .db
            .get_cf(meta, KEY_BOOTSTRAP_SINGLE)
            .map_err(|e| StoreError::storage("reading restore marker", e))?;
        if marker.is_some() {
            self.initialize().await?;
            self.inner
                .db
                .delete_cf(meta, KEY_BOOTSTRAP_SINGLE)
                .map_err(|e| StoreError::storage("clearing restore marker", e))?;
        }
        Ok(())
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address peers and clients reach this member at.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The Raft handle, for metrics and tests.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// Bootstraps a new cluster with this member as its only voter. Does
    /// nothing if the member already belongs to a cluster.
    pub async fn initialize(&self) -> Result<()> {
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let members = BTreeMap::from([(
            self.id(),
            BasicNode {
                addr: self.addr().to_string(),
            },
        )]);
        raft.initialize(members)
            .await
            .map_err(|e| StoreError::Raft(format!("initializing cluster: {e}")))?;
        self.wait_for_leader(Instant::now() + self.inner.config.request_timeout)
            .await
            .map(|_| ())
    }

    /// True while this member is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.leader() == Leader::Local
    }

    /// The term of this member's leadership, while it is the leader.
    pub fn leader_term(&self) -> Option<u64> {
        leader_term_of(&self.inner.raft.metrics().borrow(), self.id())
    }

    /// Waits until this member's leadership changes: it becomes leader,
    /// loses leadership, or leads in a new term. Returns the new
    /// [`leader_term`](Self::leader_term); `Err(Stopped)` once the member
    /// stops.
    pub async fn leadership_changed(&self, from: Option<u64>) -> Result<Option<u64>> {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let now = leader_term_of(&metrics.borrow_and_update(), self.id());
            if now != from {
                return Ok(now);
            }
            metrics.changed().await.map_err(|_| StoreError::Stopped)?;
        }
    }

    /// A handle on this member whose writes only take effect if they are
    /// proposed by the leader of `term`: when leadership moves, the state
    /// machine refuses them with [`StoreError::Fenced`]. The control loops
    /// of a leader write through such a handle, so two masters can never
    /// both act as controllers, even for an instant.
    pub fn fenced(&self, term: u64) -> StoreNode {
        StoreNode {
            inner: self.inner.clone(),
            fence: Some(term),
        }
    }

    pub(crate) fn leader(&self) -> Leader {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(id) if id == self.id() && m.state == ServerState::Leader => Leader::Local,
            Some(id) if id != self.id() => match m.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Remote(id, node.addr.clone()),
                None => Leader::Unknown,
            },
            _ => Leader::Unknown,
        }
    }

    /// Waits until some leader is known, up to `deadline`.
    pub(crate) async fn wait_for_leader(&self, deadline: Instant) -> Result<Leader> {
        loop {
            let leader = self.leader();
            if leader != Leader::Unknown {
                return Ok(leader);
            }
            if *self.inner.shutdown.borrow() {
                return Err(StoreError::Stopped);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable("no leader elected".into()));
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(10))).await;
        }
    }

    /// Proposes a batch through Raft: locally on the leader, else forwarded
    /// (when `forward`), retrying only while the batch is certainly not applied.
    pub(crate) async fn submit(
        &self,
        commands: Vec<Command>,
        forward: bool,
    ) -> Result<Vec<CommandResult>> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.wait_for_leader(deadline).await? {
                Leader::Local => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let write = self
                        .inner
                        .raft
                        .client_write(crate::command::Batch(commands.clone()));
                    match tokio::time::timeout(remaining, write).await {
                        Ok(Ok(resp)) => return Ok(resp.data.0),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {}
                        Ok(Err(RaftError::APIError(e))) => {
                            return Err(StoreError::Raft(e.to_string()))
                        }
                        Ok(Err(RaftError::Fatal(_))) => return Err(StoreError::Stopped),
                        Err(_) => {
                            return Err(StoreError::Unavailable(
                                "write not committed in time (no quorum?); it may still be applied"
                                    .into(),
                            ))
                        }
                    }
                }
                Leader::Remote(id, addr) if forward => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self
                        .call_member(id, &addr, PATH_PROPOSE, &commands, remaining)
                        .await
                    {
                        Ok(answer) => match answer {
                            Ok(results) => return Ok(results),
                            Err(StoreError::NotLeader { .. }) | Err(StoreError::Unavailable(_)) => {
                            }
                            Err(e) => return Err(e),
                        },
                        Err(TransportError::Unreachable(_)) => {}
                        Err(e) => {
                            return Err(StoreError::Unavailable(format!(
                            "leader {id} did not answer ({e}); the write may or may not be applied"
                        )))
                        }
                    }
                }
                Leader::Remote(id, addr) => {
                    return Err(StoreError::NotLeader {
                        leader_id: Some(id),
                        leader_addr: Some(addr),
                    })
                }
                Leader::Unknown => {}
            }
            if Instant::now() + backoff >= deadline {
                return Err(StoreError::Unavailable(
                    "no leader accepted the write in time".into(),
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Sends `request` to member `id` at `addr` on `path` and decodes its
    /// answer: the outer error is the transport's (was it delivered at
    /// all?), the inner result is the member's own.
    pub(crate) async fn call_member<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        id: NodeId,
        addr: &str,
        path: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> std::result::Result<Result<Resp>, TransportError> {
        let body = Bytes::from(encode(request));
        let bytes = self
            .inner
            .transport
            .call(id, addr, path, body, timeout)
            .await?;
        Ok(decode::<Result<Resp>>(&bytes, path).and_then(|answer| answer))
    }

    /// Runs one command through Raft. With `forward` false, a follower
    /// answers `NotLeader` with the leader's address instead of forwarding.
    pub async fn execute(&self, command: Command, forward: bool) -> Result<CommandResult> {
        command.validate(self.inner.config.max_request_bytes)?;
        if !forward {
            if let Leader::Remote(id, addr) = self.leader() {
                return Err(StoreError::NotLeader {
                    leader_id: Some(id),
                    leader_addr: Some(addr),
                });
            }
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .proposals
            .send(proposer::Proposal { command, reply })
            .await
            .map_err(|_| StoreError::Stopped)?;
        match answer.await.map_err(|_| StoreError::Stopped)?? {
            CommandResult::Failed(e) => Err(e),
            result => Ok(result),
        }
    }

    /// The read index from the leader (one round shared by concurrent readers).
    pub(crate) async fn read_index(&self) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .reads
            .send(reply)
            .await
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Fetches a read index: a leadership confirmation round on the leader,
    /// or a call to the leader from a follower.
    pub(crate) async fn fetch_read_index(&self, forward: bool) -> Result<u64> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            match self.wait_for_leader(deadline).await? {
                Leader::Local => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(remaining, self.inner.raft.get_read_log_id()).await {
                        Ok(Ok((read_log_id, _))) => return Ok(read_log_id.map_or(0, |id| id.index)),
                        Ok(Err(RaftError::Fatal(_))) => return Err(StoreError::Stopped),
                        Ok(Err(_)) => {}
                        Err(_) => {
                            return Err(StoreError::Unavailable(
                                "leadership not confirmed in time".into(),
                            ))
                        }
                    }
                }
                Leader::Remote(id, addr) if forward => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self
                        .call_member(id, &addr, PATH_READ_INDEX, &(), remaining)
                        .await
                    {
                        Ok(answer) => match answer {
                            Ok(index) => return Ok(index),
                            Err(StoreError::NotLeader { .. }) | Err(StoreError::Unavailable(_)) => {
                            }
                            Err(e) => return Err(e),
                        },
                        Err(TransportError::Unreachable(_)) | Err(TransportError::Broken(_)) => {}
                        Err(e) => return Err(StoreError::Unavailable(format!("leader {id}: {e}"))),
                    }
                }
                Leader::Remote(id, addr) => {
                    return Err(StoreError::NotLeader {
                        leader_id: Some(id),
                        leader_addr: Some(addr),
                    })
                }
                Leader::Unknown => {}
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "no leader confirmed a read index in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until this member has applied everything the leader had
    /// committed when the call began.
    pub async fn linearize(&self) -> Result<()> {
        let index = self.read_index().await?;
        self.inner
            .raft
            .wait(Some(self.inner.config.request_timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("waiting to apply read index {index}: {e}"))
            })?;
        Ok(())
    }

    // --- key-value API ---------------------------------------------------------

    /// Notes that the leader just reached this member.
    pub(crate) fn note_leader_contact(&self) {
        *self.inner.leader_contact.lock().expect("contact lock") = Some(std::time::Instant::now());
    }

    /// When the leader last reached this member, if it ever did.
    pub(crate) fn last_leader_contact(&self) -> Option<std::time::Instant> {
        *self.inner.leader_contact.lock().expect("contact lock")
    }

    /// This member's view of the cluster.
    pub fn status(&self) -> MemberStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let addr_of = |id: &NodeId| {
            membership
                .get_node(id)
                .map(|n| n.addr.clone())
                .unwrap_or_default()
        };
        MemberStatus {
            id: self.id(),
            leader: m.current_leader,
            term: m.current_term,
            revision: self.inner.hub.revision(),
            compacted: self.inner.mvcc.lock().expect("mvcc lock").compacted,
            applied_index: m.last_applied.map_or(0, |id| id.index),
            last_log: crate::storage::log_store::last_log_id(&self.inner.db)
                .ok()
                .flatten()
                .map(|id| (id.leader_id.term, id.index)),
            voters: membership
                .voter_ids()
                .map(|id| (id, addr_of(&id)))
                .collect(),
            learners: membership
                .learner_ids()
                .map(|id| (id, addr_of(&id)))
                .collect(),
        }
    }

    /// A framed snapshot of the whole state, taken after a linearizable
    /// barrier (so it holds every write acknowledged before the call).
    pub async fn snapshot_bytes(&self) -> Result<Vec<u8>> {
        self.linearize().await?;
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || dump(&db).map(|d| encode_framed(&d)))
            .await
            .map_err(|e| StoreError::Raft(format!("snapshot task failed: {e}")))?
    }

    /// Writes a snapshot of the whole state to `path`.
    pub async fn snapshot_save(&self, path: &Path) -> Result<()> {
        let bytes = self.snapshot_bytes().await?;
        crate::storage::snapshot::write_bytes(path, &bytes)
    }

    /// Stops the member: closes its server and connections, stops Raft and
    /// every background task. The data dir is released once every clone of
    /// this handle is dropped.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner.hub.close();
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .tasks
            .lock()
            .expect("tasks lock")
            .drain(..)
            .collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let _ = self.inner.raft.shutdown().await;
        tracing::info!(id = self.id(), "store member stopped");
    }

    /// True once [`shutdown`](Self::shutdown) has begun.
    pub fn is_shut_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }
}

impl Kv for StoreNode {
    async fn command(&self, command: Command) -> Result<CommandResult> {
        let command = match self.fence {
            Some(term) => Command::Fenced {
                term,
                command: Box::new(command),
            },
            None => command,
        };
        self.execute(command, true).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        req.range.validate()?;
        if !req.serializable {
            self.linearize().await?;
        }
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || read_range(&db, &req))
            .await
            .map_err(|e| StoreError::Raft(format!("reader task failed: {e}")))?
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        let compacted = self.inner.mvcc.lock().expect("mvcc lock").compacted;
        if req.start_revision > 0 && req.start_revision < compacted {
            return Err(StoreError::Compacted {
                requested: req.start_revision,
                compacted,
            });
        }
        self.inner.hub.watch(self.inner.db.clone(), req)
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64> {
        crate::lease::keep_alive(self, id).await
    }
}

/// Restores a snapshot file into a new data dir. The member started on that
/// dir bootstraps a new single-member cluster holding exactly the snapshot's
/// keys, leases, history and revisions.
pub fn restore_snapshot(snapshot_file: &Path, data_dir: &Path) -> Result<()> {
    let mut state = crate::storage::snapshot::read_file(snapshot_file)?;
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map_err(|e| StoreError::storage("listing the data dir", e))?
            .next()
            .is_some()
    {
        return Err(StoreError::InvalidArgument(format!(
            "restore needs a new, empty data dir; {} is not empty",
            data_dir.display()
        )));
    }
    state.applied = None;
    state.membership = Default::default();
    let dir = open_data_dir(data_dir)?;
    crate::storage::snapshot::load(&dir.db, &state)?;
    dir.db
        .put_cf(cf(&dir.db, CF_RAFT_META), KEY_BOOTSTRAP_SINGLE, [1u8])
        .map_err(|e| StoreError::storage("writing restore marker", e))?;
    dir.db
        .flush_wal(true)
        .map_err(|e| StoreError::storage("syncing restored data", e))?;
    Ok(())
}
