//! The agent's pod network: gives each pod an address from the Node's
//! `spec.podCIDR` and its veth before its containers start, releases both
//! when the pod is torn down, and keeps the node's bridge, its routes to
//! the other nodes' pod CIDRs and the masquerade table in step with the
//! Nodes of the cluster (a Node informer, and a full pass every
//! `resync`). The mechanisms are in [`crate::net`].
//!
//! `--pod-network`: `bridge` gives every pod (but `hostNetwork` ones) an
//! interface and waits for the Node's pod CIDR; `none` gives none (pods
//! have loopback only); `auto`, the default, is `bridge` once the Node has
//! a pod CIDR, and lets pods start without a network if none came within
//! `cidr_wait` of the agent's start (a control plane without node IPAM).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use orch_core::controller::{Cache, Informer};
use orch_core::Client;
use rtnetlink::Handle;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::net::masquerade::{self, Masquerade};
use crate::net::routes::{self, PeerRoutes, RouteSet};
use crate::net::veth::{self, PodInterface};
use crate::net::{bridge, cidr, ipam::Ipam, netlink, sysctl, Cidr, NetError};

/// Whether and how pods get a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PodNetworkMode {
    /// A bridge once the Node has a pod CIDR; no network if it has none
    /// soon after the agent started.
    #[default]
    Auto,
    /// Always a bridge: pods wait for the Node's pod CIDR.
    Bridge,
    /// No pod network: pods have loopback only.
    None,
}

/// How the agent's pod network is set up.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Whether pods get a network.
    pub mode: PodNetworkMode,
    /// The node's bridge (at most 15 bytes); the masquerade table is named
    /// after it ([`masquerade::table_name`]).
    pub bridge: String,
    /// Where the network's state lives: `ips/` (one file per pod address)
    /// and `routes.json`.
    pub dir: PathBuf,
    /// Destinations never masqueraded; `None`: every Node's pod CIDR.
    pub cluster_cidr: Option<Cidr>,
    /// In `auto` mode, how long after the agent's start pods wait for the
    /// Node's pod CIDR before they start without a network.
    pub cidr_wait: Duration,
    /// How often the bridge, the routes and the masquerade table are
    /// applied again even if no Node changed (repairs what others removed).
    pub resync: Duration,
    /// Whether the node runs the service proxy (ClusterIP and NodePort
    /// rules); only with a pod network.
    pub service_proxy: bool,
    /// Whether the node serves cluster DNS on its bridge's address (port
    /// 53) and gives pods a resolv.conf pointing at it; only with a pod
    /// network.
    pub cluster_dns: bool,
    /// Where the node's Ingress proxy serves HTTP (`None`: no proxy); only
    /// with a pod network.
    pub ingress: Option<std::net::SocketAddr>,
}

impl NetworkConfig {
    /// The defaults for an agent keeping its state under `data_dir`.
    pub fn new(data_dir: &Path) -> NetworkConfig {
        NetworkConfig {
            mode: PodNetworkMode::Auto,
            bridge: "orch0".to_string(),
            dir: data_dir.join("network"),
            cluster_cidr: None,
            cidr_wait: Duration::from_secs(10),
            resync: Duration::from_secs(30),
            service_proxy: true,
            cluster_dns: true,
            ingress: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 80))),
        }
    }
}

/// The bridge is up with the gateway of this range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ready {
    cidr: Cidr,
    bridge_index: u32,
}

/// The pod network of one agent.
pub struct PodNetwork {
    config: NetworkConfig,
    node_name: String,
    started: Instant,
    ipam: Option<Ipam>,
    host: Option<Handle>,
    ready: watch::Sender<Option<Ready>>,
    /// Why the bridge is not ready, for pods that wait for it.
    last_error: Mutex<Option<String>>,
    /// The cluster's pod ranges (the configured cluster CIDR, or every
    /// Node's pod CIDR), as the last pass over the Nodes found them.
    cluster: watch::Sender<Vec<Cidr>>,
    /// Pods whose interface was checked or made by this agent, and their
    /// addresses.
    attached: Mutex<HashMap<String, Ipv4Addr>>,
    wake: Notify,
}

impl PodNetwork {
    /// Opens the network's state (the address records) and a netlink
    /// connection; nothing on the host changes yet.
    pub fn new(config: NetworkConfig, node_name: &str) -> Result<PodNetwork, NetError> {
        let (ipam, host) = if config.mode == PodNetworkMode::None {
            (None, None)
        } else {
            netlink::check_ifname(&config.bridge)?;
            (
                Some(Ipam::open(config.dir.join("ips"))?),
                Some(netlink::connect()?),
            )
        };
        Ok(PodNetwork {
            config,
            node_name: node_name.to_string(),
            started: Instant::now(),
            ipam,
            host,
            ready: watch::channel(None).0,
            last_error: Mutex::new(None),
            cluster: watch::channel(Vec::new()).0,
            attached: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Waits until the bridge is up (or `stop`); its address, where pods
    /// reach their node.
    pub async fn wait_gateway(&self, stop: &CancellationToken) -> Option<Ipv4Addr> {
        let mut ready = self.ready.subscribe();
        tokio::select! {
            _ = stop.cancelled() => None,
            r = ready.wait_for(Option::is_some) => r.ok().and_then(|r| r.map(|r| cidr::gateway(&r.cidr))),
        }
    }

    /// The `/etc/resolv.conf` of `pod` (Kubernetes' dnsPolicy rules): the
    /// node's cluster DNS once the bridge is up and cluster DNS is on,
    /// else the host's resolvers.
    pub fn resolv_conf(&self, pod: &k8s_openapi::api::core::v1::Pod) -> String {
        let spec = pod.spec.as_ref();
        let cluster_dns: Vec<IpAddr> = self
            .gateway()
            .filter(|_| self.config.cluster_dns && self.config.mode != PodNetworkMode::None)
            .map(IpAddr::V4)
            .into_iter()
            .collect();
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        crate::dns::pod_resolv_conf(
            spec.and_then(|s| s.dns_policy.as_deref()),
            spec.and_then(|s| s.host_network).unwrap_or(false),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            &cluster_dns,
            crate::dns::records::DEFAULT_DOMAIN,
            &host,
            spec.and_then(|s| s.dns_config.as_ref()),
        )
    }

    /// Follows the cluster's pod ranges.
    pub fn cluster_cidrs(&self) -> watch::Receiver<Vec<Cidr>> {
        self.cluster.subscribe()
    }

    /// The address pods reach their node at (the bridge's, the gateway of
    /// the node's pod CIDR), once the bridge is up.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.ready.borrow().map(|r| cidr::gateway(&r.cidr))
    }

    fn attached(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ipv4Addr>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the addresses (and deletes the veths) of pods that are not
    /// on the host any more: every pod but those of `on_host` (uids). Run
    /// once at start, after the runtime has listed the pods it found.
    pub async fn release_gone(&self, on_host: &HashSet<String>) -> Result<(), NetError> {
        let (Some(ipam), Some(host)) = (&self.ipam, &self.host) else {
            return Ok(());
        };
        for (ip, uid) in ipam.retain(|uid| on_host.contains(uid))? {
            tracing::info!(%ip, %uid, "released the address of a pod that is gone");
            if !uid.is_empty() {
                veth::detach(host, &veth::host_name(&uid)).await?;
            }
        }
        Ok(())
    }

    /// The address pod `uid` has on this node, if it has one.
    pub fn pod_ip(&self, uid: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.attached().get(uid) {
            return Some(*ip);
        }
        self.ipam.as_ref()?.lookup(uid).ok().flatten()
    }

    /// Waits until the bridge is ready; `None` when pods are to run
    /// without a network (`auto` mode and no pod CIDR in time).
    async fn wait_ready(&self) -> Result<Option<Ready>, NetError> {
        let mut ready = self.ready.subscribe();
        let deadline = match self.config.mode {
            PodNetworkMode::None => return Ok(None),
            PodNetworkMode::Auto => self.started + self.config.cidr_wait,
            // While the agent starts (the Node informer lists, the bridge
            // is checked) as in `auto`; later a short wait, and the pod is
            // tried again after the retry interval.
            PodNetworkMode::Bridge => {
                (self.started + self.config.cidr_wait).max(Instant::now() + Duration::from_secs(2))
            }
        };
        let waited = tokio::time::timeout_at(deadline, ready.wait_for(Option::is_some)).await;
        if let Ok(Ok(r)) = waited {
            return Ok(*r);
        }
        if self.config.mode == PodNetworkMode::Auto {
            return Ok(None);
        }
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| format!("node {} has no podCIDR yet", self.node_name));
        Err(NetError::NotReady(why))
    }

    /// Gives pod `uid` (whose network namespace is the file `netns`) its
    /// address and interface, unless it has them; returns the address
    /// (`None`: pods run without a network).
    #[tracing::instrument(level = "debug", skip(self, netns))]
    pub async fn ensure_pod(&self, uid: &str, netns: &Path) -> Result<Option<Ipv4Addr>, NetError> {
        let Some(ready) = self.wait_ready().await? else {
            return Ok(None);
        };
        let (Some(ipam), Some(host)) = (&self.ipam, &self.host) else {
            return Ok(None);
        };
        if let Some(ip) = self.attached().get(uid) {
            if cidr::contains(&ready.cidr, *ip) {
                return Ok(Some(*ip));
            }
        }
        let ip = ipam.allocate(&ready.cidr, uid)?;
        let interface = PodInterface {
            netns: netns.to_path_buf(),
            host_name: veth::host_name(uid),
            address: ip,
            prefix: ready.cidr.prefix,
            gateway: cidr::gateway(&ready.cidr),
        };
        veth::attach(host, ready.bridge_index, &interface).await?;
        tracing::info!(%uid, %ip, veth = %interface.host_name, "pod network attached");
        self.attached().insert(uid.to_string(), ip);
        Ok(Some(ip))
    }

    /// Deletes pod `uid`'s veth (if its namespace has not taken it along
    /// already) and releases its address.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn release_pod(&self, uid: &str) -> Result<(), NetError> {
        let (Some(ipam), Some(host)) = (&self.ipam, &self.host) else {
            return Ok(());
        };
        veth::detach(host, &veth::host_name(uid)).await?;
        let released = ipam.release(uid)?;
        self.attached().remove(uid);
        if !released.is_empty() {
            tracing::info!(%uid, ips = ?released, "pod address released");
        }
        Ok(())
    }

    /// Follows the Nodes of the cluster until `stop`: sets up the bridge
    /// once this Node has a pod CIDR, and keeps routes and masquerading in
    /// step. Returns at once in `none` mode.
    pub async fn run(self: Arc<Self>, client: Client, stop: CancellationToken) {
        let Some(host) = self.host.clone() else {
            return;
        };
        let mut routes = match PeerRoutes::open(host.clone(), self.config.dir.join("routes.json")) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading the peer route list; routes are not managed");
                return;
            }
        };
        let me = self.clone();
        let cache = Informer::<Node>::new(client).start(stop.clone(), move |_: &Node| {
            me.wake.notify_one();
        });
        let mut tick = tokio::time::interval(self.config.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut applied = Applied::default();
        loop {
            let refresh = tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => false,
                _ = tick.tick() => true,
            };
            if !cache.is_ready() {
                continue;
            }
            self.sync(&host, &cache, &mut routes, &mut applied, refresh)
                .await;
        }
    }

    /// One pass over the Nodes.
    async fn sync(
        &self,
        host: &Handle,
        nodes: &Cache<Node>,
        routes: &mut PeerRoutes,
        applied: &mut Applied,
        refresh: bool,
    ) {
        let all = nodes.list();
        let own = all
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&self.node_name))
            .and_then(|n| pod_cidr(n));
        let Some(own) = own else {
            return;
        };
        let own = match own {
            Ok(c) => c,
            Err(e) => {
                self.failed(e.to_string());
                return;
            }
        };
        if refresh || self.ready.borrow().map(|r| r.cidr) != Some(own) {
            match self.set_up_bridge(host, own).await {
                Ok(ready) => {
                    *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    self.ready.send_if_modified(|r| {
                        let changed = *r != Some(ready);
                        *r = Some(ready);
                        changed
                    });
                }
                Err(e) => {
                    self.failed(e.to_string());
                    return;
                }
            }
        }

        let local = match routes::local_addresses(host).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing the host's addresses");
                return;
            }
        };
        let mut desired = RouteSet::new();
        let mut cluster: Vec<Cidr> = self.config.cluster_cidr.into_iter().collect();
        for node in &all {
            let Some(Ok(range)) = pod_cidr(node) else {
                continue;
            };
            if self.config.cluster_cidr.is_none() {
                cluster.push(range);
            }
            if node.metadata.name.as_deref() == Some(&self.node_name) || range == own {
                continue;
            }
            // A node on this very host (test clusters) needs no route.
            match internal_ip(node) {
                Some(ip) if !local.contains(&ip) && !ip.is_loopback() => {
                    desired.insert(range, ip);
                }
                _ => {}
            }
        }
        match routes.sync(&desired, refresh).await {
            Ok(report) => {
                for (destination, gateway, error) in report.failed {
                    tracing::warn!(%destination, %gateway, %error, "peer route not set");
                }
            }
            Err(e) => tracing::warn!(error = %e, "syncing peer routes"),
        }
        let mut ranges = cluster.clone();
        ranges.push(own);
        ranges.sort();
        ranges.dedup();
        self.cluster.send_if_modified(|c| {
            let changed = *c != ranges;
            *c = ranges;
            changed
        });
        let rules = Masquerade {
            table: masquerade::table_name(&self.config.bridge),
            pod_cidr: own,
            cluster,
        };
        if refresh || applied.masquerade.as_ref() != Some(&rules) {
            match rules.apply().await {
                Ok(()) => {
                    tracing::debug!(table = %rules.table, "masquerade table applied");
                    applied.masquerade = Some(rules);
                }
                Err(e) => tracing::warn!(error = %e, "masquerade table not applied"),
            }
        }
    }

    async fn set_up_bridge(&self, host: &Handle, range: Cidr) -> Result<Ready, NetError> {
        sysctl::enable_ip_forward()?;
        let bridge_index = bridge::ensure(
            host,
            &self.config.bridge,
            cidr::gateway(&range),
            range.prefix,
        )
        .await?;
        Ok(Ready {
            cidr: range,
            bridge_index,
        })
    }

    fn failed(&self, message: String) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(message.as_str()) {
            tracing::warn!(error = %message, "pod network not ready");
        }
        *last = Some(message);
    }
}

/// What the last pass applied.
#[derive(Default)]
struct Applied {
    masquerade: Option<Masquerade>,
}

/// A Node's pod CIDR, if it has one.
fn pod_cidr(node: &Node) -> Option<Result<Cidr, NetError>> {
    let text = node.spec.as_ref()?.pod_cidr.as_deref()?;
    Some(cidr::parse_pod_cidr(text))
}

/// A Node's InternalIP (IPv4), if it has one.
fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
}
