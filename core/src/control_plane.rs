//! A control plane: a store member and the API server on top of it, with
//! the namespaces every cluster starts with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use orch_raft_store::{NodeConfig, StoreNode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::registry::Registry;
use crate::resource;
use crate::server::{self, ApiServer, ServerHandle};

/// Namespaces created when a cluster is bootstrapped.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How a single-member control plane starts.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Store data dir.
    pub data_dir: PathBuf,
    /// Store (peer) address.
    pub store_addr: SocketAddr,
    /// API server address.
    pub api_addr: SocketAddr,
}

/// A running control plane.
pub struct ControlPlane {
    /// The store member.
    pub store: StoreNode,
    /// The API server, for in-process clients.
    pub server: Arc<ApiServer>,
    /// The API server's listener.
    pub api: ServerHandle,
}

impl ControlPlane {
    /// Starts a store member (bootstrapping a new single-member cluster if
    /// the data dir is new), creates the initial namespaces, and serves the
    /// API.
    pub async fn start_single(
        config: ControlPlaneConfig,
    ) -> Result<ControlPlane, Box<dyn std::error::Error + Send + Sync>> {
        let store =
            StoreNode::start(NodeConfig::new(1, &config.data_dir, config.store_addr)).await?;
        store.initialize().await?;
        let registry = Registry::new(store.clone());
        ensure_namespaces(&registry).await?;
        let listener = TcpListener::bind(config.api_addr).await?;
        let server = ApiServer::new(registry);
        let api = server::serve(listener, server.clone())?;
        Ok(ControlPlane { store, server, api })
    }

    /// A client calling this control plane's handlers in-process.
    pub fn client(&self) -> crate::Client {
        crate::Client::in_process(self.server.clone())
    }

    /// Stops the API server and the store member.
    pub async fn shutdown(self) {
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
