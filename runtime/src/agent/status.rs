//! A pod's status as the agent reports it, computed from what runs on the
//! host (the runtime's container records and exits), the agent's own notes
//! (why a container is waiting, probe verdicts) and the pod's spec:
//! phase, conditions, container statuses with state, last state and
//! restart count.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::pod::{ContainerInfo, ContainerState, ExitInfo};

/// Why a container is not running, as the agent saw it (reported as its
/// `state.waiting`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `ErrImagePull`, `ImagePullBackOff`, `CreateContainerConfigError`,
    /// `CreateContainerError`, `RunContainerError`, `CrashLoopBackOff`, ...
    pub reason: String,
    /// What went wrong, for people.
    pub message: String,
}

/// The latest and the previous run of each container of a pod.
#[derive(Debug, Default, Clone)]
pub struct Runs {
    /// By container name: the run with the highest attempt number.
    pub latest: BTreeMap<String, ContainerInfo>,
    /// By container name: the run before the latest, if still recorded.
    pub previous: BTreeMap<String, ContainerInfo>,
}

impl Runs {
    /// Sorts a pod's recorded runs by container.
    pub fn of(mut all: Vec<ContainerInfo>) -> Runs {
        all.sort_by_key(|c| c.record.attempt);
        let mut runs = Runs::default();
        for info in all {
            if let Some(older) = runs.latest.insert(info.record.name.clone(), info) {
                runs.previous.insert(older.record.name.clone(), older);
            }
        }
        runs
    }
}

/// What a running container's probes say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probed {
    /// Its startup probe has passed (or it has none).
    pub started: bool,
    /// It is started and ready (readiness passed, or no readiness probe).
    pub ready: bool,
}

/// Everything [`pod_status`] reads besides the pod.
pub struct StatusInputs<'a> {
    /// The pod's runs on the host.
    pub runs: &'a Runs,
    /// Why containers wait, by name.
    pub waiting: &'a HashMap<String, Waiting>,
    /// What the probes say of each running app container, by container
    /// id; a container missing here is neither started nor ready.
    pub probes: &'a HashMap<String, Probed>,
    /// The sandbox exists.
    pub sandbox_ready: bool,
    /// This node's address.
    pub host_ip: &'a str,
    /// The pod's address, once it has one.
    pub pod_ip: Option<&'a str>,
    /// The image id (digest) each image reference resolved to.
    pub image_ids: &'a HashMap<String, String>,
    /// The pod's phase is decided already (`Failed` after an init container
    /// failed for good), else computed here.
    pub forced_phase: Option<&'a str>,
}

/// Milliseconds since the epoch as a Kubernetes time (whole seconds).
pub fn time_of_ms(ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64)
        .ok()
        .and_then(|t| k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).ok())
        .unwrap_or_default()
}

/// `terminated` of a run that ended.
fn terminated(info: &ContainerInfo, exit: &ExitInfo) -> Value {
    let (code, reason, message) = match exit.exit_code {
        _ if exit.oom_killed => (exit.exit_code.unwrap_or(137), "OOMKilled", None),
        Some(0) => (0, "Completed", None),
        Some(code) => (code, "Error", None),
        None => (
            137,
            "ContainerStatusUnknown",
            Some("the container ended while the agent was down; its exit code is unknown"),
        ),
    };
    let mut t = json!({
        "exitCode": code,
        "reason": reason,
        "startedAt": time_of_ms(info.record.started_at_ms),
        "finishedAt": time_of_ms(exit.finished_at_ms),
        "containerID": format!("orch://{}", info.record.id),
    });
    if let Some(signal) = exit.signal {
        t["signal"] = json!(signal);
    }
    if let Some(message) = message {
        t["message"] = json!(message);
    }
    t
}

/// The exit of a run, if it ended.
pub fn exit_of(info: &ContainerInfo) -> Option<&ExitInfo> {
    match &info.state {
        ContainerState::Exited(exit) => Some(exit),
        _ => None,
    }
}

/// True when a run ended with exit code 0.
pub fn succeeded(info: &ContainerInfo) -> bool {
    exit_of(info).is_some_and(|e| e.exit_code == Some(0) && !e.oom_killed)
}

fn container_status(container: &Container, inputs: &StatusInputs<'_>, init: bool) -> Value {
    let image = container.image.clone().unwrap_or_default();
    let latest = inputs.runs.latest.get(&container.name);
    let mut status = json!({
        "name": container.name,
        "image": image,
        "imageID": inputs.image_ids.get(&image).cloned().unwrap_or_default(),
        "ready": false,
        "started": false,
        "restartCount": latest.map_or(0, |l| l.record.attempt),
        "lastState": {},
        "state": {"waiting": {"reason": if init { "PodInitializing" } else { "ContainerCreating" }}},
    });
    if let Some(previous) = inputs.runs.previous.get(&container.name) {
        if let Some(exit) = exit_of(previous) {
            status["lastState"] = json!({"terminated": terminated(previous, exit)});
        }
    }
    if let Some(latest) = latest {
        status["containerID"] = json!(format!("orch://{}", latest.record.id));
        match &latest.state {
            ContainerState::Running { .. } => {
                let probed = inputs
                    .probes
                    .get(&latest.record.id)
                    .copied()
                    .unwrap_or_default();
                status["state"] =
                    json!({"running": {"startedAt": time_of_ms(latest.record.started_at_ms)}});
                status["ready"] = json!(probed.ready && !init);
                // A running init container has no probes: it has started.
                status["started"] = json!(probed.started || init);
            }
            ContainerState::Exited(exit) => {
                let ended = terminated(latest, exit);
                if inputs.waiting.contains_key(&container.name) {
                    // Restarting (after a back-off): the ended run is the last state.
                    status["lastState"] = json!({"terminated": ended});
                } else {
                    status["state"] = json!({"terminated": ended});
                    status["ready"] = json!(init && exit.exit_code == Some(0));
                }
            }
            ContainerState::Created => {}
        }
    }
    if let Some(waiting) = inputs.waiting.get(&container.name) {
        status["state"] =
            json!({"waiting": {"reason": waiting.reason, "message": waiting.message}});
    }
    status
}

fn condition(
    existing: &[Value],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = existing
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(orch_core::object::now_rfc3339()));
    let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let (false, Some(reason)) = (ok, reason) {
        c["reason"] = json!(reason);
    }
    if let (false, Some(message)) = (ok, message) {
        c["message"] = json!(message);
    }
    c
}

/// The pod's phase from its containers' runs, for its restart policy.
pub fn phase(pod: &Pod, runs: &Runs, initialized: bool) -> &'static str {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    if !initialized {
        return "Pending";
    }
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let latest: Vec<Option<&ContainerInfo>> = containers
        .iter()
        .map(|c| runs.latest.get(&c.name))
        .collect();
    if latest.iter().all(Option::is_none) {
        return "Pending";
    }
    let all_ended_for_good = latest.iter().all(|run| {
        run.is_some_and(|run| match exit_of(run) {
            None => false,
            Some(_) => match policy {
                "Never" => true,
                "OnFailure" => succeeded(run),
                _ => false,
            },
        })
    });
    if all_ended_for_good {
        if latest.iter().flatten().all(|run| succeeded(run)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Running"
    }
}

/// The `status` the agent writes for `pod`.
pub fn pod_status(pod: &Pod, inputs: &StatusInputs<'_>) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let existing_status =
        serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or(Value::Null);
    let existing: Vec<Value> = existing_status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let init_containers = spec.init_containers.clone().unwrap_or_default();
    let incomplete: Vec<&str> = init_containers
        .iter()
        .filter(|c| !inputs.runs.latest.get(&c.name).is_some_and(succeeded))
        .map(|c| c.name.as_str())
        .collect();
    let initialized = incomplete.is_empty();
    let phase = inputs
        .forced_phase
        .unwrap_or_else(|| phase(pod, inputs.runs, initialized));
    let container_statuses: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| container_status(c, inputs, false))
        .collect();
    let unready: Vec<&str> = container_statuses
        .iter()
        .filter(|s| s["ready"] != json!(true))
        .filter_map(|s| s["name"].as_str())
        .collect();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let ready = unready.is_empty() && !terminal;
    let (not_ready_reason, not_ready_message) = if terminal {
        ("PodCompleted", None)
    } else {
        (
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let mut conditions = vec![
        condition(
            &existing,
            "PodReadyToStartContainers",
            inputs.sandbox_ready,
            None,
            None,
        ),
        condition(
            &existing,
            "Initialized",
            initialized || terminal && init_containers.is_empty(),
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        ),
        condition(
            &existing,
            "Ready",
            ready,
            Some(not_ready_reason),
            not_ready_message.clone(),
        ),
        condition(
            &existing,
            "ContainersReady",
            ready,
            Some(not_ready_reason),
            not_ready_message,
        ),
    ];
    if let Some(scheduled) = existing.iter().find(|c| c["type"] == "PodScheduled") {
        conditions.push(scheduled.clone());
    }
    let start_time = existing_status
        .get("startTime")
        .filter(|t| !t.is_null())
        .cloned()
        .unwrap_or_else(|| json!(orch_core::object::now_rfc3339()));
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": inputs.host_ip,
        "hostIPs": [{"ip": inputs.host_ip}],
        "startTime": start_time,
        "containerStatuses": container_statuses,
        "qosClass": existing_status.get("qosClass").cloned().unwrap_or(Value::Null),
    });
    if !init_containers.is_empty() {
        status["initContainerStatuses"] = json!(init_containers
            .iter()
            .map(|c| container_status(c, inputs, true))
            .collect::<Vec<_>>());
    }
    if let Some(ip) = inputs.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if status["qosClass"].is_null() {
        status.as_object_mut().map(|s| s.remove("qosClass"));
    }
    status
}

/// True when `desired` says nothing `current` does not already say (so no
/// write is needed).
pub fn unchanged(current: &Value, desired: &Value) -> bool {
    match (current, desired) {
        (Value::Object(c), Value::Object(d)) => d
            .iter()
            .all(|(k, v)| unchanged(c.get(k).unwrap_or(&Value::Null), v)),
        (Value::Array(c), Value::Array(d)) => {
            c.len() == d.len() && c.iter().zip(d).all(|(c, d)| unchanged(c, d))
        }
        (Value::Null, Value::Object(d)) => d.is_empty(),
        (c, d) => c == d,
    }
}
