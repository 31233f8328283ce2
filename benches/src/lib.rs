//! What orch's benchmarks share: starting a cluster of store members in
//! this process, the way every in-process benchmark measures orch.

use std::path::Path;

use orch_core::{control_plane, Registry};
use orch_raft_store::{NodeConfig, StoreNode};

/// Starts `count` store members (ids 1..=count) with their data under
/// `root`, on loopback ports, fsync as given; the first bootstraps the
/// cluster, the others join as voters; the initial namespaces are
/// created.
pub async fn start_store_cluster(
    count: u64,
    root: &Path,
    fsync: bool,
) -> anyhow::Result<Vec<StoreNode>> {
    let mut stores = Vec::new();
    for id in 1..=count {
        let mut config = NodeConfig::new(id, root.join(format!("m{id}")), "127.0.0.1:0".parse()?);
        config.fsync = fsync;
        stores.push(StoreNode::start(config).await?);
    }
    stores[0].initialize().await?;
    for store in &stores[1..] {
        stores[0].add_learner(store.id(), store.addr()).await?;
        stores[0].promote(&[store.id()]).await?;
    }
    control_plane::ensure_namespaces(&Registry::new(stores[0].clone()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(stores)
}
