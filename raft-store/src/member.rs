//! Running one member as a process: start, bootstrap or join, serve until
//! told to stop. Shared by the `orch-store` binary, tests and benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::client::Client;
use crate::config::NodeConfig;
use crate::error::Result;
use crate::node::StoreNode;
use crate::types::NodeId;

/// How a member process starts.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// The member's id.
    pub id: NodeId,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Bootstrap a new cluster with this member as its only voter.
    pub bootstrap: bool,
    /// Join the cluster of the member at this address (as learner, then voter).
    pub join: Option<String>,
    /// Sync the log on every append (default true).
    pub fsync: bool,
}

/// Starts a member as described; returns once it serves (and, when joining,
/// once it is a voter).
pub async fn start_member(options: &MemberOptions) -> Result<StoreNode> {
    let mut config = NodeConfig::new(options.id, &options.data_dir, options.listen);
    config.fsync = options.fsync;
    let node = StoreNode::start(config).await?;
    if options.bootstrap {
        node.initialize().await?;
    }
    if let Some(seed) = &options.join {
        let already_member = node.status().voters.iter().any(|(id, _)| *id == options.id);
        if !already_member {
            let client = Client::new([seed.clone()]);
            client.add_learner(options.id, node.addr()).await?;
            client.promote(&[options.id]).await?;
        }
    }
    Ok(node)
}

/// Runs a member until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run_member(options: MemberOptions) -> Result<()> {
    let node = start_member(&options).await?;
    // Scripts and tests read this line to learn the address.
    println!("member {} listening on {}", node.id(), node.addr());
    wait_for_signal().await;
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
