//! `orchd`'s command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// orch: a Kubernetes-compatible container orchestrator in one binary.
///
/// Start a cluster with `orchd server`, add masters with `orchd server
/// --join`, add workers with `orchd agent`, then use kubectl with the
/// kubeconfig the first master writes (DATA_DIR/kubeconfig).
#[derive(Debug, Parser)]
#[command(name = "orchd", version)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// `orchd`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a master: the store member, the Kubernetes API, the control loops
    /// (active on the leader) and, unless --no-agent, an agent for this host.
    Server(ServerArgs),
    /// Run a worker node's agent, which runs the pods the cluster binds to
    /// it.
    Agent(Box<orch_runtime::agent::cli::Args>),
    /// Show the masters, the leader, the store revision and the nodes.
    Status(StatusArgs),
    /// Save or restore a snapshot of the cluster state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Manage the images of a node's agent.
    #[command(subcommand)]
    Image(ImageCommand),
}

/// `orchd server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Where the master keeps its state (store, tokens, kubeconfig, and the
    /// embedded agent's images and pods).
    #[arg(long, default_value = "/var/lib/orch/server")]
    pub data_dir: PathBuf,
    /// Address of the Kubernetes API (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub api_addr: SocketAddr,
    /// Address of the store member, for the other masters (and `--join`).
    #[arg(long, default_value = "127.0.0.1:2380")]
    pub peer_addr: SocketAddr,
    /// Join the cluster of the master whose peer address (its --peer-addr)
    /// this is, instead of starting a new cluster. Needs --token.
    #[arg(long, requires = "token")]
    pub join: Option<String>,
    /// The cluster's join token (DATA_DIR/token on the first master).
    #[arg(long)]
    pub token: Option<String>,
    /// Run no agent on this master (it runs no pods).
    #[arg(long)]
    pub no_agent: bool,
    /// The Node name of the embedded agent (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The port of the embedded agent's API (0: any free port).
    #[arg(long, default_value_t = 10250)]
    pub agent_port: u16,
    /// Another IP address the API's certificate is valid for (repeatable;
    /// the API address and loopback always are).
    #[arg(long)]
    pub tls_san: Vec<String>,
}

/// `orchd status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The data dir of a master on this machine.
    #[arg(long, default_value = "/var/lib/orch/server")]
    pub data_dir: PathBuf,
}

/// `orchd snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save the state of a running cluster to FILE.
    Save {
        /// The file to write.
        file: PathBuf,
        /// The data dir of a master on this machine (to find the cluster).
        #[arg(long, default_value = "/var/lib/orch/server")]
        data_dir: PathBuf,
    },
    /// Restore FILE into a new data dir, from which `orchd server
    /// --data-dir DIR` starts a single-master cluster with that state (the
    /// same CA and token: Secrets are sealed with a key the token gives).
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The new master's data dir (must not exist or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The token of the cluster the snapshot was saved from.
        #[arg(long)]
        token: String,
    },
}

/// `orchd image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an image: an OCI image layout directory, an OCI archive (a tar
    /// of a layout) or a docker-archive tarball.
    Import {
        /// The image file or directory.
        path: PathBuf,
        /// The name to store it under (required for OCI layouts and
        /// archives; docker archives carry their names).
        #[arg(long)]
        name: Option<String>,
        /// The data dir of the `orchd server` or `orchd agent` whose images
        /// these are.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Pull an image from a registry.
    Pull {
        /// The image reference.
        reference: String,
        /// The data dir of the `orchd server` or `orchd agent`.
        #[arg(long)]
        data_dir: PathBuf,
        /// A registry (`host:port`) reached over plain HTTP (repeatable;
        /// loopback registries always are).
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
    },
    /// List the images.
    Ls {
        /// The data dir of the `orchd server` or `orchd agent`.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Remove an image (its layers stay while another image uses them).
    Rm {
        /// The image reference.
        reference: String,
        /// The data dir of the `orchd server` or `orchd agent`.
        #[arg(long)]
        data_dir: PathBuf,
    },
}
