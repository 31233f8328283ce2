//! `orch-agent`: orch's node agent as a process of its own (until `orchd
//! agent` lands). See `orch-agent --help`.

use clap::Parser;
use orch_runtime::agent::cli::{run, Args};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("orch-agent: {e}");
        std::process::exit(1);
    }
}
