//! The command line of a stand-alone agent (`orch-agent`), until `orchd
//! agent` wires the same [`super::Agent`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::log_rotation::LogRotation;
use super::network::PodNetworkMode;
use super::{Agent, AgentConfig};
use crate::net::Cidr;

/// Flags of `orch-agent`.
#[derive(Debug, Parser)]
#[command(
    name = "orch-agent",
    about = "orch's node agent: runs the pods the control plane binds to this node"
)]
pub struct Args {
    /// The API server (`host:port`, plain HTTP for now).
    /// Several masters' addresses may be given, comma separated: the agent
    /// talks to one and moves to the next when it cannot connect.
    #[arg(long, value_delimiter = ',', required = true)]
    pub server: Vec<String>,
    /// The cluster's agent token (a master's DATA_DIR/agent-token; its join
    /// token works too): the agent's credential with the API. The agent's
    /// own API requires the agents' token derived from it of its callers
    /// (unless `--agent-token-file` says otherwise).
    #[arg(long)]
    pub token: Option<String>,
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Where the agent keeps images, pods, logs and runtime state.
    #[arg(long, default_value = "/var/lib/orch/agent")]
    pub data_dir: PathBuf,
    /// The address the control plane reaches this node at (default: the
    /// local address of the route to the API server).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// The port of the agent's own API (logs, exec).
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// A label for the Node, `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A file holding the bearer token the agent's API requires (the API
    /// server's agent token); without it the API accepts every caller.
    #[arg(long)]
    pub agent_token_file: Option<PathBuf>,
    /// The cgroup under which every pod's cgroup is made.
    #[arg(long, default_value = "orch")]
    pub cgroup_parent: String,
    /// The first restart back-off of a crashing container, in ms (then
    /// doubling up to 5 minutes).
    #[arg(long, default_value_t = 10_000)]
    pub restart_backoff_ms: u64,
    /// How often pods' CPU and memory usage is sampled and published, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub usage_interval_ms: u64,
    /// A container log file larger than this is rotated (a quantity:
    /// `10Mi`, `512Ki`, bytes).
    #[arg(long, default_value = "10Mi", value_parser = parse_size)]
    pub container_log_max_size: u64,
    /// Log files kept per run of a container, the live one included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..))]
    pub container_log_max_files: u64,
    /// How often container logs' sizes are checked, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub log_check_interval_ms: u64,
    /// Imports an image before starting: `PATH=NAME` for an OCI image
    /// layout directory, or `PATH` for a docker-archive tarball (names from
    /// the archive). Repeatable.
    #[arg(long = "import-image")]
    pub import_images: Vec<String>,
    /// A registry (`host:port`) to pull from over plain HTTP (repeatable;
    /// registries on loopback always are).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// The pod network: `bridge` (a bridge, a veth and an address from the
    /// Node's podCIDR per pod), `none` (loopback only), or `auto`: bridge
    /// once the Node has a podCIDR.
    #[arg(long, value_enum, default_value_t = PodNetworkMode::Auto)]
    pub pod_network: PodNetworkMode,
    /// The node's bridge (at most 15 bytes); its masquerade and service
    /// tables are the nftables tables `ip <NAME>-nat` and `ip <NAME>-svc`.
    /// Agents sharing a host need names of their own.
    #[arg(long, default_value = "orch0")]
    pub bridge_name: String,
    /// Destinations whose traffic from pods is not masqueraded (default:
    /// every Node's podCIDR).
    #[arg(long, value_parser = parse_cidr)]
    pub cluster_cidr: Option<Cidr>,
    /// Do not run the service proxy (the nftables rules behind ClusterIPs
    /// and NodePorts); it runs with any pod network but `none`.
    #[arg(long)]
    pub no_service_proxy: bool,
    /// Do not serve cluster DNS (`SERVICE.NAMESPACE.svc.cluster.local`)
    /// on the bridge's address; pods then get the host's resolvers.
    #[arg(long)]
    pub no_cluster_dns: bool,
    /// Where the node's Ingress proxy serves HTTP (Ingresses of class
    /// `orch` or of none).
    #[arg(long, default_value = "0.0.0.0:80")]
    pub ingress_addr: std::net::SocketAddr,
    /// Do not run the Ingress proxy.
    #[arg(long)]
    pub no_ingress: bool,
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s).ok_or_else(|| format!("{s:?} is not an IPv4 range a.b.c.d/n"))
}

/// Imports each of `imports` (`PATH=NAME` layouts, `PATH` archives) into
/// the image store at `dir`.
fn import_images(dir: &std::path::Path, imports: &[String]) -> Result<(), String> {
    if imports.is_empty() {
        return Ok(());
    }
    let images = crate::image::ImageStore::open(dir).map_err(|e| e.to_string())?;
    for import in imports {
        let (path, name) = match import.split_once('=') {
            Some((path, name)) => (std::path::Path::new(path), Some(name)),
            None => (std::path::Path::new(import.as_str()), None),
        };
        let imported = match name {
            Some(name) if path.is_dir() => images.import_oci_layout(path, name).map(|r| vec![r]),
            Some(_) => Err(crate::image::ImageError::Malformed {
                what: path.display().to_string(),
                reason:
                    "PATH=NAME is for OCI layout directories; give a docker archive as PATH alone"
                        .into(),
            }),
            None => images.import_docker_archive(path),
        }
        .map_err(|e| format!("importing {}: {e}", path.display()))?;
        for image in imported {
            tracing::info!(reference = %image.reference, digest = %image.digest, "image imported");
        }
    }
    Ok(())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    orch_core::quantity::parse(s)
        .map(|milli| (milli / 1000) as u64)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("{s:?} is not a size (for example 10Mi)"))
}

impl Args {
    /// The agent's configuration from the flags.
    pub fn config(&self) -> AgentConfig {
        let name = self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().to_lowercase())
                .unwrap_or_else(|_| "localhost".to_string())
        });
        let mut config = AgentConfig::new(name, &self.data_dir);
        config.node_ip = self.node_ip;
        config.agent_port = self.port;
        config.labels = self.labels.iter().cloned().collect::<BTreeMap<_, _>>();
        config.runtime.cgroup_parent = self.cgroup_parent.clone();
        config.restart_backoff.initial = Duration::from_millis(self.restart_backoff_ms);
        config.usage_interval = Duration::from_millis(self.usage_interval_ms.max(100));
        config.registry.insecure_registries = self.insecure_registries.clone();
        config.log_rotation = LogRotation {
            max_bytes: self.container_log_max_size,
            max_files: self.container_log_max_files as usize,
            interval: Duration::from_millis(self.log_check_interval_ms.max(100)),
        };
        config.network.mode = self.pod_network;
        config.network.bridge = self.bridge_name.clone();
        config.network.cluster_cidr = self.cluster_cidr;
        config.network.service_proxy = !self.no_service_proxy;
        config.network.cluster_dns = !self.no_cluster_dns;
        config.network.ingress = (!self.no_ingress).then_some(self.ingress_addr);
        config
    }
}

/// How long the agent waits for a master to give it the cluster CA.
const CA_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster CA, from the first of `servers` that serves one matching
/// `hash`; retried until [`CA_FETCH_TIMEOUT`] while none answers. A CA that
/// does not match is an error at once.
async fn fetch_ca(servers: &[String], hash: &str) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + CA_FETCH_TIMEOUT;
    loop {
        let mut last = String::new();
        for server in servers {
            match orch_core::tls::fetch_ca(server, hash).await {
                Ok(ca) => return Ok(ca),
                Err(e) if e.code == 401 => return Err(e.message),
                Err(e) => last = e.message,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no master gave the cluster CA: {last}"));
        }
        tracing::info!(error = %last, "waiting for a master to serve the cluster CA");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs an agent from `args` until SIGTERM or SIGINT; its pods keep
/// running after it stops. Errors are for people, one line.
pub async fn run(args: Args) -> Result<(), String> {
    let mut config = args.config();
    let token = args.token.clone().filter(|t| !t.trim().is_empty());
    // The API server presents the agents' token to agents, whichever of
    // the cluster's tokens this agent was given.
    config.agent_token = token
        .as_deref()
        .map(|t| orch_core::tls::agent_token_for(t).unwrap_or_else(|| t.to_string()));
    if let Some(file) = &args.agent_token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        config.agent_token = Some(token.trim().to_string());
    }
    import_images(&config.image_dir, &args.import_images)?;
    let servers: Vec<String> = args
        .server
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err("--server names no API server".to_string());
    }
    // A join token names the cluster CA: the API is then HTTPS, trusted
    // through the CA fetched from the masters and checked against it.
    let client = match token.as_deref().and_then(orch_core::tls::token_ca_hash) {
        Some(hash) => {
            let ca = fetch_ca(&servers, hash).await?;
            orch_core::Client::https_servers(servers.clone(), token.clone(), &ca)
                .map_err(|e| e.message)?
        }
        None => orch_core::Client::http_servers(servers.clone(), token),
    };
    let client = client.with_user_agent(concat!("orch-agent/", env!("CARGO_PKG_VERSION")));
    let agent = Agent::start(config, client)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(node = agent.node_name(), servers = %servers.join(","), "agent running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing a SIGTERM handler: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    agent.shutdown().await;
    Ok(())
}
