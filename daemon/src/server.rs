//! `orchd server`: a master. The first one bootstraps a new cluster; with
//! `--join` a master joins an existing one as a learner, catches up, and
//! is promoted to voter. Unless `--no-agent`, the master runs an agent for
//! its own host as a child process (`orchd agent`): a process that has
//! loaded RocksDB cannot start containers (see ARCHITECTURE.md).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use orch_core::controller::LoopSettings;
use orch_core::{ControlPlane, ControlPlaneConfig};
use orch_raft_store::Kv;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::cli::ServerArgs;
use crate::data_dir::{self, DataDir, Endpoints};
use crate::tls;

/// How long a joining master may take to be added (it catches up first).
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the embedded agent has to stop on shutdown.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a master until SIGTERM or SIGINT.
pub async fn run(args: ServerArgs) -> Result<()> {
    let data = DataDir::new(&args.data_dir);
    let fresh = !data.has_store();
    let existing_token = data.token()?;
    // The CA of a master that starts a cluster (a new one, or one restored
    // from a snapshot) is made here; a joining master learns it after the
    // join; a restarting one has it.
    let mut ca = data.ca()?;
    let token = match (&args.token, &existing_token) {
        (Some(given), Some(kept)) if data_dir::check_token(given)? != *kept => bail!(
            "{} belongs to another cluster (its token differs from --token)",
            data.root().display()
        ),
        (Some(given), _) => data_dir::check_token(given)?,
        (None, Some(kept)) => kept.clone(),
        (None, None) if args.join.is_some() => bail!("--join needs --token"),
        (None, None) => {
            let new_ca = tls::ClusterCa::generate()?;
            let token = tls::token_for(&new_ca);
            ca = Some(new_ca);
            token
        }
    };
    if args.join.is_none() && fresh && args.token.is_some() {
        bail!("--token is for joining (--join) or for a restored data dir; a new cluster makes its own");
    }
    let id = match data.member_id()? {
        Some(id) => id,
        None if args.join.is_some() => data_dir::new_member_id(),
        None => 1,
    };
    if fresh {
        check_empty_or_missing(data.root())?;
    }
    let outcome = start(&args, &data, &token, id, fresh, ca).await;
    let plane = match outcome {
        Ok(plane) => plane,
        Err(e) => {
            if fresh {
                // Leave nothing behind of a master that never started.
                let _ = std::fs::remove_dir_all(data.root());
            }
            return Err(e);
        }
    };
    let api = advertised(plane.api.addr);
    println!(
        "orchd server: member {id} serving the API on {api}, peers on {}",
        plane.store.addr()
    );
    println!(
        "  kubectl:   export KUBECONFIG={}",
        data.kubeconfig().display()
    );
    println!(
        "  join:      orchd server --join {} --token $(cat {}) ...",
        plane.store.addr(),
        data.token_file().display()
    );
    println!(
        "  workers:   orchd agent --server {api} --token $(cat {}) ...",
        data.token_file().display()
    );

    let (stop, stopped) = watch::channel(false);
    let agent = (!args.no_agent).then(|| {
        tokio::spawn(supervise_agent(
            agent_args(&args, &data, &api, &token),
            data.root().join("agent.log"),
            stopped.clone(),
        ))
    });
    wait_for_signal().await?;
    tracing::info!("stopping");
    stop.send_replace(true);
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    plane.shutdown().await;
    Ok(())
}

/// Refuses a data dir that holds files of something else.
fn check_empty_or_missing(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty and holds no orch master (refusing to use it)",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// Starts the control plane, joining or bootstrapping, and writes the
/// token, kubeconfig and endpoints.
async fn start(
    args: &ServerArgs,
    data: &DataDir,
    token: &str,
    id: u64,
    fresh: bool,
    ca: Option<tls::ClusterCa>,
) -> Result<ControlPlane> {
    std::fs::create_dir_all(data.root())
        .with_context(|| format!("creating {}", data.root().display()))?;
    let certificate = Arc::new(tls::DeferredCert::default());
    let config = ControlPlaneConfig {
        id,
        data_dir: data.store(),
        store_addr: args.peer_addr,
        api_addr: args.api_addr,
        loops: Some(LoopSettings::default()),
        agent_token: Some(token.to_string()),
        api_tokens: vec![data_dir::admin_token(token), token.to_string()],
        tls: Some(tls::server_config(certificate.clone())?),
        ca_pem: None,
        secret_key: Some(data_dir::secret_key(token)),
    };
    let plane = match &args.join {
        None => ControlPlane::start_single(config).await,
        Some(_) => ControlPlane::start_joining(config).await,
    }
    .map_err(|e| anyhow::anyhow!("{e}"))
    .context("starting the master")?;
    data.write_member_id(id)?;
    if let Some(join) = &args.join {
        let member_of_cluster = plane.store.status().voters.iter().any(|(v, _)| *v == id);
        if fresh || !member_of_cluster {
            if let Err(e) = join_cluster(join, token, id, plane.store.addr()).await {
                plane.shutdown().await;
                return Err(e);
            }
        }
    }
    let ca = match ca {
        Some(ca) => {
            publish_ca(&plane, &ca, token).await?;
            ca
        }
        None => match learn_ca(&plane, token).await {
            Ok(ca) => ca,
            Err(e) => {
                plane.shutdown().await;
                return Err(e);
            }
        },
    };
    data.write_ca(&ca)?;
    let (chain, key) = ca.issue_server_cert(&serving_ips(args), &serving_names())?;
    certificate.set(&chain, &key)?;
    plane.server.serve_ca(ca.cert_pem.clone());
    data.write_token(token)?;
    let api = advertised(plane.api.addr);
    data.write_kubeconfig(&api, token, &ca.cert_pem)?;
    data.write_endpoints(&Endpoints {
        api: api.clone(),
        peer: plane.store.addr().to_string(),
    })?;
    Ok(plane)
}

/// Puts the CA and the token's hash into the store, where joining masters
/// find them.
async fn publish_ca(plane: &ControlPlane, ca: &tls::ClusterCa, token: &str) -> Result<()> {
    let token_hash = data_dir::token_hash(token);
    let current = plane
        .store
        .get(tls::TOKEN_HASH_KEY)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("reading the token hash from the store")?;
    if current.is_none_or(|kv| kv.value != token_hash.as_bytes()) {
        plane
            .store
            .put(tls::TOKEN_HASH_KEY, token_hash.into_bytes())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("storing the token hash")?;
    }
    let value = serde_json::to_vec(ca).expect("the CA serializes");
    let current = plane
        .store
        .get(tls::CA_KEY)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("reading the cluster CA from the store")?;
    if current.is_none_or(|kv| kv.value != value) {
        plane
            .store
            .put(tls::CA_KEY, value)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("storing the cluster CA")?;
    }
    Ok(())
}

/// Reads the CA a joined master's store holds and checks it against the
/// hash its token names.
async fn learn_ca(plane: &ControlPlane, token: &str) -> Result<tls::ClusterCa> {
    let kv = plane
        .store
        .get(tls::CA_KEY)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("reading the cluster CA from the store")?
        .context("the cluster has no CA in its store (is its first master an orchd server?)")?;
    let ca: tls::ClusterCa =
        serde_json::from_slice(&kv.value).context("the cluster CA in the store is damaged")?;
    let expected = tls::token_ca_hash(token)?;
    if ca.hash() != expected {
        bail!("the cluster's CA does not match the token (wrong --token for this cluster?)");
    }
    Ok(ca)
}

/// The addresses the serving certificate names: the API address (unless
/// a wildcard), loopback, and `--tls-san` ones.
fn serving_ips(args: &ServerArgs) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !args.api_addr.ip().is_unspecified() && !ips.contains(&args.api_addr.ip()) {
        ips.push(args.api_addr.ip());
    }
    ips.extend(args.tls_san.iter().filter_map(|s| s.parse::<IpAddr>().ok()));
    ips
}

/// The names the serving certificate names: localhost and the host name.
fn serving_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(host) = nix::unistd::gethostname() {
        names.push(host.to_string_lossy().to_lowercase());
    }
    names
}

/// Asks the cluster of the master at `join` (its peer address) to add
/// member `id` at `peer`: as a learner until it has caught up, then as a
/// voter. Checks first that `token` is this cluster's (its CA and its
/// secret), so that a wrong token changes nothing.
async fn join_cluster(join: &str, token: &str, id: u64, peer: &str) -> Result<()> {
    let client = orch_raft_store::Client::new([join.to_string()]);
    tracing::info!(%join, id, "joining");
    let read = |key: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(key)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("reaching the cluster at {join}"))
        }
    };
    let token_hash = read(tls::TOKEN_HASH_KEY)
        .await?
        .context("the cluster at --join has no token (is it an orchd server's peer address?)")?;
    if token_hash.value != data_dir::token_hash(token).as_bytes() {
        bail!("the token is not this cluster's (see DATA_DIR/token on its first master)");
    }
    tokio::time::timeout(JOIN_TIMEOUT, async {
        client
            .add_learner(id, peer)
            .await
            .with_context(|| format!("joining the cluster at {join}"))?;
        client
            .promote(&[id])
            .await
            .with_context(|| format!("becoming a voter of the cluster at {join}"))?;
        Ok::<_, anyhow::Error>(())
    })
    .await
    .with_context(|| format!("joining the cluster at {join}: no answer within {JOIN_TIMEOUT:?}"))?
}

/// The address clients reach a listener at (a wildcard listen address is
/// reached on loopback from this host).
fn advertised(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// The command line of the embedded agent.
fn agent_args(args: &ServerArgs, data: &DataDir, api: &str, token: &str) -> Vec<String> {
    let mut argv = vec![
        "agent".to_string(),
        "--server".to_string(),
        api.to_string(),
        "--token".to_string(),
        token.to_string(),
        "--data-dir".to_string(),
        data.agent().display().to_string(),
        "--port".to_string(),
        args.agent_port.to_string(),
    ];
    if let Some(name) = &args.node_name {
        argv.push("--node-name".to_string());
        argv.push(name.clone());
    }
    argv
}

fn spawn_agent(argv: &[String], log: &PathBuf) -> Result<Child> {
    let exe = std::env::current_exe().context("finding the orchd binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    Command::new(exe)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the embedded agent")
}

/// Runs the embedded agent, restarting it a second after it exits, until
/// `stopped`; then sends it SIGTERM (its pods keep running) and waits.
async fn supervise_agent(argv: Vec<String>, log: PathBuf, mut stopped: watch::Receiver<bool>) {
    loop {
        let mut child = match spawn_agent(&argv, &log) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the embedded agent cannot start");
                return;
            }
        };
        tracing::info!(pid = child.id(), log = %log.display(), "embedded agent started");
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stopped.wait_for(|s| *s) => None,
        };
        match exited {
            Some(status) => {
                tracing::warn!(?status, "the embedded agent exited; restarting it");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
            None => {
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(AGENT_STOP_TIMEOUT, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                return;
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
