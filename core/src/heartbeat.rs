//! What every node agent writes to say it is alive, real or hollow: the
//! Node's health conditions and its Lease in `kube-node-lease`.

use serde_json::{json, Value};

use crate::object;

/// The namespace of the nodes' heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Now, as a MicroTime (microseconds), e.g. a Lease's renewTime.
pub fn now_micro() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_microsecond(micros)
        .ok()
        .and_then(|t| k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", t).ok())
        .unwrap_or_else(object::now_rfc3339)
}

/// Whether a Node's Ready condition is True.
pub fn node_is_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|all| all.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Ready condition (and the pressure conditions) of a healthy node.
pub fn node_conditions(now: &str) -> Value {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    json!([
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// The spec of a node's Lease, renewed now.
pub fn lease_spec(name: &str, duration_seconds: i32) -> Value {
    json!({
        "holderIdentity": name,
        "leaseDurationSeconds": duration_seconds,
        "renewTime": now_micro(),
    })
}

/// The Lease of node `name` in `kube-node-lease`, owned by its Node.
pub fn lease(name: &str, node_uid: Option<&str>, duration_seconds: i32) -> Value {
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
        "spec": lease_spec(name, duration_seconds),
    });
    if let Some(uid) = node_uid {
        lease["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]);
    }
    lease
}
