//! `orch-apiserver`: a single-member control plane (store + API server) for
//! trying orch with kubectl until `orchd` lands. Writes a kubeconfig.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use orch_core::{ControlPlane, ControlPlaneConfig};

#[derive(Parser)]
#[command(
    name = "orch-apiserver",
    about = "Single-member orch control plane with a Kubernetes API for kubectl"
)]
struct Args {
    /// Data directory of the store.
    #[arg(long, default_value = "/var/lib/orch/apiserver")]
    data_dir: PathBuf,
    /// Address of the Kubernetes API (plain HTTP for now).
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_addr: SocketAddr,
    /// Address of the store member.
    #[arg(long, default_value = "127.0.0.1:2380")]
    store_addr: SocketAddr,
    /// Where to write a kubeconfig for kubectl (default DATA_DIR/kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// A file holding the bearer token node agents require (for `kubectl
    /// logs`); without it, agents are called without credentials.
    #[arg(long)]
    agent_token_file: Option<PathBuf>,
}

fn kubeconfig(api: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: orch\n  cluster:\n    server: http://{api}\ncontexts:\n- name: orch\n  context:\n    cluster: orch\n    user: admin\n    namespace: default\ncurrent-context: orch\nusers:\n- name: admin\n  user: {{}}\n"
    )
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .init();
    let args = Args::parse();
    let agent_token = match &args.agent_token_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(token) => Some(token.trim().to_string()),
            Err(e) => {
                eprintln!("orch-apiserver: reading {}: {e}", path.display());
                std::process::exit(1);
            }
        },
    };
    let plane = match ControlPlane::start_single(ControlPlaneConfig {
        id: 1,
        data_dir: args.data_dir.clone(),
        store_addr: args.store_addr,
        api_addr: args.api_addr,
        loops: Some(orch_core::controller::LoopSettings::default()),
        agent_token,
        api_tokens: Vec::new(),
        restricted_tokens: Vec::new(),
        tls: None,
        ca_pem: None,
        secret_key: None,
        peer_tls: None,
        raft_timing: None,
    })
    .await
    {
        Ok(plane) => plane,
        Err(e) => {
            eprintln!("orch-apiserver: {e}");
            std::process::exit(1);
        }
    };
    let path = args
        .kubeconfig
        .unwrap_or_else(|| args.data_dir.join("kubeconfig"));
    if let Err(e) = std::fs::write(&path, kubeconfig(plane.api.addr)) {
        eprintln!("orch-apiserver: writing {}: {e}", path.display());
        std::process::exit(1);
    }
    println!(
        "API at http://{}; kubeconfig written to {}",
        plane.api.addr,
        path.display()
    );
    println!("try: KUBECONFIG={} kubectl get namespaces", path.display());
    let _ = tokio::signal::ctrl_c().await;
    plane.shutdown().await;
}
