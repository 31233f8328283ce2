//! A control plane (one master): a store member, the API server on top of
//! it, and the control loops, which run while this master's store member
//! is the Raft leader. The first master bootstraps the cluster and creates
//! the namespaces every cluster starts with; others join it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use orch_raft_store::network::PeerTls;
use orch_raft_store::{NodeConfig, NodeId, RaftTiming, StoreNode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::controller::{self, LeaderLoops, LoopSettings};
use crate::error::ApiError;
use crate::registry::Registry;
use crate::resource;
use crate::server::{self, ApiServer, ServerHandle};

/// Namespaces created when a cluster is bootstrapped.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How a master starts.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// The store member's id, unique in the cluster (the first master is
    /// usually 1).
    pub id: NodeId,
    /// Store data dir.
    pub data_dir: PathBuf,
    /// Store (peer) address.
    pub store_addr: SocketAddr,
    /// API server address.
    pub api_addr: SocketAddr,
    /// Run the scheduler and the controllers (while leading) with these
    /// settings; `None` runs no loops (an API-only master).
    pub loops: Option<LoopSettings>,
    /// The bearer token node agents require of the API server (for
    /// `kubectl logs`, which the API server passes on to the pod's agent);
    /// `None` sends no credentials.
    pub agent_token: Option<String>,
    /// Bearer tokens the API requires of clients (kubectl's admin token,
    /// the join token agents use); empty: no authentication.
    pub api_tokens: Vec<String>,
    /// Bearer tokens the API also accepts, but not for the cluster's
    /// administration under `/orch/v1/` (the node agents' token).
    pub restricted_tokens: Vec<String>,
    /// Serve the API over TLS with this configuration (plain HTTP without).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The CA bundle served at `/cacerts`.
    pub ca_pem: Option<String>,
    /// Seal Secrets in the store with this AES-256-GCM key.
    pub secret_key: Option<[u8; 32]>,
    /// Talk to the other masters over mutual TLS (cleartext without).
    pub peer_tls: Option<PeerTls>,
    /// Raft's clock (`None`: the store's defaults).
    pub raft_timing: Option<RaftTiming>,
}

impl ControlPlaneConfig {
    /// Master `id` with its data in `data_dir`, on ephemeral loopback
    /// ports, running the standard loops.
    pub fn local(id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        ControlPlaneConfig {
            id,
            data_dir: data_dir.into(),
            store_addr: "127.0.0.1:0".parse().expect("loopback address"),
            api_addr: "127.0.0.1:0".parse().expect("loopback address"),
            loops: Some(LoopSettings::default()),
            agent_token: None,
            api_tokens: Vec::new(),
            restricted_tokens: Vec::new(),
            tls: None,
            ca_pem: None,
            secret_key: None,
            peer_tls: None,
            raft_timing: None,
        }
    }
}

/// A running master.
pub struct ControlPlane {
    /// The store member.
    pub store: StoreNode,
    /// The API server, for in-process clients.
    pub server: Arc<ApiServer>,
    /// The API server's listener.
    pub api: ServerHandle,
    /// The control loops, started and stopped with leadership.
    pub loops: Option<LeaderLoops>,
    /// Stops this master's background tasks (the Secrets keyring follower).
    background: tokio_util::sync::CancellationToken,
}

impl ControlPlane {
    /// Starts a master that bootstraps a new single-member cluster if the
    /// data dir is new (or restarts one from its data dir), creates the
    /// initial namespaces, serves the API and runs the loops while leading.
    pub async fn start_single(
        config: ControlPlaneConfig,
    ) -> Result<ControlPlane, Box<dyn std::error::Error + Send + Sync>> {
        let plane = Self::start(config).await?;
        plane.store.initialize().await?;
        ensure_namespaces(plane.server.registry()).await?;
        Ok(plane)
    }

    /// Starts a master that waits to be added to an existing cluster with
    /// [`add_master`](Self::add_master) (or restarts a member from its
    /// data dir).
    pub async fn start_joining(
        config: ControlPlaneConfig,
    ) -> Result<ControlPlane, Box<dyn std::error::Error + Send + Sync>> {
        Self::start(config).await
    }

    async fn start(
        config: ControlPlaneConfig,
    ) -> Result<ControlPlane, Box<dyn std::error::Error + Send + Sync>> {
        let mut store_config = NodeConfig::new(config.id, &config.data_dir, config.store_addr);
        store_config.peer_tls = config.peer_tls.clone();
        if let Some(timing) = config.raft_timing {
            store_config.set_timing(timing);
        }
        let store = StoreNode::start(store_config).await?;
        let listener = TcpListener::bind(config.api_addr).await?;
        let mut registry = Registry::new(store.clone());
        if let Some(key) = config.secret_key {
            registry = registry.with_secret_key(key);
        }
        let server = ApiServer::with_node_proxy(
            registry.clone(),
            server::NodeProxy::new(config.agent_token.clone()),
        );
        server.allow_restricted_tokens(config.restricted_tokens.clone());
        server.require_tokens(config.api_tokens.clone());
        if let Some(pem) = config.ca_pem.clone() {
            server.serve_ca(pem);
        }
        let api = server::serve_with(listener, server.clone(), config.tls.clone())?;
        let loops = config
            .loops
            .map(|settings| controller::standard_loops(settings).run_on_leader_with(registry));
        if let Some(loops) = &loops {
            server.serve_loop_metrics(loops.metrics().clone());
        }
        let background = tokio_util::sync::CancellationToken::new();
        let keyring = server.registry().clone();
        tokio::spawn({
            let stop = background.clone();
            async move { keyring.follow_keyring(stop).await }
        });
        Ok(ControlPlane {
            store,
            server,
            api,
            loops,
            background,
        })
    }

    /// Adds the master whose store member is `id` at `store_addr` to this
    /// cluster: as a learner until it has caught up, then as a voter.
    pub async fn add_master(
        &self,
        id: NodeId,
        store_addr: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.store.add_learner(id, store_addr).await?;
        self.store.promote(&[id]).await?;
        Ok(())
    }

    /// A client calling this master's handlers in-process.
    pub fn client(&self) -> crate::Client {
        crate::Client::in_process(self.server.clone())
    }

    /// True while this master runs the control loops.
    pub fn runs_loops(&self) -> bool {
        self.loops
            .as_ref()
            .is_some_and(|l| l.running_term().is_some())
    }

    /// Stops the loops, the API server and the store member.
    pub async fn shutdown(self) {
        self.background.cancel();
        if let Some(loops) = &self.loops {
            loops.stop();
        }
        self.api.shutdown().await;
        self.store.shutdown().await;
    }
}

/// Creates the initial namespaces that do not exist yet.
pub async fn ensure_namespaces(registry: &Registry) -> Result<(), ApiError> {
    let namespaces = resource::find("", "v1", "namespaces").expect("namespaces are served");
    for name in INITIAL_NAMESPACES {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match registry.create(namespaces, None, object).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
