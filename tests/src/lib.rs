//! Shared fixtures for orch's integration tests: clusters of real store
//! members on ephemeral loopback ports, member processes, and polling
//! helpers that wait on conditions instead of sleeping.

pub mod agent;
pub mod api;
pub mod cluster;
pub mod log_server;
pub mod loops;
pub mod orchd;
pub mod registry;
pub mod store;
pub mod veth_link;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it yields `Some`, or panics after `timeout`
/// naming `what` was awaited.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Installs a test log subscriber once (honours `RUST_LOG`, default warn).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .with_test_writer()
        .try_init();
}
