//! The probes of the agent's running containers: a prober per probe of a
//! running container (startup first; liveness and readiness once it has
//! passed), each verdict change waking the pod, and what the verdicts mean
//! for a reconcile (ready, started, or to be restarted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Probe};
use orch_core::controller::{ObjectKey, Queue};
use tokio_util::sync::CancellationToken;

use super::probe::{spawn_prober, ProbeKind, ProbeTarget, ProbeVerdict};
use crate::pod::{PodRuntime, Sandbox};

/// The probers of one running container.
#[derive(Debug)]
struct Probers {
    stop: CancellationToken,
    verdicts: HashMap<ProbeKind, ProbeVerdict>,
}

/// What a container's probes say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Its startup probe passed (or it has none).
    pub started: bool,
    /// It is ready (readiness passed, or no readiness probe), once started.
    pub ready: bool,
    /// Its liveness probe, or its startup probe, failed for good: which one
    /// and why (the container is restarted).
    pub unhealthy: Option<(ProbeKind, String)>,
}

/// Every running container's probers, by container id.
#[derive(Debug, Default, Clone)]
pub struct HealthChecks {
    probers: Arc<Mutex<HashMap<String, Probers>>>,
}

impl HealthChecks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Probers>> {
        self.probers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verdict(&self, id: &str, kind: ProbeKind) -> Option<ProbeVerdict> {
        self.lock()
            .get(id)
            .and_then(|p| p.verdicts.get(&kind).cloned())
    }

    /// Starts the `kind` prober of container `id` unless it runs; its
    /// verdict changes queue `key`.
    #[allow(clippy::too_many_arguments)] // the facts of one prober, all needed to start it
    fn ensure(
        &self,
        runtime: &PodRuntime,
        queue: &Queue<ObjectKey>,
        key: &str,
        id: &str,
        kind: ProbeKind,
        probe: &Probe,
        target: ProbeTarget,
    ) {
        {
            let mut all = self.lock();
            let probers = all.entry(id.to_string()).or_insert_with(|| Probers {
                stop: CancellationToken::new(),
                verdicts: HashMap::new(),
            });
            if probers.verdicts.contains_key(&kind) {
                return;
            }
            let mut rx = spawn_prober(runtime.clone(), probe.clone(), kind, target);
            probers
                .verdicts
                .insert(kind, rx.borrow_and_update().clone());
            let stop = probers.stop.clone();
            let (checks, queue, key, id) =
                (self.clone(), queue.clone(), key.to_string(), id.to_string());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            let verdict = rx.borrow_and_update().clone();
                            if let Some(p) = checks.lock().get_mut(&id) {
                                p.verdicts.insert(kind, verdict);
                            }
                            queue.add(key.clone());
                        }
                    }
                }
            });
        }
    }

    /// The health of running container `id` (`container` of the pod in
    /// `sandbox`), starting the probers it needs now.
    #[allow(clippy::too_many_arguments)] // the facts of one container, all needed to probe it
    pub fn check(
        &self,
        runtime: &PodRuntime,
        queue: &Queue<ObjectKey>,
        key: &str,
        sandbox: &Sandbox,
        id: &str,
        container: &Container,
    ) -> Health {
        let target = || ProbeTarget::new(sandbox, id, container, None);
        let mut started = true;
        if let Some(probe) = &container.startup_probe {
            self.ensure(runtime, queue, key, id, ProbeKind::Startup, probe, target());
            let verdict = self.verdict(id, ProbeKind::Startup);
            started = verdict.as_ref().is_some_and(ProbeVerdict::is_success);
            if !started {
                // Failed `failureThreshold` times in a row: restarted, as
                // the kubelet does.
                let unhealthy = match verdict {
                    Some(ProbeVerdict::Failure(message)) => Some((ProbeKind::Startup, message)),
                    _ => None,
                };
                return Health {
                    started,
                    ready: false,
                    unhealthy,
                };
            }
        }
        let mut unhealthy = None;
        if let Some(probe) = &container.liveness_probe {
            self.ensure(
                runtime,
                queue,
                key,
                id,
                ProbeKind::Liveness,
                probe,
                target(),
            );
            if let Some(ProbeVerdict::Failure(message)) = self.verdict(id, ProbeKind::Liveness) {
                unhealthy = Some((ProbeKind::Liveness, message));
            }
        }
        let mut ready = true;
        if let Some(probe) = &container.readiness_probe {
            self.ensure(
                runtime,
                queue,
                key,
                id,
                ProbeKind::Readiness,
                probe,
                target(),
            );
            ready = self
                .verdict(id, ProbeKind::Readiness)
                .is_some_and(|v| v.is_success());
        }
        Health {
            started,
            ready,
            unhealthy,
        }
    }

    /// Stops the probers of container `id`.
    pub fn forget(&self, id: &str) {
        if let Some(p) = self.lock().remove(id) {
            p.stop.cancel();
        }
    }

    /// Stops the probers of every container of pod `uid` but `keep`.
    pub fn retain(&self, uid: &str, keep: &[String]) {
        let prefix = format!("{uid}_");
        let gone: Vec<String> = self
            .lock()
            .keys()
            .filter(|id| id.starts_with(&prefix) && !keep.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.forget(&id);
        }
    }
}
