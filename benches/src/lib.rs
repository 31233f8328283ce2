//! What orch's benchmarks share: starting a cluster of store members in
//! this process, the way every in-process benchmark measures orch.

use std::path::{Path, PathBuf};

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

/// A pooled HTTP/1.1 client of the API servers.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// An HTTP client keeping up to `max_idle` connections per API server,
/// with Nagle off (small requests, measured latency).
pub fn http_client(max_idle: usize) -> HttpClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(connector)
}

/// Sends a JSON request; returns the status and the whole body.
pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Quantile `q` of a histogram of microseconds, in milliseconds.
pub fn quantile_ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The `orchd` binary: `given`, else the one next to this executable,
/// built with the same profile if it is missing.
pub fn orchd_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let me =
        std::env::current_exe().map_err(|e| anyhow::anyhow!("locating this executable: {e}"))?;
    let orchd = me.with_file_name("orchd");
    if orchd.exists() {
        return Ok(orchd);
    }
    let how = if cfg!(debug_assertions) {
        "cargo build -p orchd"
    } else {
        "cargo build --release -p orchd"
    };
    eprintln!("{} is missing; running `{how}`", orchd.display());
    let mut build =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .args(["build", "-p", "orchd"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    if let Some(target) = orchd.parent().and_then(Path::parent) {
        build.arg("--target-dir").arg(target);
    }
    match build.status() {
        Ok(status) if status.success() && orchd.exists() => Ok(orchd),
        _ => anyhow::bail!(
            "no orchd at {}: build it with `{how}` (or give --orchd)",
            orchd.display()
        ),
    }
}
