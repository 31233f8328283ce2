//! The HorizontalPodAutoscaler loop (`autoscaling/v2`): scales a
//! Deployment, ReplicaSet or StatefulSet on the CPU use of its pods.
//!
//! - Metrics source: each pod's annotation `orch.dev/cpu-usage-millicores`
//!   ([`CPU_USAGE_ANNOTATION`]), the pod's current CPU use in millicores as
//!   a decimal integer, written by the node agent that runs the pod (the
//!   real agent or a hollow node). orch has no metrics API; only pods that
//!   are Ready and carry the annotation are measured.
//! - Metrics: `Resource` metrics on `cpu`, with a `Utilization` target
//!   (`sum(usage) / sum(requests)` over the measured pods, every one of
//!   which must request CPU) or an `AverageValue` target. No metrics means
//!   CPU at 80 % utilization, as in Kubernetes. Other metric types are
//!   ignored; with several metrics the largest proposal wins.
//! - Proposal: `ceil(measured pods · utilization / target)`, unless the
//!   ratio is within [`TOLERANCE`] of 1, then the current replicas.
//!   Proposals are stabilized (`spec.behavior.scaleDown`/`scaleUp`
//!   `.stabilizationWindowSeconds`, default 300 s down and 0 s up: the
//!   highest proposal of the down window bounds a scale-down) and clamped
//!   to `minReplicas` (default 1) .. `maxReplicas`. Scaling policies
//!   (`Pods`/`Percent` per period) are not applied yet.
//! - Replicas are written through the target's `scale` subresource (a
//!   merge patch of `spec.replicas`). A target at 0 replicas is left alone
//!   (`ScalingActive` False, `ScalingDisabled`).
//! - Status: `currentReplicas`, `desiredReplicas`, `currentMetrics`,
//!   `lastScaleTime`, `observedGeneration`, and the conditions
//!   `AbleToScale`, `ScalingActive`, `ScalingLimited`.
//! - Each autoscaler is looked at again every [`sync_period`] (Kubernetes:
//!   15 s), and at once when it changes. Recommendations live in memory, so
//!   a new leader starts its stabilization windows afresh.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::informer::{key_of, Cache, ObjectKey};
use super::util;
use super::{Action, LoopContext, LoopSettings, ReconcileError};
use crate::client::Client;
use crate::error::ApiError;
use crate::patch::PatchType;
use crate::quantity;

/// The pod annotation the node agent writes with the pod's CPU use, in
/// millicores.
pub const CPU_USAGE_ANNOTATION: &str = "orch.dev/cpu-usage-millicores";

/// A usage ratio this close to 1 changes nothing (as in Kubernetes).
pub const TOLERANCE: f64 = 0.1;

/// Default scale-down stabilization window (as in Kubernetes).
pub const DEFAULT_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);

/// How often every autoscaler is evaluated: 30 node monitor periods, which
/// is 15 s (Kubernetes' `--horizontal-pod-autoscaler-sync-period`) with the
/// default settings and proportionally shorter in tests that shorten the
/// node monitor period.
pub fn sync_period(settings: &LoopSettings) -> Duration {
    settings.node_monitor_period * 30
}

/// The `scale` subresource of `K`, for the typed client: the path is
/// `K`'s, the answer an `autoscaling/v1` Scale.
struct ScaleOf<K>(#[allow(dead_code)] Scale, PhantomData<K>);

impl<K: k8s_openapi::Resource> k8s_openapi::Resource for ScaleOf<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<'de, K> Deserialize<'de> for ScaleOf<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Scale::deserialize(d).map(|s| ScaleOf(s, PhantomData))
    }
}

/// What the autoscaler needs of its target.
struct Target {
    replicas: i32,
    status_replicas: i32,
    selector: LabelSelector,
}

type Recommendations = Arc<Mutex<HashMap<ObjectKey, Vec<(Instant, i32)>>>>;

struct Shared {
    client: Client,
    hpas: Cache<HorizontalPodAutoscaler>,
    pods: Cache<Pod>,
    period: Duration,
    recommendations: Recommendations,
}

/// Runs the horizontal pod autoscaler loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let hpas = util::watch_primary::<HorizontalPodAutoscaler>(&ctx, &queue);
    let pods = ctx.informer::<Pod>().start(ctx.stop.clone(), |_: &Pod| {});
    if !util::wait_ready(&ctx.stop, &[&hpas, &pods]).await {
        return;
    }
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        hpas,
        pods,
        period: sync_period(&ctx.settings),
        recommendations: Arc::default(),
    });
    // Autoscalers announced before the pods were cached are looked at again.
    for hpa in shared.hpas.list() {
        queue.add(key_of(&hpa.metadata));
    }
    ctx.run("horizontal-pod-autoscaler", queue, move |key| {
        let shared = shared.clone();
        async move { reconcile(&shared, key).await }
    })
    .await;
}

async fn get_target<K>(client: &Client, namespace: &str, name: &str) -> Result<Target, ApiError>
where
    K: k8s_openapi::Resource + DeserializeOwned + serde::Serialize,
{
    let object: serde_json::Value =
        serde_json::to_value(client.get::<K>(Some(namespace), name).await?)
            .map_err(|e| ApiError::internal(e.to_string()))?;
    let selector = serde_json::from_value(object["spec"]["selector"].clone()).unwrap_or_default();
    let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
    Ok(Target {
        replicas,
        status_replicas: object["status"]["replicas"].as_i64().unwrap_or(0) as i32,
        selector,
    })
}

async fn scale<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Result<(), ApiError>
where
    K: k8s_openapi::Resource,
{
    client
        .patch::<ScaleOf<K>>(
            Some(namespace),
            name,
            Some("scale"),
            PatchType::Merge,
            &json!({"spec": {"replicas": replicas}}),
        )
        .await
        .map(|_| ())
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> HorizontalPodAutoscalerCondition {
    HorizontalPodAutoscalerCondition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: None,
    }
}

/// `next` with each condition's transition time kept from `previous` when
/// its status did not change.
fn with_transition_times(
    next: Vec<HorizontalPodAutoscalerCondition>,
    previous: &[HorizontalPodAutoscalerCondition],
    now: &Time,
) -> Vec<HorizontalPodAutoscalerCondition> {
    next.into_iter()
        .map(|mut c| {
            let old = previous.iter().find(|p| p.type_ == c.type_);
            c.last_transition_time = match old {
                Some(old) if old.status == c.status => old.last_transition_time.clone(),
                _ => Some(now.clone()),
            };
            c
        })
        .collect()
}

/// One metric's proposal and what was measured.
struct Proposal {
    replicas: i32,
    status: MetricStatus,
    description: String,
}

fn cpu_request(pod: &Pod) -> Option<i128> {
    let containers = &pod.spec.as_ref()?.containers;
    let mut total = 0;
    for c in containers {
        let request = c.resources.as_ref()?.requests.as_ref()?.get("cpu")?;
        total += quantity::parse(&request.0)?;
    }
    Some(total)
}

fn cpu_usage(pod: &Pod) -> Option<i128> {
    let value = pod
        .metadata
        .annotations
        .as_ref()?
        .get(CPU_USAGE_ANNOTATION)?;
    value.trim().parse::<i128>().ok().filter(|v| *v >= 0)
}

/// The proposal of one `cpu` Resource metric for `pods`, with `current`
/// replicas.
fn propose_cpu(
    pods: &[&Pod],
    current: i32,
    utilization_target: Option<i32>,
    average_target: Option<i128>,
) -> Result<Proposal, String> {
    let measured: Vec<(&Pod, i128)> = pods
        .iter()
        .filter_map(|p| cpu_usage(p).map(|u| (*p, u)))
        .collect();
    if measured.is_empty() {
        return Err(format!(
            "no ready pod of the target reports its CPU use (annotation {CPU_USAGE_ANNOTATION})"
        ));
    }
    let count = measured.len() as i128;
    let usage: i128 = measured.iter().map(|(_, u)| u).sum();
    let average = usage / count;
    if let Some(target) = utilization_target {
        let mut requests = 0;
        for (pod, _) in &measured {
            match cpu_request(pod) {
                Some(r) => requests += r,
                None => {
                    return Err(format!(
                        "missing request for cpu in pod {}",
                        pod.metadata.name.as_deref().unwrap_or("")
                    ))
                }
            }
        }
        if requests <= 0 || target <= 0 {
            return Err("CPU requests or the utilization target are zero".into());
        }
        let utilization = (usage * 100 / requests) as i32;
        let ratio = f64::from(utilization) / f64::from(target);
        let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (ratio * count as f64).ceil() as i32
        };
        Ok(Proposal {
            replicas,
            status: resource_status(Some(utilization), average),
            description: format!(
                "cpu resource utilization (percentage of request) {utilization}% (target {target}%)"
            ),
        })
    } else if let Some(target) = average_target.filter(|t| *t > 0) {
        let ratio = average as f64 / target as f64;
        let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (usage as f64 / target as f64).ceil() as i32
        };
        Ok(Proposal {
            replicas,
            status: resource_status(None, average),
            description: format!(
                "cpu resource average value {} (target {})",
                quantity::format(average),
                quantity::format(target)
            ),
        })
    } else {
        Err("the cpu metric has neither an averageUtilization nor an averageValue target".into())
    }
}

fn resource_status(utilization: Option<i32>, average: i128) -> MetricStatus {
    MetricStatus {
        type_: "Resource".into(),
        resource: Some(ResourceMetricStatus {
            name: "cpu".into(),
            current: MetricValueStatus {
                average_utilization: utilization,
                average_value: Some(Quantity(quantity::format(average))),
                value: None,
            },
        }),
        ..Default::default()
    }
}

/// Applies the stabilization windows to `proposal`: a scale-up goes no
/// higher than the lowest proposal of the up window, a scale-down no
/// lower than the highest proposal of the down window.
fn stabilize(
    history: &mut Vec<(Instant, i32)>,
    now: Instant,
    proposal: i32,
    current: i32,
    up_window: Duration,
    down_window: Duration,
) -> i32 {
    history.push((now, proposal));
    let longest = up_window.max(down_window);
    history.retain(|(at, _)| now.duration_since(*at) <= longest);
    let within = |window: Duration| {
        history
            .iter()
            .filter(move |(at, _)| now.duration_since(*at) <= window)
            .map(|(_, r)| *r)
    };
    let up_limit = within(up_window).min().unwrap_or(proposal);
    let down_limit = within(down_window).max().unwrap_or(proposal);
    let mut stabilized = current;
    if stabilized < up_limit {
        stabilized = up_limit;
    }
    if stabilized > down_limit {
        stabilized = down_limit;
    }
    stabilized
}

async fn reconcile(shared: &Shared, key: ObjectKey) -> Result<Action, ReconcileError> {
    let Some(hpa) = shared.hpas.get(&key) else {
        shared
            .recommendations
            .lock()
            .expect("recommendations lock")
            .remove(&key);
        return Ok(Action::Done);
    };
    if hpa.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let spec = hpa.spec.clone().unwrap_or_default();
    let status = hpa.status.clone().unwrap_or_default();
    let namespace = hpa
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let target_ref = &spec.scale_target_ref;
    let now = util::now_time();
    let previous_conditions = status.conditions.clone().unwrap_or_default();
    let mut next = HorizontalPodAutoscalerStatus {
        observed_generation: hpa.metadata.generation,
        ..status.clone()
    };

    let target = match target_ref.kind.as_str() {
        "Deployment" => {
            get_target::<Deployment>(&shared.client, &namespace, &target_ref.name).await
        }
        "ReplicaSet" => {
            get_target::<ReplicaSet>(&shared.client, &namespace, &target_ref.name).await
        }
        "StatefulSet" => {
            get_target::<StatefulSet>(&shared.client, &namespace, &target_ref.name).await
        }
        other => Err(ApiError::bad_request(format!(
            "scaling a {other} is not supported (Deployment, ReplicaSet or StatefulSet)"
        ))),
    };
    let target = match target {
        Ok(target) => target,
        Err(e) if e.code >= 500 => return Err(e.into()),
        Err(e) => {
            let message = format!(
                "the HPA controller was unable to get the target's current scale: {}",
                e.message
            );
            let already = previous_conditions.iter().any(|c| {
                c.type_ == "AbleToScale"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("FailedGetScale")
            });
            if !already {
                util::record_event(
                    &shared.client,
                    hpa.as_ref(),
                    "Warning",
                    "FailedGetScale",
                    &message,
                )
                .await;
            }
            next.conditions = Some(with_transition_times(
                vec![condition("AbleToScale", false, "FailedGetScale", message)],
                &previous_conditions,
                &now,
            ));
            write_status(shared, &hpa, &status, next).await?;
            return Ok(Action::RequeueAfter(shared.period));
        }
    };

    let current = target.replicas;
    next.current_replicas = Some(target.status_replicas);
    let min_replicas = spec.min_replicas.unwrap_or(1).max(1);
    let max_replicas = spec.max_replicas.max(min_replicas);
    let mut conditions = vec![condition(
        "AbleToScale",
        true,
        "ReadyForNewScale",
        "recommended size matches current size".into(),
    )];
    if current == 0 {
        conditions.push(condition(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        ));
        next.desired_replicas = 0;
        next.conditions = Some(with_transition_times(
            conditions,
            &previous_conditions,
            &now,
        ));
        write_status(shared, &hpa, &status, next).await?;
        return Ok(Action::RequeueAfter(shared.period));
    }

    let pods: Vec<Arc<Pod>> = shared
        .pods
        .list()
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace.as_str())
                && util::is_pod_active(p)
                && util::is_pod_ready(p)
                && util::selector_matches(Some(&target.selector), p.metadata.labels.as_ref())
        })
        .collect();
    let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let metrics = spec.metrics.clone().unwrap_or_default();
    let mut proposals: Vec<Result<Proposal, String>> = Vec::new();
    if metrics.is_empty() {
        proposals.push(propose_cpu(&pods, current, Some(80), None));
    }
    for metric in &metrics {
        let Some(resource) = metric
            .resource
            .as_ref()
            .filter(|_| metric.type_ == "Resource")
        else {
            continue;
        };
        if resource.name != "cpu" {
            proposals.push(Err(format!(
                "the {} resource metric is not measured by orch",
                resource.name
            )));
            continue;
        }
        let target = &resource.target;
        let average = target
            .average_value
            .as_ref()
            .and_then(|q| quantity::parse(&q.0));
        let utilization = if target.type_ == "Utilization" {
            target.average_utilization
        } else {
            None
        };
        proposals.push(propose_cpu(&pods, current, utilization, average));
    }
    let best = proposals
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .max_by_key(|p| p.replicas);
    let Some(best) = best else {
        let message = proposals
            .iter()
            .find_map(|p| p.as_ref().err().cloned())
            .unwrap_or_else(|| "no metric orch can measure (only Resource cpu)".into());
        conditions.push(condition(
            "ScalingActive",
            false,
            "FailedGetResourceMetric",
            message,
        ));
        next.desired_replicas = current;
        next.current_metrics = None;
        next.conditions = Some(with_transition_times(
            conditions,
            &previous_conditions,
            &now,
        ));
        write_status(shared, &hpa, &status, next).await?;
        return Ok(Action::RequeueAfter(shared.period));
    };
    conditions.push(condition(
        "ScalingActive",
        true,
        "ValidMetricFound",
        format!(
            "the HPA was able to successfully calculate a replica count from {}",
            best.description
        ),
    ));

    let window = |rules: Option<&k8s_openapi::api::autoscaling::v2::HPAScalingRules>,
                  default: Duration| {
        rules
            .and_then(|r| r.stabilization_window_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(default)
    };
    let behavior = spec.behavior.as_ref();
    let up_window = window(behavior.and_then(|b| b.scale_up.as_ref()), Duration::ZERO);
    let down_window = window(
        behavior.and_then(|b| b.scale_down.as_ref()),
        DEFAULT_SCALE_DOWN_WINDOW,
    );
    let stabilized = {
        let mut all = shared.recommendations.lock().expect("recommendations lock");
        let history = all.entry(key.clone()).or_default();
        stabilize(
            history,
            Instant::now(),
            best.replicas,
            current,
            up_window,
            down_window,
        )
    };
    let desired = stabilized.clamp(min_replicas, max_replicas);
    conditions.push(if stabilized > max_replicas {
        condition(
            "ScalingLimited",
            true,
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count".into(),
        )
    } else if stabilized < min_replicas {
        condition(
            "ScalingLimited",
            true,
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count".into(),
        )
    } else {
        condition(
            "ScalingLimited",
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range".into(),
        )
    });

    if desired != current {
        let scaled = match target_ref.kind.as_str() {
            "Deployment" => {
                scale::<Deployment>(&shared.client, &namespace, &target_ref.name, desired).await
            }
            "ReplicaSet" => {
                scale::<ReplicaSet>(&shared.client, &namespace, &target_ref.name, desired).await
            }
            _ => scale::<StatefulSet>(&shared.client, &namespace, &target_ref.name, desired).await,
        };
        match scaled {
            Ok(()) => {
                let reason = if desired > current { "above" } else { "below" };
                util::record_event(
                    &shared.client,
                    hpa.as_ref(),
                    "Normal",
                    "SuccessfulRescale",
                    &format!(
                        "New size: {desired}; reason: {} {reason} target",
                        best.description
                    ),
                )
                .await;
                conditions[0] = condition(
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                );
                next.last_scale_time = Some(now.clone());
            }
            Err(e) if e.code >= 500 || e.code == 409 => return Err(e.into()),
            Err(e) => {
                conditions[0] = condition(
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    format!(
                        "the HPA controller was unable to update the target scale: {}",
                        e.message
                    ),
                );
            }
        }
    }
    next.desired_replicas = desired;
    next.current_metrics = Some(vec![best.status.clone()]);
    next.conditions = Some(with_transition_times(
        conditions,
        &previous_conditions,
        &now,
    ));
    write_status(shared, &hpa, &status, next).await?;
    Ok(Action::RequeueAfter(shared.period))
}

async fn write_status(
    shared: &Shared,
    hpa: &HorizontalPodAutoscaler,
    previous: &HorizontalPodAutoscalerStatus,
    next: HorizontalPodAutoscalerStatus,
) -> Result<(), ReconcileError> {
    if &next != previous {
        util::patch_status(
            &shared.client,
            &shared.hpas,
            hpa,
            &next,
            Duration::from_secs(5),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_down_waits_for_the_window() {
        let mut history = Vec::new();
        let t0 = Instant::now();
        let window = Duration::from_secs(300);
        assert_eq!(stabilize(&mut history, t0, 6, 3, Duration::ZERO, window), 6);
        // A lower proposal inside the window keeps the earlier high one.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(stabilize(&mut history, t1, 2, 6, Duration::ZERO, window), 6);
        // Once the high proposal has left the window, scale down.
        let t2 = t0 + Duration::from_secs(400);
        assert_eq!(stabilize(&mut history, t2, 2, 6, Duration::ZERO, window), 2);
    }
}
