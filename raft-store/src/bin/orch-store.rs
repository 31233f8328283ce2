//! `orch-store`: run a store member, or a 3-member demo cluster on this machine.

use orch_raft_store::Kv;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use orch_raft_store::member::{run_member, MemberOptions};
use orch_raft_store::{restore_snapshot, Client, KeyRange, NodeConfig, StoreNode, WatchRequest};

#[derive(Parser)]
#[command(
    name = "orch-store",
    about = "orch's replicated, watchable key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one member until SIGINT/SIGTERM.
    Member {
        /// Member id, unique in the cluster.
        #[arg(long)]
        id: u64,
        /// Data directory (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on for peers and clients.
        #[arg(long, default_value = "127.0.0.1:2380")]
        listen: SocketAddr,
        /// Bootstrap a new cluster with this member as its only voter.
        #[arg(long)]
        bootstrap: bool,
        /// Join the cluster of the member at this address.
        #[arg(long)]
        join: Option<String>,
        /// Do not fsync the log (benchmarks only: acknowledged writes can be lost on power failure).
        #[arg(long)]
        no_fsync: bool,
    },
    /// Start a 3-member cluster on loopback, write keys through one member and
    /// watch them arrive through another.
    Demo,
    /// Save a snapshot of a running cluster to a file.
    SnapshotSave {
        /// Address of any member.
        #[arg(long)]
        endpoint: String,
        /// Output file.
        file: PathBuf,
    },
    /// Restore a snapshot file into a new data dir (then start a member on it).
    SnapshotRestore {
        /// Snapshot file.
        file: PathBuf,
        /// New, empty data dir.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Print the status of a member.
    Status {
        /// Address of the member.
        #[arg(long)]
        endpoint: String,
    },
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse().command).await {
        eprintln!("orch-store: {e}");
        std::process::exit(1);
    }
}

async fn run(command: Cmd) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Cmd::Member {
            id,
            data_dir,
            listen,
            bootstrap,
            join,
            no_fsync,
        } => {
            run_member(MemberOptions {
                id,
                data_dir,
                listen,
                bootstrap,
                join,
                fsync: !no_fsync,
            })
            .await?
        }
        Cmd::Demo => demo().await?,
        Cmd::SnapshotSave { endpoint, file } => {
            Client::new([endpoint]).snapshot_save(&file).await?;
            println!("snapshot written to {}", file.display());
        }
        Cmd::SnapshotRestore { file, data_dir } => {
            restore_snapshot(&file, &data_dir)?;
            println!(
                "restored into {}; start a member on it to serve the data",
                data_dir.display()
            );
        }
        Cmd::Status { endpoint } => {
            let status = Client::new([endpoint.clone()]).status_of(&endpoint).await?;
            println!("{status:#?}");
        }
    }
    Ok(())
}

async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::temp_dir().join(format!("orch-store-demo-{}", std::process::id()));
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut members = Vec::new();
    for id in 1..=3u64 {
        let config = NodeConfig::new(id, root.join(format!("member-{id}")), listen);
        members.push(StoreNode::start(config).await?);
    }
    members[0].initialize().await?;
    for member in &members[1..] {
        members[0].add_learner(member.id(), member.addr()).await?;
        members[0].promote(&[member.id()]).await?;
    }
    let status = members[0].status();
    println!(
        "cluster up: voters {:?}, leader {:?}",
        status.voters, status.leader
    );
    let mut watch = members[2]
        .watch(WatchRequest::new(KeyRange::prefix("demo/")))
        .await?;
    for i in 1..=5 {
        let resp = members[1]
            .put(format!("demo/key-{i}"), format!("value-{i}"))
            .await?;
        println!(
            "put demo/key-{i} through member 2 -> revision {}",
            resp.revision
        );
    }
    let mut seen = 0;
    while seen < 5 {
        let resp = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await?
            .ok_or("watch ended")??;
        for event in resp.events {
            seen += 1;
            println!(
                "watch on member 3: {:?} {} = {} (revision {})",
                event.kind,
                String::from_utf8_lossy(&event.kv.key),
                String::from_utf8_lossy(&event.kv.value),
                event.kv.mod_revision
            );
        }
    }
    let read = members[2].get("demo/key-5").await?.ok_or("key missing")?;
    println!(
        "linearizable read on member 3: demo/key-5 = {} (version {})",
        String::from_utf8_lossy(&read.value),
        read.version
    );
    for member in &members {
        member.shutdown().await;
    }
    drop(members);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
