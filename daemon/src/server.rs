//! `orchd server`: a master. The first one bootstraps a new cluster; with
//! `--join` (any master's API address) a master fetches the cluster CA
//! with its token, issues itself certificates, and asks to be added: as a
//! learner that catches up, then as a voter. On SIGTERM a leading master
//! hands leadership over before it stops; a master that the cluster
//! removed (`orchd leave`) stops and marks its data dir. Unless `--no-agent`, the master runs an agent for
//! its own host as a child process (`orchd agent`): a process that has
//! loaded RocksDB cannot start containers (see ARCHITECTURE.md).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
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
    args.raft_timing()?;
    let data = DataDir::new(&args.data_dir);
    let fresh = !data.has_store();
    if data.has_left() {
        bail!(
            "{} is the data dir of a master that left its cluster; remove it to join again",
            data.root().display()
        );
    }
    let existing_token = data.token()?;
    let token = match (&args.token, &existing_token) {
        (Some(given), Some(kept)) if data_dir::check_token(given)? != *kept => bail!(
            "{} belongs to another cluster (its token differs from --token)",
            data.root().display()
        ),
        (Some(given), _) => data_dir::check_token(given)?,
        (None, Some(kept)) => kept.clone(),
        (None, None) if args.join.is_some() => bail!("--join needs --token"),
        (None, None) if !fresh => bail!(
            "{} holds a store but no token (DIR/token): it is damaged",
            data.root().display()
        ),
        (None, None) => String::new(),
    };
    if args.join.is_none() && fresh && args.token.is_some() {
        bail!("--token is for joining (--join) or for a restored data dir; a new cluster makes its own");
    }
    if fresh {
        check_empty_or_missing(data.root())?;
    }
    // The CA: a new cluster makes one, a joining master fetches it with
    // its token, a restarting (or restored) one has it.
    let (ca, token) = match (fresh, &args.join) {
        (true, None) => {
            let ca = tls::ClusterCa::generate()?;
            let token = tls::token_for(&ca);
            (ca, token)
        }
        (true, Some(join)) => (fetch_cluster_ca(join, &token).await?, token),
        (false, _) => {
            let ca = data.ca()?.with_context(|| {
                format!(
                    "{} has no cluster CA (tls/ca.crt, tls/ca.key)",
                    data.root().display()
                )
            })?;
            if ca.hash() != tls::token_ca_hash(&token)? {
                bail!(
                    "the CA in {} does not match its token (a data dir from another cluster?)",
                    data.root().display()
                );
            }
            (ca, token)
        }
    };
    let id = match data.member_id()? {
        Some(id) => id,
        None if args.join.is_some() => data_dir::new_member_id(),
        None => 1,
    };
    let outcome = start(&args, &data, &token, id, fresh, &ca).await;
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
        "  join:      orchd server --join {api} --token $(cat {}) ...",
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
    let removed = tokio::select! {
        signal = wait_for_signal() => { signal?; false }
        _ = removed_from_cluster(&plane) => true,
    };
    if removed {
        tracing::info!("this master was removed from the cluster; stopping");
        data.mark_left()?;
        // Let the answer to the removal reach its caller.
        tokio::time::sleep(Duration::from_millis(500)).await;
    } else {
        tracing::info!("stopping");
        match plane.store.hand_over_leadership().await {
            Ok(Some(leader)) => tracing::info!(leader, "leadership handed over"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "handing leadership over failed"),
        }
    }
    stop.send_replace(true);
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    plane.shutdown().await;
    Ok(())
}

/// Returns once the cluster has removed this master (`orchd leave`, or
/// another master's API told to remove it).
async fn removed_from_cluster(plane: &ControlPlane) {
    let id = plane.store.id();
    let through_own_api = plane.server.removed_from_cluster();
    tokio::pin!(through_own_api);
    loop {
        tokio::select! {
            _ = &mut through_own_api => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let status = plane.store.status();
        let known = status
            .voters
            .iter()
            .chain(&status.learners)
            .any(|(member, _)| *member == id);
        if !known && !status.voters.is_empty() {
            return;
        }
    }
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
    ca: &tls::ClusterCa,
) -> Result<ControlPlane> {
    std::fs::create_dir_all(data.root())
        .with_context(|| format!("creating {}", data.root().display()))?;
    let names = serving_names();
    let (chain, key) = ca.issue_server_cert(&serving_ips(args, args.api_addr), &names)?;
    let peer_tls = ca.peer_tls(&serving_ips(args, args.peer_addr), &names)?;
    let config = ControlPlaneConfig {
        id,
        data_dir: data.store(),
        store_addr: args.peer_addr,
        api_addr: args.api_addr,
        loops: Some(LoopSettings::default()),
        agent_token: Some(agent_token(token)?),
        api_tokens: vec![data_dir::admin_token(token), token.to_string()],
        restricted_tokens: vec![agent_token(token)?],
        tls: Some(tls::server_config(&chain, &key)?),
        ca_pem: Some(ca.cert_pem.clone()),
        secret_key: Some(data_dir::secret_key(token)),
        peer_tls: Some(peer_tls),
        raft_timing: Some(args.raft_timing()?),
    };
    let plane = match &args.join {
        None => ControlPlane::start_single(config).await,
        Some(_) => ControlPlane::start_joining(config).await,
    }
    .map_err(|e| anyhow::anyhow!("{e}"))
    .context("starting the master")?;
    if let Err(e) = join_and_publish(args, data, token, id, fresh, ca, &plane).await {
        plane.shutdown().await;
        return Err(e);
    }
    plane
        .server
        .serve_join_bundle(serde_json::to_vec(ca).expect("the CA serializes").into());
    data.write_token(token)?;
    data.write_agent_token(&agent_token(token)?)?;
    let api = advertised(plane.api.addr);
    data.write_kubeconfig(&api, token, &ca.cert_pem)?;
    data.write_endpoints(&Endpoints {
        api: api.clone(),
        peer: plane.store.addr().to_string(),
    })?;
    Ok(plane)
}

/// Joins the cluster at `--join` if this master is not a member yet, and
/// makes sure the store holds the CA and the token's hash.
async fn join_and_publish(
    args: &ServerArgs,
    data: &DataDir,
    token: &str,
    id: u64,
    fresh: bool,
    ca: &tls::ClusterCa,
    plane: &ControlPlane,
) -> Result<()> {
    data.write_member_id(id)?;
    data.write_ca(ca)?;
    if let Some(join) = &args.join {
        let member_of_cluster = plane.store.status().voters.iter().any(|(v, _)| *v == id);
        if fresh || !member_of_cluster {
            join_cluster(join, token, &ca.cert_pem, id, plane.store.addr()).await?;
        }
    }
    publish_ca(plane, ca, token).await
}

/// Puts the CA and the token's hash into the store, so that a snapshot
/// carries them to a restored cluster.
async fn publish_ca(plane: &ControlPlane, ca: &tls::ClusterCa, token: &str) -> Result<()> {
    let token_hash = data_dir::token_hash(token);
    let value = serde_json::to_vec(ca).expect("the CA serializes");
    for (key, value) in [
        (tls::TOKEN_HASH_KEY, token_hash.into_bytes()),
        (tls::CA_KEY, value),
    ] {
        let current = plane
            .store
            .get(key)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("reading {key} from the store"))?;
        if current.is_none_or(|kv| kv.value != value) {
            plane
                .store
                .put(key, value)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("storing {key}"))?;
        }
    }
    Ok(())
}

/// Fetches the cluster CA (with its key) from the master whose API is at
/// `join`, checking it against the hash the token names.
async fn fetch_cluster_ca(join: &str, token: &str) -> Result<tls::ClusterCa> {
    let expected = tls::token_ca_hash(token)?;
    let ca_pem = orch_core::tls::fetch_ca(join, expected)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))
        .with_context(|| format!("reaching the master at {join} (its --api-addr)"))?;
    let client =
        orch_core::Client::https_servers(vec![join.to_string()], Some(token.to_string()), &ca_pem)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let bundle = client
        .request_json(hyper::Method::GET, "/orch/v1/join-bundle", None)
        .await
        .map_err(|e| match e.code {
            401 => anyhow::anyhow!(
                "the token is not this cluster's (see DATA_DIR/token on its first master)"
            ),
            _ => anyhow::anyhow!("{}", e.message),
        })
        .with_context(|| format!("joining the cluster at {join}"))?;
    let ca: tls::ClusterCa = serde_json::from_value(bundle)
        .with_context(|| format!("the master at {join} sent no cluster CA"))?;
    if ca.hash() != expected {
        bail!("the master at {join} sent a CA the token does not name");
    }
    Ok(ca)
}

/// The addresses a certificate for `addr` names: `addr` (unless a
/// wildcard), loopback, and `--tls-san` ones.
fn serving_ips(args: &ServerArgs, addr: SocketAddr) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !addr.ip().is_unspecified() && !ips.contains(&addr.ip()) {
        ips.push(addr.ip());
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

/// Asks the cluster of the master whose API is at `join` to add member
/// `id` at `peer`: as a learner until it has caught up, then as a voter.
async fn join_cluster(join: &str, token: &str, ca_pem: &str, id: u64, peer: &str) -> Result<()> {
    tracing::info!(%join, id, "joining");
    let client =
        orch_core::Client::https_servers(vec![join.to_string()], Some(token.to_string()), ca_pem)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let request = serde_json::json!({"id": id, "peerAddress": peer});
    tokio::time::timeout(
        JOIN_TIMEOUT,
        client.request_json(hyper::Method::POST, "/orch/v1/members", Some(&request)),
    )
    .await
    .with_context(|| format!("joining the cluster at {join}: no answer within {JOIN_TIMEOUT:?}"))?
    .map_err(|e| anyhow::anyhow!("{}", e.message))
    .with_context(|| format!("joining the cluster at {join}"))?;
    Ok(())
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

/// The agents' token of the cluster whose join token is `token`.
fn agent_token(token: &str) -> Result<String> {
    orch_core::tls::agent_token_for(token).context("the join token is malformed")
}

/// The command line of the embedded agent.
/// The roles the Node of a master's embedded agent carries as labels.
const MASTER_NODE_ROLES: [&str; 2] = ["control-plane", "master"];

fn agent_args(args: &ServerArgs, data: &DataDir, api: &str, token: &str) -> Vec<String> {
    let mut argv = vec![
        "agent".to_string(),
        "--server".to_string(),
        api.to_string(),
        "--token".to_string(),
        agent_token(token).unwrap_or_else(|_| token.to_string()),
        "--data-dir".to_string(),
        data.agent().display().to_string(),
        "--port".to_string(),
        args.agent_port.to_string(),
    ];
    if let Some(name) = &args.node_name {
        argv.push("--node-name".to_string());
        argv.push(name.clone());
    }
    // A master's node says so (kubectl get nodes: ROLES), as with k3s.
    for role in MASTER_NODE_ROLES {
        argv.push("--label".to_string());
        argv.push(format!("node-role.kubernetes.io/{role}=true"));
    }
    argv.extend(args.agent_args.iter().cloned());
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
