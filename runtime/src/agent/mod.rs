//! The node agent (orch's kubelet): registers this host as a Node, renews
//! its Lease, watches the pods bound to it and drives each one to its spec
//! through the [`crate::pod`] runtime, reporting their status back through
//! `orch-core`'s client.
//!
//! # Shape
//!
//! One pod informer (field selector `spec.nodeName=<node>`) feeds a
//! de-duplicating queue of pod keys, drained by a few workers that call
//! [`pods::reconcile`], never two at once for one pod. A reconcile is level
//! triggered: it reads the pod from the cache and the pod's containers from
//! the runtime, and does the next step (create the sandbox, pull, start the
//! next init container or the app containers, restart a container whose
//! back-off is over, tear down a deleted pod) and writes the status that
//! results. Container exits wake the pod's key through a watcher task per
//! running container; back-offs and retries come back through the queue's
//! delayed entries. On start the agent adopts what a previous agent left
//! running ([`crate::pod::PodRuntime::recover`]) and reconciles those pods
//! first, so nothing runs twice and nothing is orphaned.

pub mod backoff;
pub mod cli;
pub mod cluster_dns;
pub mod container;
pub mod env;
pub mod health;
pub mod host;
pub mod ingress;
pub mod log_rotation;
pub mod network;
pub mod node;
pub mod pods;
pub mod probe;
pub mod server;
pub mod service_env;
pub mod service_proxy;
pub mod services;
pub mod status;
pub mod usage;
pub mod volumes;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use orch_core::client::Selectors;
use orch_core::controller::{runner, Backoff, Informer, Queue};
use orch_core::{ApiError, Client};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::image::{ImageError, ImageStore, RegistryOptions};
use crate::pod::{PodError, PodRuntime, RuntimeConfig};
pub use backoff::RestartBackoff;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The Node's name (Kubernetes: the host name).
    pub node_name: String,
    /// Where the runtime keeps pods, bundles and logs.
    pub runtime: RuntimeConfig,
    /// The image store's directory.
    pub image_dir: PathBuf,
    /// Where pods' volumes live (`<dir>/<pod uid>/<volume>`).
    pub volume_dir: PathBuf,
    /// The address the control plane reaches this agent at (`None`: the
    /// local address of the route towards the API server).
    pub node_ip: Option<IpAddr>,
    /// The port of the agent's own API (logs, exec), reported as the Node's
    /// `daemonEndpoints.kubeletEndpoint.Port` (0: any free port).
    pub agent_port: u16,
    /// The bearer token the agent's API requires (the API server's
    /// `agent_token`); `None` accepts every caller.
    pub agent_token: Option<String>,
    /// More labels for the Node.
    pub labels: BTreeMap<String, String>,
    /// Pods this node accepts (the Node's `pods` capacity).
    pub max_pods: u32,
    /// How often the Lease is renewed. The control plane marks a node
    /// NotReady after its `node_monitor_grace` without renewal.
    pub renew_interval: Duration,
    /// The Lease's `leaseDurationSeconds`.
    pub lease_duration_seconds: i32,
    /// How often the Node object is checked (re-registered if deleted,
    /// Ready posted again if marked otherwise).
    pub status_interval: Duration,
    /// Restart back-off of crashing containers.
    pub restart_backoff: RestartBackoff,
    /// How often a pod whose start failed (image pull, missing ConfigMap)
    /// is tried again, at first; doubles up to `restart_backoff.max`.
    pub retry_interval: Duration,
    /// Grace period for stopping the containers of a pod whose API object
    /// is gone (force-deleted, or deleted while the agent was down).
    pub orphan_grace: Duration,
    /// Registries' access.
    pub registry: RegistryOptions,
    /// Workers reconciling pods.
    pub workers: usize,
    /// How often the volumes whose contents come from the API (ConfigMaps,
    /// Secrets, downward API) are brought up to date in running pods.
    pub volume_refresh: Duration,
    /// How often pods' CPU and memory usage is sampled (and published when
    /// it changed).
    pub usage_interval: Duration,
    /// How large container logs may grow before they are rotated.
    pub log_rotation: log_rotation::LogRotation,
    /// The pod network (bridge, veths, pod addresses, routes, masquerade).
    pub network: network::NetworkConfig,
}

impl AgentConfig {
    /// An agent named `node_name` keeping everything under `data_dir`
    /// (`run/`, `pods/`, `logs/`, `images/`), with Kubernetes' timings but
    /// a Lease renewed twice a second.
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        AgentConfig {
            node_name: node_name.into(),
            runtime: RuntimeConfig {
                state_dir: data_dir.join("run"),
                data_dir: data_dir.join("pods"),
                log_dir: data_dir.join("logs"),
                cgroup_parent: "orch".to_string(),
            },
            image_dir: data_dir.join("images"),
            volume_dir: data_dir.join("volumes"),
            node_ip: None,
            agent_port: 10250,
            agent_token: None,
            labels: BTreeMap::new(),
            max_pods: 110,
            renew_interval: Duration::from_millis(500),
            lease_duration_seconds: 40,
            status_interval: Duration::from_secs(2),
            restart_backoff: RestartBackoff::default(),
            retry_interval: Duration::from_secs(2),
            orphan_grace: Duration::from_secs(2),
            registry: RegistryOptions::default(),
            workers: 8,
            volume_refresh: Duration::from_secs(10),
            usage_interval: Duration::from_secs(10),
            log_rotation: log_rotation::LogRotation::default(),
            network: network::NetworkConfig::new(&data_dir),
        }
    }
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The image store could not be opened.
    #[error("opening the image store: {0}")]
    Images(#[from] ImageError),
    /// The pod runtime could not start or recover.
    #[error("starting the pod runtime: {0}")]
    Runtime(#[from] PodError),
    /// The node could not be registered.
    #[error("registering node {node}: {source}")]
    Register {
        /// The node's name.
        node: String,
        /// The API's answer.
        source: ApiError,
    },
    /// The agent's API could not listen on its port.
    #[error("listening on port {port} for the agent's API: {source}")]
    Listen {
        /// The port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// The node name is not a valid Node name.
    #[error("invalid node name {0:?}: {1}")]
    NodeName(String, String),
    /// The pod network could not be opened or cleaned up.
    #[error("pod network: {0}")]
    Network(#[from] crate::net::NetError),
}

/// A running agent.
pub struct Agent {
    shared: Arc<pods::Shared>,
    tasks: JoinSet<()>,
    server: Option<server::AgentServerHandle>,
}

impl Agent {
    /// Starts the agent: opens the image store and the pod runtime, adopts
    /// the pods a previous agent left, registers the Node and its Lease,
    /// and starts following the pods bound to it.
    pub async fn start(config: AgentConfig, client: Client) -> Result<Agent, AgentError> {
        if let Some(reason) = orch_core::object::check_dns1123_subdomain(&config.node_name) {
            return Err(AgentError::NodeName(config.node_name.clone(), reason));
        }
        let images = ImageStore::open(&config.image_dir)?;
        let network = Arc::new(network::PodNetwork::new(
            config.network.clone(),
            &config.node_name,
        )?);
        let runtime = PodRuntime::start(config.runtime.clone(), images.clone())?;
        let address = config
            .node_ip
            .unwrap_or_else(|| host::node_address(client.address().as_deref()))
            .to_string();
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.agent_port))
            .await
            .map_err(|source| AgentError::Listen {
                port: config.agent_port,
                source,
            })?;
        let mut config = config;
        config.agent_port = listener
            .local_addr()
            .map_err(|source| AgentError::Listen {
                port: config.agent_port,
                source,
            })?
            .port();
        let stop = CancellationToken::new();
        let queue = Queue::new(Backoff::default());
        let shared = Arc::new(pods::Shared::new(
            config.clone(),
            client.clone(),
            runtime,
            images,
            network.clone(),
            address.clone(),
            queue.clone(),
            stop.clone(),
        ));
        shared.adopt().await?;
        let on_host = shared
            .pods_on_host()
            .into_iter()
            .map(|(uid, _)| uid)
            .collect();
        network.release_gone(&on_host).await?;
        let server = server::serve(
            listener,
            server::AgentServerConfig {
                log_dir: config.runtime.log_dir.clone(),
                token: config.agent_token.clone(),
            },
            shared.clone(),
        )
        .map_err(|source| AgentError::Listen {
            port: config.agent_port,
            source,
        })?;

        let facts = host::facts(&config.runtime.data_dir);
        let node_uid = node::register(&client, &config, &facts, &address)
            .await
            .map_err(|source| AgentError::Register {
                node: config.node_name.clone(),
                source,
            })?;
        tracing::info!(node = %config.node_name, %address, port = config.agent_port, "node registered");

        let mut tasks = JoinSet::new();
        tasks.spawn(node::heartbeat(
            client.clone(),
            config.clone(),
            facts,
            address.clone(),
            node_uid,
            stop.clone(),
        ));
        let net = &config.network;
        if net.mode != network::PodNetworkMode::None
            && (net.service_proxy || net.cluster_dns || net.ingress.is_some())
        {
            let caches = services::ServiceCaches::start(&client, &stop);
            shared.set_services(caches.clone());
            if net.service_proxy {
                let proxy = service_proxy::ServiceProxy::new(
                    service_proxy::ProxyConfig::new(&net.bridge),
                    caches.clone(),
                    network.cluster_cidrs(),
                );
                tasks.spawn(proxy.run(stop.clone()));
            }
            if net.cluster_dns {
                tasks.spawn(cluster_dns::serve(
                    network.clone(),
                    caches.clone(),
                    stop.clone(),
                ));
            }
            if let Some(listen) = net.ingress {
                tasks.spawn(ingress::serve(
                    listen,
                    client.clone(),
                    config.node_name.clone(),
                    address.clone(),
                    caches,
                    stop.clone(),
                ));
            }
        }
        tasks.spawn(network.run(client.clone(), stop.clone()));
        tasks.spawn(usage::report(shared.clone(), config.usage_interval));
        tasks.spawn(log_rotation::run(
            config.runtime.log_dir.clone(),
            config.log_rotation,
            shared.log_rotations.clone(),
            stop.clone(),
        ));
        let on_pod = shared.clone();
        let cache = Informer::<Pod>::new(client)
            .select(Selectors::fields(format!(
                "spec.nodeName={}",
                config.node_name
            )))
            .start(stop.clone(), move |pod: &Pod| on_pod.pod_changed(pod));
        shared.set_cache(cache.clone());
        let workers = shared.clone();
        let worker_stop = stop.clone();
        tasks.spawn(async move {
            let mut cache = cache;
            tokio::select! {
                _ = worker_stop.cancelled() => return,
                _ = cache.wait_until_ready() => {}
            }
            // Adopted pods whose objects are gone get no informer event.
            workers.queue_adopted();
            let metrics = workers.loop_metrics.register("agent-pods");
            let shared = workers.clone();
            let run = runner::run(
                "agent-pods",
                queue,
                workers.config.workers,
                metrics,
                move |key| {
                    let shared = shared.clone();
                    async move { pods::reconcile(&shared, &key).await }
                },
            );
            tokio::select! {
                _ = worker_stop.cancelled() => {}
                _ = run => {}
            }
        });
        Ok(Agent {
            shared,
            tasks,
            server: Some(server),
        })
    }

    /// The pod runtime (for the agent's API: logs, exec).
    pub fn runtime(&self) -> &PodRuntime {
        &self.shared.runtime
    }

    /// The port the agent's API listens on.
    pub fn port(&self) -> u16 {
        self.shared.config.agent_port
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }

    /// Stops following the API and renewing the Lease. Pods keep running
    /// (a restarted agent adopts them).
    pub async fn shutdown(mut self) {
        self.shared.stop.cancel();
        self.shared.queue.close();
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        while self.tasks.join_next().await.is_some() {}
    }
}
