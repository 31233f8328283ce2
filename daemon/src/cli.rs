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
    /// A TOML file of flags for `orchd server` or `orchd agent`: its keys
    /// are the subcommand's long flag names (`data-dir = "/var/lib/orch"`,
    /// `no-agent = true`, `tls-san = ["10.0.0.1"]`); a flag given on the
    /// command line wins. Other subcommands ignore it.
    #[arg(long, global = true, env = "ORCHD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Remove a master from its cluster (this one, or a dead one with
    /// --member).
    Leave(LeaveArgs),
    /// Save or restore a snapshot of the cluster state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Manage the images of a node's agent.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage the encryption of Secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

/// `orchd secrets`.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Seal every Secret with a new key: adds a data key, rewrites every
    /// Secret with it, drops the keys no Secret uses any more.
    RotateKey(StatusArgs),
}

/// `orchd server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Where the master keeps its state (store, tokens, kubeconfig, and the
    /// embedded agent's images and pods).
    #[arg(long, default_value = "/var/lib/orch/server")]
    pub data_dir: PathBuf,
    /// Address of the Kubernetes API (HTTPS, with the cluster's CA).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub api_addr: SocketAddr,
    /// Address of the store member, for the other masters (mutual TLS).
    #[arg(long, default_value = "127.0.0.1:2380")]
    pub peer_addr: SocketAddr,
    /// Join the cluster of the master whose API address (its --api-addr)
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
    /// A flag for the embedded agent, as `orchd agent` takes it
    /// (repeatable; e.g. `--agent-arg=--pod-network=none`,
    /// `--agent-arg=--ingress-addr=0.0.0.0:8080`).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Another IP address the API's certificate is valid for (repeatable;
    /// the API address and loopback always are).
    #[arg(long)]
    pub tls_san: Vec<String>,
    /// How often the leading master sends Raft heartbeats, in ms (also
    /// the time limit of one replication call: raise it on slow disks).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// The shortest election timeout, in ms: a master that stops hearing
    /// the leader campaigns after the longest timeout (the leader lease)
    /// plus a random one between the shortest and the longest, so a dead
    /// leader is replaced after 0.75-0.9 s by default.
    #[arg(long, default_value_t = 300)]
    pub election_timeout_ms: u64,
    /// The longest election timeout, in ms (default: 1.5 times the
    /// shortest).
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
}

impl ServerArgs {
    /// Raft's clock from the flags; checked so that the heartbeat comes
    /// well within an election timeout.
    pub fn raft_timing(&self) -> anyhow::Result<orch_raft_store::RaftTiming> {
        use std::time::Duration;
        let min = self.election_timeout_ms;
        let max = self.election_timeout_max_ms.unwrap_or(min * 3 / 2);
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms * 2 > min {
            anyhow::bail!(
                "--heartbeat-interval-ms {} must be at most half of --election-timeout-ms {min}",
                self.heartbeat_interval_ms
            );
        }
        if max <= min {
            anyhow::bail!(
                "--election-timeout-max-ms {max} must be more than --election-timeout-ms {min}"
            );
        }
        Ok(orch_raft_store::RaftTiming {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            election_timeout_min: Duration::from_millis(min),
            election_timeout_max: Duration::from_millis(max),
        })
    }
}

/// `orchd status` (and other commands that only need the API).
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The data dir of a master on this machine.
    #[arg(long, default_value = "/var/lib/orch/server")]
    pub data_dir: PathBuf,
    /// Ask the cluster this kubeconfig points at instead (its current
    /// context: server, CA and token).
    #[arg(long, conflicts_with = "data_dir")]
    pub kubeconfig: Option<PathBuf>,
}

/// `orchd leave`.
#[derive(Debug, clap::Args)]
pub struct LeaveArgs {
    /// The data dir of the master that leaves (it must be running; it
    /// hands leadership over if it leads, is removed, and stops).
    #[arg(long, default_value = "/var/lib/orch/server")]
    pub data_dir: PathBuf,
    /// Remove this member instead (a master that is gone for good), asking
    /// the master of --data-dir to do it.
    #[arg(long)]
    pub member: Option<u64>,
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
