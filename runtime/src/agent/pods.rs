//! Driving each pod bound to this node to its spec, one reconcile at a
//! time per pod: sandbox, image pulls, init containers in order, the app
//! containers, restarts after their back-off, status, and teardown once
//! the pod is deleted (or its object is gone).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use orch_core::controller::informer::{key_of, revision_of};
use orch_core::controller::util::record_event_from;
use orch_core::controller::{Action, Cache, ObjectKey, Queue, ReconcileError};
use orch_core::patch::PatchType;
use orch_core::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::container::container_config;
use super::env::{self, PodFacts};
use super::health::HealthChecks;
use super::network::PodNetwork;
use super::status::{self, exit_of, succeeded, Probed, Runs, StatusInputs, Waiting};
use super::volumes::{self, PreparedVolumes, VolumeConfig};
use super::AgentConfig;
use crate::image::{ImageStore, PullPolicy};
use crate::pod::{BindMount, ContainerState, PodError, PodRuntime, Sandbox, SandboxConfig};

/// The component name of the agent's Events.
const COMPONENT: &str = "kubelet";

/// How long a reconcile waits for its own status write to reach the cache.
const OWN_WRITE_WAIT: Duration = Duration::from_secs(2);

/// What the agent remembers about a pod on this host, by uid, between
/// reconciles. Everything else is read again each time.
#[derive(Debug, Default)]
struct PodNotes {
    /// The pod's `namespace/name`.
    key: ObjectKey,
    /// The grace period to stop it with if its object disappears.
    grace: Duration,
    /// Why a container is not running, by container name.
    waiting: HashMap<String, Waiting>,
    /// Consecutive failed starts (pull, config, create), by container name.
    failures: HashMap<String, u32>,
    /// When the next start of a container may be tried, by name.
    retry_at: HashMap<String, Instant>,
    /// The attempt from which a container's quick restarts are counted
    /// (moved on by a run long enough to reset the back-off).
    backoff_base: HashMap<String, u32>,
    /// Image reference -> image id (`repository@digest`).
    image_ids: HashMap<String, String>,
    /// The pod's volumes as last prepared.
    volumes: Option<PreparedVolumes>,
    /// The last volume set-up failure reported (an Event once per change).
    mount_error: Option<String>,
}

/// The state the pod workers share.
pub struct Shared {
    pub(crate) config: AgentConfig,
    pub(crate) client: Client,
    pub(crate) runtime: PodRuntime,
    images: ImageStore,
    /// Pod addresses and interfaces.
    pub(crate) network: Arc<PodNetwork>,
    host_ip: String,
    pub(crate) queue: Queue<ObjectKey>,
    pub(crate) stop: CancellationToken,
    cache: OnceLock<Cache<Pod>>,
    /// The cluster's Services (for service-link variables), when the node
    /// runs its service proxy.
    services: OnceLock<super::services::ServiceCaches>,
    notes: Mutex<HashMap<String, PodNotes>>,
    /// Ids of the containers whose exit a task is waiting for.
    watched: Arc<Mutex<HashSet<String>>>,
    /// The probers of running containers.
    health: HealthChecks,
    /// hostPath policy and secret placement.
    volume_config: VolumeConfig,
    /// The pod loop's counters.
    pub(crate) loop_metrics: orch_core::controller::MetricsRegistry,
    /// Container log files rotated so far.
    pub(crate) log_rotations: Arc<std::sync::atomic::AtomicU64>,
}

impl Shared {
    /// The shared state of a starting agent.
    #[allow(clippy::too_many_arguments)] // the agent's parts, each made by `Agent::start`
    pub(crate) fn new(
        config: AgentConfig,
        client: Client,
        runtime: PodRuntime,
        images: ImageStore,
        network: Arc<PodNetwork>,
        host_ip: String,
        queue: Queue<ObjectKey>,
        stop: CancellationToken,
    ) -> Shared {
        Shared {
            client,
            runtime,
            images,
            network,
            host_ip,
            queue,
            stop,
            cache: OnceLock::new(),
            services: OnceLock::new(),
            notes: Mutex::new(HashMap::new()),
            watched: Arc::default(),
            health: HealthChecks::default(),
            loop_metrics: orch_core::controller::MetricsRegistry::default(),
            log_rotations: Arc::default(),
            volume_config: VolumeConfig {
                host_paths: VolumeConfig::default()
                    .host_paths
                    .deny(config.runtime.state_dir.clone())
                    .deny(config.runtime.data_dir.clone())
                    .deny(config.runtime.log_dir.clone())
                    .deny(config.image_dir.clone())
                    .deny(config.volume_dir.clone()),
                ..VolumeConfig::default()
            },
            config,
        }
    }

    pub(crate) fn set_cache(&self, cache: Cache<Pod>) {
        let _ = self.cache.set(cache);
    }

    /// An informer event: queue the pod.
    pub(crate) fn pod_changed(&self, pod: &Pod) {
        self.queue.add(key_of(&pod.metadata));
    }

    fn notes(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodNotes>> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes over the pods a previous agent left on the host: remembers
    /// them and watches their running containers' exits.
    pub(crate) async fn adopt(&self) -> Result<(), PodError> {
        for info in self.runtime.recover().await? {
            let config = &info.sandbox.config;
            let key = format!("{}/{}", config.namespace, config.name);
            tracing::info!(pod = %key, uid = %config.uid, containers = info.containers.len(), "adopting pod");
            let runs = Runs::of(info.containers);
            self.watch_exits(&runs, &key);
            self.notes().insert(
                config.uid.clone(),
                PodNotes {
                    key,
                    grace: self.config.orphan_grace,
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    /// The pods on the host: (uid, `namespace/name`).
    pub(crate) fn pods_on_host(&self) -> Vec<(String, ObjectKey)> {
        self.notes()
            .iter()
            .map(|(uid, n)| (uid.clone(), n.key.clone()))
            .collect()
    }

    /// Queues every pod the host holds (after adoption, once the informer
    /// has listed: pods whose objects are gone get no event of their own).
    pub(crate) fn queue_adopted(&self) {
        let keys: Vec<ObjectKey> = self.notes().values().map(|n| n.key.clone()).collect();
        for key in keys {
            self.queue.add(key);
        }
    }

    /// Starts a task per running container not yet watched that queues
    /// the pod when the container exits.
    fn watch_exits(&self, runs: &Runs, key: &str) {
        for run in runs.latest.values() {
            if !matches!(run.state, ContainerState::Running { .. }) {
                continue;
            }
            let id = run.record.id.clone();
            if !self
                .watched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone())
            {
                continue;
            }
            let (runtime, queue, watched, key) = (
                self.runtime.clone(),
                self.queue.clone(),
                self.watched.clone(),
                key.to_string(),
            );
            let stop = self.stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    exit = runtime.wait_exit(&id, Duration::from_secs(30 * 24 * 3600)) => {
                        if let Ok(Some(exit)) = exit {
                            tracing::debug!(container = %id, ?exit, "container exited");
                        }
                        queue.add(key);
                    }
                }
                watched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
        }
    }

    /// Where pod `uid`'s volumes live on the host.
    fn volume_dir(&self, uid: &str) -> std::path::PathBuf {
        self.config.volume_dir.join(uid)
    }

    /// The pod's address: the node's for `hostNetwork` pods, else the
    /// one the pod network gave it (if any).
    fn pod_ip(&self, pod: &Pod) -> Option<String> {
        if host_network(pod) {
            return Some(self.host_ip.clone());
        }
        let uid = pod.metadata.uid.as_deref()?;
        self.network.pod_ip(uid).map(|ip| ip.to_string())
    }

    /// What the agent knows of a pod for its environment and volumes.
    fn facts(&self, pod: &Pod) -> PodFacts {
        let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
        PodFacts {
            pod_ip: self.pod_ip(pod),
            host_ip: Some(self.host_ip.clone()),
            allocatable_cpu_millis: None,
            allocatable_memory_bytes: None,
            service_links: match self.services.get() {
                Some(caches) if links => super::service_env::service_links(
                    &caches.services.list(),
                    env::namespace_of(pod),
                ),
                _ => Vec::new(),
            },
        }
    }

    /// Follows the cluster's Services for service-link variables (set once).
    pub(crate) fn set_services(&self, caches: super::services::ServiceCaches) {
        let _ = self.services.set(caches);
    }

    /// Waits (a few seconds at most) until the Services were listed once,
    /// so a container's service links are complete, as the kubelet does.
    async fn services_listed(&self) {
        if let Some(caches) = self.services.get() {
            let mut services = caches.services.clone();
            let _ = tokio::time::timeout(Duration::from_secs(5), services.wait_until_ready()).await;
        }
    }

    /// Stops and removes everything of pod `uid` on the host: containers,
    /// namespaces, cgroups, then its veth and address, then its volumes.
    async fn teardown(&self, uid: &str, grace: Duration) -> Result<(), ReconcileError> {
        self.runtime
            .teardown_pod(uid, grace, true)
            .await
            .map_err(local)?;
        self.network
            .release_pod(uid)
            .await
            .map_err(|e| ReconcileError::Local(e.to_string()))?;
        volumes::cleanup(&self.volume_dir(uid))
            .map_err(|e| ReconcileError::Local(e.to_string()))?;
        self.notes().remove(uid);
        self.health.retain(uid, &[]);
        Ok(())
    }

    async fn event(&self, pod: &Pod, type_: &str, reason: &str, message: &str) {
        record_event_from(
            &self.client,
            COMPONENT,
            Some(&self.config.node_name),
            pod,
            type_,
            reason,
            message,
        )
        .await;
    }
}

impl super::server::AgentPods for Shared {
    fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        let key = format!("{namespace}/{name}");
        // The current object's uid if the host has it, else any pod of
        // that name still on the host.
        let current = self
            .cache
            .get()
            .and_then(|c| c.get(&key))
            .and_then(|p| p.metadata.uid.clone());
        let notes = self.notes();
        let on_host: Vec<&String> = notes
            .iter()
            .filter(|(_, n)| n.key == key)
            .map(|(uid, _)| uid)
            .collect();
        match current {
            Some(uid) if on_host.contains(&&uid) => Some(uid),
            _ => on_host.first().map(|uid| uid.to_string()),
        }
    }

    fn is_running<'a>(
        &'a self,
        pod_uid: &'a str,
        container: &'a str,
        attempt: u32,
    ) -> futures::future::BoxFuture<'a, bool> {
        Box::pin(async move {
            let id = crate::pod::container_id(pod_uid, container, attempt);
            matches!(
                self.runtime.container(&id).await.map(|c| c.state),
                Ok(ContainerState::Running { .. } | ContainerState::Created)
            )
        })
    }

    fn metrics_text(&self) -> String {
        let mut out = self.loop_metrics.prometheus_text();
        let pods = self.pods_on_host().len();
        out.push_str(&format!(
            "# HELP orch_agent_pods Pods on this node's host.\n# TYPE orch_agent_pods gauge\norch_agent_pods {pods}\n"
        ));
        let rotations = self
            .log_rotations
            .load(std::sync::atomic::Ordering::Relaxed);
        out.push_str(&format!(
            "# HELP orch_agent_log_rotations_total Container log files rotated.\n# TYPE orch_agent_log_rotations_total counter\norch_agent_log_rotations_total {rotations}\n"
        ));
        out
    }

    fn running_container<'a>(
        &'a self,
        pod_uid: &'a str,
        container: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<String, crate::pod::ExecError>> {
        Box::pin(async move {
            let runs = Runs::of(self.runtime.pod_containers(pod_uid).await?);
            let latest = runs.latest.get(container).ok_or_else(|| {
                crate::pod::ExecError::Invalid(format!("no container {container}"))
            })?;
            match latest.state {
                ContainerState::Running { .. } => Ok(latest.record.id.clone()),
                _ => Err(crate::pod::ExecError::NotRunning(latest.record.id.clone())),
            }
        })
    }

    fn exec<'a>(
        &'a self,
        container_id: &'a str,
        request: crate::pod::ExecRequest,
    ) -> futures::future::BoxFuture<'a, Result<crate::pod::ExecProcess, crate::pod::ExecError>>
    {
        Box::pin(self.runtime.exec_streaming(container_id, request))
    }
}

/// Reconciles the pod `key` (`namespace/name`).
pub async fn reconcile(shared: &Shared, key: &str) -> Result<Action, ReconcileError> {
    let Some(cache) = shared.cache.get() else {
        return Err(ReconcileError::Stale("pod informer not started".into()));
    };
    let pod = cache.get(key);
    let current_uid = pod.as_ref().and_then(|p| p.metadata.uid.clone());
    // Pods on the host under this name that are not the current object.
    let orphans: Vec<(String, Duration)> = shared
        .notes()
        .iter()
        .filter(|(uid, notes)| notes.key == key && Some(uid.as_str()) != current_uid.as_deref())
        .map(|(uid, notes)| (uid.clone(), notes.grace))
        .collect();
    for (uid, grace) in orphans {
        tracing::info!(pod = key, %uid, "tearing down a pod whose object is gone");
        shared.teardown(&uid, grace).await?;
    }
    let Some(pod) = pod else {
        return Ok(Action::Done);
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return terminate(shared, cache, &pod).await;
    }
    if matches!(
        orch_core::controller::util::pod_phase(&pod),
        "Succeeded" | "Failed"
    ) {
        return Ok(Action::Done);
    }
    sync(shared, cache, &pod).await
}

/// Whether the pod uses the node's network namespace.
fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn local(e: PodError) -> ReconcileError {
    ReconcileError::Local(e.to_string())
}

fn grace_of(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

/// Stops a deleted pod's containers within its grace period, removes
/// everything it holds on the host, then deletes its object for good.
async fn terminate(
    shared: &Shared,
    cache: &Cache<Pod>,
    pod: &Pod,
) -> Result<Action, ReconcileError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let (namespace, name) = names(pod);
    let grace = grace_of(pod);
    let running: Vec<String> = match shared.runtime.pod_containers(&uid).await {
        Ok(all) => Runs::of(all)
            .latest
            .into_values()
            .filter(|r| matches!(r.state, ContainerState::Running { .. }))
            .map(|r| r.record.name)
            .collect(),
        Err(PodError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(local(e)),
    };
    for container in &running {
        shared
            .event(
                pod,
                "Normal",
                "Killing",
                &format!("Stopping container {container}"),
            )
            .await;
    }
    tracing::info!(pod = %format!("{namespace}/{name}"), grace_s = grace.as_secs(), "stopping pod");
    shared.teardown(&uid, grace).await?;
    let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
    match shared
        .client
        .delete_with::<Pod>(Some(&namespace), &name, &options)
        .await
    {
        Ok(revision) => {
            cache.wait_for_revision(revision, OWN_WRITE_WAIT).await;
            Ok(Action::Done)
        }
        Err(e) if e.code == 404 || e.code == 409 => Ok(Action::Done),
        Err(e) => Err(e.into()),
    }
}

fn names(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Whether a container whose latest run ended is started again.
fn restarts(policy: &str, run: &crate::pod::ContainerInfo) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => !succeeded(run),
        _ => true,
    }
}

/// One pass over a live pod: the next steps towards its spec, then its
/// status.
async fn sync(shared: &Shared, cache: &Cache<Pod>, pod: &Pod) -> Result<Action, ReconcileError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = key_of(&pod.metadata);
    let (namespace, name) = names(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    {
        let mut notes = shared.notes();
        let notes = notes.entry(uid.clone()).or_default();
        notes.key = key.clone();
        notes.grace = grace_of(pod);
    }
    let sandbox = shared
        .runtime
        .create_sandbox_with(
            SandboxConfig {
                uid: uid.clone(),
                name: name.clone(),
                namespace: namespace.clone(),
            },
            host_network(pod),
        )
        .await;
    let mut sandbox_error = sandbox.as_ref().err().map(|e| e.to_string());
    let mut step_wake_network = false;
    if let (Ok(sandbox), false) = (&sandbox, host_network(pod)) {
        if let Err(e) = shared
            .network
            .ensure_pod(&uid, &sandbox.ns_path("net"))
            .await
        {
            let started = shared
                .runtime
                .pod_containers(&uid)
                .await
                .is_ok_and(|c| !c.is_empty());
            if started {
                // A pod whose containers run already (adopted after a
                // restart) keeps running; the next pass checks again.
                tracing::warn!(pod = %key, error = %e, "checking the pod network");
                step_wake_network = true;
            } else {
                sandbox_error = Some(format!("setting up the pod network: {e}"));
            }
        }
    }
    if let (Ok(sandbox), None) = (&sandbox, &sandbox_error) {
        if let Err(e) = sandbox.write_resolv_conf(&shared.network.resolv_conf(pod)) {
            sandbox_error = Some(format!("writing the pod's resolv.conf: {e}"));
        }
    }
    if let Some(e) = &sandbox_error {
        shared
            .event(
                pod,
                "Warning",
                "FailedCreatePodSandBox",
                &format!("Failed to create pod sandbox: {e}"),
            )
            .await;
    }
    let sandbox_ready = sandbox_error.is_none();
    let mut step = Step::default();
    if step_wake_network {
        step.wake(shared.config.retry_interval);
    }
    let mut forced_phase = None;
    let volumes_ready = sandbox_ready && prepare_volumes(shared, pod, &mut step).await;
    let mut read_before = None;
    if volumes_ready {
        let runs = Runs::of(shared.runtime.pod_containers(&uid).await.map_err(local)?);
        shared.watch_exits(&runs, &key);
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            match runs.latest.get(&c.name) {
                Some(run) if succeeded(run) => continue,
                None => {
                    start(shared, pod, c, 0, &mut step).await;
                }
                Some(run) if exit_of(run).is_some() => {
                    if policy == "Never" {
                        forced_phase = Some("Failed");
                    } else {
                        restart(shared, pod, c, run, &mut step).await;
                    }
                }
                Some(_) => {}
            }
            initialized = false;
            break;
        }
        if initialized {
            for c in &spec.containers {
                match runs.latest.get(&c.name) {
                    None => {
                        start(shared, pod, c, 0, &mut step).await;
                    }
                    Some(run) if exit_of(run).is_some() && restarts(&policy, run) => {
                        restart(shared, pod, c, run, &mut step).await
                    }
                    Some(_) => {}
                }
            }
        }
        read_before = Some(runs);
    } else if !sandbox_ready {
        step.wake(shared.config.retry_interval);
    }
    // Read again only if this pass started a container.
    let runs = match read_before {
        Some(runs) if !step.started => runs,
        _ => {
            let runs = match shared.runtime.pod_containers(&uid).await {
                Ok(all) => Runs::of(all),
                Err(PodError::NotFound(_)) => Runs::default(),
                Err(e) => return Err(local(e)),
            };
            shared.watch_exits(&runs, &key);
            runs
        }
    };
    let probes = match &sandbox {
        Ok(sandbox) => check_health(shared, pod, sandbox, &runs, &mut step).await,
        Err(_) => HashMap::new(),
    };
    let pod_ip = shared.pod_ip(pod);
    let desired = {
        let notes = shared.notes();
        let empty = PodNotes::default();
        let notes = notes.get(&uid).unwrap_or(&empty);
        status::pod_status(
            pod,
            &StatusInputs {
                runs: &runs,
                waiting: &notes.waiting,
                probes: &probes,
                sandbox_ready,
                host_ip: &shared.host_ip,
                pod_ip: pod_ip.as_deref(),
                image_ids: &notes.image_ids,
                forced_phase,
            },
        )
    };
    let current = serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or_default();
    if !status::unchanged(&current, &desired) {
        match shared
            .client
            .patch::<Pod>(
                Some(&namespace),
                &name,
                Some("status"),
                PatchType::Merge,
                &json!({"status": desired}),
            )
            .await
        {
            Ok(written) => {
                cache
                    .wait_for_revision(revision_of(&written.metadata), OWN_WRITE_WAIT)
                    .await;
            }
            Err(e) if e.code == 404 => return Ok(Action::Done),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match step.wake_in {
        Some(delay) => Action::RequeueAfter(delay),
        None => Action::Done,
    })
}

/// Prepares (or refreshes) the pod's volumes; false, with a `FailedMount`
/// Event and a retry, when one cannot be set up. Pods with volumes whose
/// contents come from the API look again after `volume_refresh`, so
/// changed ConfigMaps and Secrets reach running containers.
async fn prepare_volumes(shared: &Shared, pod: &Pod, step: &mut Step) -> bool {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let specs = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    if specs.is_empty() {
        return true;
    }
    let prepared = volumes::prepare(
        &shared.client,
        pod,
        &shared.volume_dir(&uid),
        &shared.volume_config,
        &shared.facts(pod),
    )
    .await;
    let projected = specs.iter().any(|v| {
        v.config_map.is_some()
            || v.secret.is_some()
            || v.projected.is_some()
            || v.downward_api.is_some()
    });
    if projected {
        step.wake(shared.config.volume_refresh);
    }
    match prepared {
        Ok(prepared) => {
            let mut notes = shared.notes();
            let notes = notes.entry(uid).or_default();
            notes.volumes = Some(prepared);
            notes.mount_error = None;
            true
        }
        Err(e) => {
            let message = e.to_string();
            let new = {
                let mut notes = shared.notes();
                let notes = notes.entry(uid).or_default();
                let new = notes.mount_error.as_deref() != Some(message.as_str());
                notes.mount_error = Some(message.clone());
                new
            };
            if new {
                tracing::info!(error = %message, "volume set-up failed");
                shared
                    .event(pod, "Warning", volumes::MOUNT_FAILED_REASON, &message)
                    .await;
            }
            step.wake(shared.config.retry_interval);
            false
        }
    }
}

/// Runs the probes of the pod's running app containers: whether each has
/// started and is ready, by container id; a container whose liveness probe
/// failed, or whose startup probe failed for good, is stopped (and then
/// restarted by its policy).
async fn check_health(
    shared: &Shared,
    pod: &Pod,
    sandbox: &Sandbox,
    runs: &Runs,
    step: &mut Step,
) -> HashMap<String, Probed> {
    let uid = sandbox.config.uid.clone();
    let key = key_of(&pod.metadata);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut probes = HashMap::new();
    let mut running = Vec::new();
    for c in &spec.containers {
        let Some(run) = runs.latest.get(&c.name) else {
            continue;
        };
        if !matches!(run.state, ContainerState::Running { .. }) {
            continue;
        }
        let id = run.record.id.clone();
        let health = shared
            .health
            .check(&shared.runtime, &shared.queue, &key, sandbox, &id, c);
        probes.insert(
            id.clone(),
            Probed {
                started: health.started,
                ready: health.ready && health.started,
            },
        );
        if let Some((probe, message)) = health.unhealthy {
            let probe = probe.name();
            shared
                .event(
                    pod,
                    "Warning",
                    "Unhealthy",
                    &format!("{probe} probe failed: {message}"),
                )
                .await;
            shared
                .event(
                    pod,
                    "Normal",
                    "Killing",
                    &format!(
                        "Container {} failed {} probe, will be restarted",
                        c.name,
                        probe.to_lowercase()
                    ),
                )
                .await;
            shared.health.forget(&id);
            if let Err(e) = shared.runtime.stop_container(&id, grace_of(pod)).await {
                tracing::warn!(container = %id, error = %e, "stopping an unhealthy container");
            }
            // Its exit watcher queues the pod; restart follows the policy.
            step.wake(std::time::Duration::from_millis(10));
            continue;
        }
        running.push(id);
    }
    shared.health.retain(&uid, &running);
    probes
}

/// What a pass decided about when to look again.
#[derive(Debug, Default)]
struct Step {
    wake_in: Option<Duration>,
    /// A container was started (the runs read before are out of date).
    started: bool,
}

impl Step {
    fn wake(&mut self, delay: Duration) {
        let delay = delay.max(Duration::from_millis(10));
        self.wake_in = Some(self.wake_in.map_or(delay, |d| d.min(delay)));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A container whose latest run ended: start its next run once the
/// back-off is over, else say it is backing off.
async fn restart(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    run: &crate::pod::ContainerInfo,
    step: &mut Step,
) {
    let Some(exit) = exit_of(run) else { return };
    let uid = run.record.pod_uid.clone();
    let ran = Duration::from_millis(exit.finished_at_ms.saturating_sub(run.record.started_at_ms));
    let backoff = shared.config.restart_backoff;
    let (delay, newly_backing_off) = {
        let mut notes = shared.notes();
        let notes = notes.entry(uid.clone()).or_default();
        if ran >= backoff.reset {
            notes
                .backoff_base
                .insert(container.name.clone(), run.record.attempt);
        }
        let base = notes
            .backoff_base
            .get(&container.name)
            .copied()
            .unwrap_or(0);
        let quick_runs = run.record.attempt + 1 - base.min(run.record.attempt);
        let delay = backoff.delay(quick_runs, ran);
        let waited = Duration::from_millis(now_ms().saturating_sub(exit.finished_at_ms));
        if waited >= delay {
            (None, false)
        } else {
            let (namespace, name) = names(pod);
            let waiting = Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    delay.as_secs(),
                    container.name,
                    name,
                    namespace,
                    uid
                ),
            };
            let newly = notes.waiting.get(&container.name) != Some(&waiting);
            notes.waiting.insert(container.name.clone(), waiting);
            (Some(delay - waited), newly)
        }
    };
    match delay {
        Some(left) => {
            if newly_backing_off {
                shared
                    .event(
                        pod,
                        "Warning",
                        "BackOff",
                        &format!("Back-off restarting failed container {}", container.name),
                    )
                    .await;
            }
            step.wake(left);
        }
        None => {
            let attempt = run.record.attempt + 1;
            if start(shared, pod, container, attempt, step).await && attempt >= 2 {
                prune(shared, &uid, &container.name, attempt - 2).await;
            }
        }
    }
}

/// Removes an old run of a container (and its log): only the latest and
/// the one before are kept (`kubectl logs --previous`).
async fn prune(shared: &Shared, uid: &str, name: &str, attempt: u32) {
    let id = crate::pod::container_id(uid, name, attempt);
    match shared.runtime.container(&id).await {
        Ok(info) => {
            if let Err(e) = shared.runtime.remove_container(&id).await {
                tracing::warn!(container = %id, error = %e, "removing an old run");
            }
            let _ = std::fs::remove_file(&info.record.log_path);
        }
        Err(PodError::NotFound(_)) => {}
        Err(e) => tracing::warn!(container = %id, error = %e, "reading an old run"),
    }
}

/// Records a failed start: the container waits with `reason`, and the
/// next try comes after a growing delay.
async fn start_failed(
    shared: &Shared,
    pod: &Pod,
    container: &str,
    reason: &str,
    message: String,
    step: &mut Step,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let delay = {
        let mut notes = shared.notes();
        let notes = notes.entry(uid).or_default();
        let failures = notes.failures.entry(container.to_string()).or_insert(0);
        *failures += 1;
        let doublings = (*failures - 1).min(16);
        let delay = shared
            .config
            .retry_interval
            .checked_mul(1 << doublings)
            .unwrap_or(shared.config.restart_backoff.max)
            .min(shared.config.restart_backoff.max);
        notes
            .retry_at
            .insert(container.to_string(), Instant::now() + delay);
        notes.waiting.insert(
            container.to_string(),
            Waiting {
                reason: reason.to_string(),
                message: message.clone(),
            },
        );
        delay
    };
    tracing::info!(container, reason, %message, retry_in_ms = delay.as_millis() as u64, "container start failed");
    shared.event(pod, "Warning", "Failed", &message).await;
    step.wake(delay);
}

/// Starts run `attempt` of a container: pull, environment, mounts, create
/// and start. Returns whether it started.
async fn start(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    attempt: u32,
    step: &mut Step,
) -> bool {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = container.name.as_str();
    let retry_at = shared
        .notes()
        .get(&uid)
        .and_then(|n| n.retry_at.get(name).copied());
    if let Some(at) = retry_at {
        let now = Instant::now();
        if at > now {
            step.wake(at - now);
            return false;
        }
    }
    let image = container.image.clone().unwrap_or_default();
    let policy = match PullPolicy::for_container(container.image_pull_policy.as_deref(), &image) {
        Ok(p) => p,
        Err(e) => {
            start_failed(
                shared,
                pod,
                name,
                "InvalidImageName",
                format!("Failed to apply default image tag {image:?}: {e}"),
                step,
            )
            .await;
            return false;
        }
    };
    let pulled = match shared
        .images
        .pull(&image, policy, &shared.config.registry)
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            let failures = shared
                .notes()
                .get(&uid)
                .and_then(|n| n.failures.get(name).copied())
                .unwrap_or(0);
            let reason = if failures == 0 {
                "ErrImagePull"
            } else {
                "ImagePullBackOff"
            };
            start_failed(
                shared,
                pod,
                name,
                reason,
                format!("Failed to pull image {image:?}: {e}"),
                step,
            )
            .await;
            return false;
        }
    };
    let pulled_message = if pulled.contacted_registry {
        format!("Successfully pulled image {image:?}")
    } else {
        format!("Container image {image:?} already present on machine")
    };
    let repository = pulled
        .image
        .reference
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(pulled.image.reference.as_str(), |(repo, _)| repo);
    let image_id = format!("{repository}@{}", pulled.image.digest);
    shared
        .notes()
        .entry(uid.clone())
        .or_default()
        .image_ids
        .insert(image.clone(), image_id);
    if attempt == 0 || pulled.contacted_registry {
        shared.event(pod, "Normal", "Pulled", &pulled_message).await;
    }
    let (env, mounts) = match inputs(shared, pod, container).await {
        Ok(inputs) => inputs,
        Err(message) => {
            start_failed(
                shared,
                pod,
                name,
                "CreateContainerConfigError",
                message,
                step,
            )
            .await;
            return false;
        }
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let mut config = container_config(
        &spec,
        container,
        &pulled.image.reference,
        attempt,
        env,
        mounts,
    );
    config.command = env::expand_args(&config.command, &config.env);
    config.args = env::expand_args(&config.args, &config.env);
    match shared.runtime.run_container(&uid, config).await {
        Ok(info) => {
            {
                let mut notes = shared.notes();
                let notes = notes.entry(uid.clone()).or_default();
                notes.waiting.remove(name);
                notes.failures.remove(name);
                notes.retry_at.remove(name);
            }
            step.started = true;
            tracing::info!(container = %info.record.id, "container started");
            shared
                .event(
                    pod,
                    "Normal",
                    "Started",
                    &format!("Started container {name}"),
                )
                .await;
            true
        }
        Err(e) => {
            let reason = match e {
                PodError::InvalidConfig(_) => "CreateContainerError",
                _ => "RunContainerError",
            };
            start_failed(shared, pod, name, reason, format!("Error: {e}"), step).await;
            false
        }
    }
}

/// The environment and mounts of a container, resolved now; the message
/// of a `CreateContainerConfigError` when they cannot be.
async fn inputs(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
) -> Result<(Vec<(String, String)>, Vec<BindMount>), String> {
    shared.services_listed().await;
    let env = env::container_env(&shared.client, pod, container, &shared.facts(pod))
        .await
        .map_err(|e| e.to_string())?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let prepared = shared
        .notes()
        .get(&uid)
        .and_then(|n| n.volumes.clone())
        .unwrap_or_default();
    let mounts = volumes::mounts_for(container, &prepared).map_err(|e| e.to_string())?;
    Ok((env, mounts))
}
