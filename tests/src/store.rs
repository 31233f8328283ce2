//! Store clusters for tests: in-process members over real HTTP/2 on loopback
//! (with fault injection), and member processes that can be SIGKILLed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use orch_raft_store::network::{FaultRules, FaultyTransport, HttpTransport, Transport};
use orch_raft_store::{Client, NodeConfig, NodeId, StoreError, StoreNode};
use tempfile::TempDir;

use crate::wait_until;

/// A cluster of in-process members whose links pass through shared
/// [`FaultRules`].
pub struct TestCluster {
    /// Shared fault rules: partition, delay, drop.
    pub faults: FaultRules,
    members: BTreeMap<NodeId, StoreNode>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    tweak: Arc<dyn Fn(&mut NodeConfig) + Send + Sync>,
    dir: TempDir,
}

impl TestCluster {
    /// Starts `size` members (ids 1..=size) with default settings and waits
    /// until all are voters.
    pub async fn start(size: u64) -> TestCluster {
        Self::start_with(size, |_| {}).await
    }

    /// Starts `size` members, letting `tweak` adjust each member's settings.
    pub async fn start_with(
        size: u64,
        tweak: impl Fn(&mut NodeConfig) + Send + Sync + 'static,
    ) -> TestCluster {
        crate::init_logging();
        let mut cluster = TestCluster {
            faults: FaultRules::new(),
            members: BTreeMap::new(),
            addrs: BTreeMap::new(),
            tweak: Arc::new(tweak),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for id in 1..=size {
            cluster.start_member(id).await;
        }
        let first = cluster.member(1);
        first.initialize().await.expect("bootstrap");
        for id in 2..=size {
            let addr = cluster.member(id).addr().to_string();
            first.add_learner(id, addr).await.expect("add learner");
            first.promote(&[id]).await.expect("promote");
        }
        cluster.wait_for_leader().await;
        cluster
    }

    /// The data dir of member `id`.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("member-{id}"))
    }

    /// The root temp dir of the cluster.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self, id: NodeId) -> NodeConfig {
        let listen = self
            .addrs
            .get(&id)
            .copied()
            .unwrap_or_else(|| "127.0.0.1:0".parse().expect("loopback"));
        let mut config = NodeConfig::new(id, self.data_dir(id), listen);
        (self.tweak)(&mut config);
        config
    }

    /// Starts (or restarts, on the same address and data dir) member `id`.
    pub async fn start_member(&mut self, id: NodeId) -> StoreNode {
        let config = self.config(id);
        let transport: Arc<dyn Transport> = Arc::new(FaultyTransport::new(
            Arc::new(HttpTransport::new()),
            id,
            self.faults.clone(),
        ));
        // A member just stopped may still hold its data dir for a moment.
        let node = wait_until(
            &format!("member {id} to start"),
            Duration::from_secs(10),
            || {
                let config = config.clone();
                let transport = transport.clone();
                async move {
                    match StoreNode::start_with_transport(config, transport).await {
                        Ok(node) => Some(node),
                        Err(StoreError::DataDirLocked { .. }) => None,
                        Err(e) => panic!("starting member {id}: {e}"),
                    }
                }
            },
        )
        .await;
        self.addrs
            .insert(id, node.addr().parse().expect("socket address"));
        self.members.insert(id, node.clone());
        node
    }

    /// Stops member `id`: its tasks are aborted and its sockets closed.
    pub async fn stop_member(&mut self, id: NodeId) {
        if let Some(node) = self.members.remove(&id) {
            node.shutdown().await;
        }
    }

    /// The running member `id`.
    pub fn member(&self, id: NodeId) -> StoreNode {
        self.members
            .get(&id)
            .unwrap_or_else(|| panic!("member {id} is not running"))
            .clone()
    }

    /// Ids of running members.
    pub fn running(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// Addresses of every member ever started (for clients).
    pub fn endpoints(&self) -> Vec<String> {
        self.addrs.values().map(|a| a.to_string()).collect()
    }

    /// A client of every member.
    pub fn client(&self) -> Client {
        Client::new(self.endpoints())
    }

    /// Waits until the running members agree on one running leader; returns it.
    pub async fn wait_for_leader(&self) -> NodeId {
        self.wait_for_leader_among(&self.running()).await
    }

    /// Waits until the members in `ids` agree on a leader among them.
    pub async fn wait_for_leader_among(&self, ids: &[NodeId]) -> NodeId {
        wait_until(
            "a leader agreed by all running members",
            Duration::from_secs(15),
            || async {
                let leaders: Vec<Option<NodeId>> = ids
                    .iter()
                    .map(|id| self.member(*id).status().leader)
                    .collect();
                match leaders.first() {
                    Some(Some(leader))
                        if ids.contains(leader) && leaders.iter().all(|l| l == &Some(*leader)) =>
                    {
                        self.member(*leader).is_leader().then_some(*leader)
                    }
                    _ => None,
                }
            },
        )
        .await
    }

    /// Waits until every running member has applied up to the leader's revision.
    pub async fn wait_converged(&self) {
        wait_until(
            "all running members at the same revision",
            Duration::from_secs(30),
            || async {
                let revisions: Vec<i64> = self
                    .running()
                    .iter()
                    .map(|id| self.member(*id).status().revision)
                    .collect();
                let leader = self.running().into_iter().find(|id| {
                    let status = self.member(*id).status();
                    status.leader == Some(*id)
                })?;
                let target = self.member(leader).status().revision;
                revisions.iter().all(|r| *r == target).then_some(())
            },
        )
        .await
    }

    /// Stops every member.
    pub async fn shutdown(&mut self) {
        for id in self.running() {
            self.stop_member(id).await;
        }
    }
}

/// A store member running as its own OS process (`store-member`).
pub struct MemberProcess {
    /// Member id.
    pub id: NodeId,
    /// Listen address.
    pub addr: String,
    /// Data dir.
    pub data_dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
}

/// Reserves a free loopback port (bound and released; good enough for tests
/// on one machine).
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr").to_string()
}

impl MemberProcess {
    /// Spawns the `store-member` binary at `binary` (integration tests pass
    /// `env!("CARGO_BIN_EXE_store-member")`); `mode` is `--bootstrap`,
    /// `--join ADDR`, or empty (restart of an existing member).
    pub fn spawn(
        binary: &Path,
        id: NodeId,
        addr: &str,
        data_dir: &Path,
        mode: &[&str],
    ) -> MemberProcess {
        let child = Command::new(binary)
            .arg(id.to_string())
            .arg(data_dir)
            .arg(addr)
            .args(mode)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn store-member");
        MemberProcess {
            id,
            addr: addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            binary: binary.to_path_buf(),
            child: Some(child),
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on its data dir and address.
    pub fn restart(&mut self) {
        self.kill9();
        *self = MemberProcess::spawn(
            &self.binary.clone(),
            self.id,
            &self.addr.clone(),
            &self.data_dir.clone(),
            &[],
        );
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
