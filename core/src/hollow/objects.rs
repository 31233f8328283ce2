//! The objects a hollow node writes: its Node, its Lease, and the status
//! of a pod it "runs". Plain JSON in the Kubernetes shapes, with fake but
//! well-formed addresses, images ids and container ids.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::HollowConfig;
pub use crate::heartbeat::{lease, lease_spec, node_conditions, now_micro};
use crate::object;

/// The kubelet version hollow nodes report.
pub const KUBELET_VERSION: &str = "v1.33.0-orch-hollow";

/// The label every hollow Node carries (value `"true"`).
pub const HOLLOW_LABEL: &str = "orch.dev/hollow";

/// The fake InternalIP of the hollow node with index `index`
/// (172.16.0.0/12).
pub fn host_ip(index: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + 1 + (index % 0xF_FFFE) as u32)
}

/// The `n`-th pod address of a node: inside its `spec.podCIDR` when IPAM
/// gave it one, else in 100.64.0.0/10, a /24 per node index.
pub fn pod_ip(pod_cidr: Option<&str>, index: u64, n: u64) -> Ipv4Addr {
    if let Some((base, prefix)) = pod_cidr.and_then(parse_cidr) {
        let size = 1u64 << (32 - u32::from(prefix.min(30)));
        // Skip the network address and .1 (the bridge), and the broadcast.
        let offset = 2 + n % (size - 3).max(1);
        return Ipv4Addr::from(u32::from(base).wrapping_add(offset as u32));
    }
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (((index % 0x4000) as u32) << 8);
    Ipv4Addr::from(base + 2 + (n % 253) as u32)
}

fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if prefix > 32 {
        return None;
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Some((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

/// The status of a hollow node.
pub fn node_status(config: &HollowConfig, name: &str, index: u64) -> Value {
    let now = object::now_rfc3339();
    let resources = json!({
        "cpu": config.cpu, "memory": config.memory, "pods": config.pods.to_string(),
        "ephemeral-storage": "100Gi",
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": node_conditions(&now),
        "addresses": [
            {"type": "InternalIP", "address": host_ip(index).to_string()},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": format!("{index:032x}"),
            "systemUUID": format!("{index:032x}"),
            "bootID": format!("{index:032x}"),
            "kernelVersion": "6.0.0-hollow",
            "osImage": "orch hollow node",
            "containerRuntimeVersion": "hollow://1.0.0",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    })
}

/// The Node object a hollow node registers.
pub fn node(config: &HollowConfig, name: &str, index: u64) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        (format!("node-role.kubernetes.io/{}", config.node_role)): "",
        HOLLOW_LABEL: "true",
    });
    for (key, value) in &config.labels {
        labels[key] = json!(value);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": node_status(config, name, index),
    })
}

/// A pod's status once its hollow node has "started" it: Running, every
/// container running and ready, every condition True (keeping the time a
/// condition that was already True turned so).
pub fn running_status(pod: &Pod, host_ip: &str, pod_ip: &str) -> Value {
    let now = object::now_rfc3339();
    let existing = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    let condition = |type_: &str| {
        let since = existing
            .and_then(|all| all.iter().find(|c| c.type_ == type_ && c.status == "True"))
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| json!(now));
        json!({"type": type_, "status": "True", "lastProbeTime": null, "lastTransitionTime": since})
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let spec = pod.spec.as_ref();
    let statuses = |containers: Option<&Vec<k8s_openapi::api::core::v1::Container>>| -> Vec<Value> {
        containers
            .into_iter()
            .flatten()
            .map(|c| {
                let image = c.image.clone().unwrap_or_default();
                let started_at = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|all| all.iter().find(|s| s.name == c.name))
                    .and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.as_ref())
                    .and_then(|t| serde_json::to_value(t).ok())
                    .unwrap_or_else(|| json!(now));
                json!({
                    "name": c.name,
                    "image": image,
                    "imageID": format!("hollow://{image}"),
                    "containerID": format!("hollow://{uid}/{}", c.name),
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": started_at}},
                })
            })
            .collect()
    };
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let pod_ip = if host_network { host_ip } else { pod_ip };
    json!({
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": pod.status.as_ref().and_then(|s| s.start_time.as_ref())
                .and_then(|t| serde_json::to_value(t).ok())
                .unwrap_or_else(|| json!(now)),
            "conditions": [
                condition("PodReadyToStartContainers"),
                condition("Initialized"),
                condition("Ready"),
                condition("ContainersReady"),
                condition("PodScheduled"),
            ],
            "containerStatuses": statuses(spec.map(|s| &s.containers)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_come_from_the_node_range() {
        assert_eq!(
            pod_ip(Some("10.244.3.0/24"), 7, 0).to_string(),
            "10.244.3.2"
        );
        assert_eq!(
            pod_ip(Some("10.244.3.0/24"), 7, 252).to_string(),
            "10.244.3.254"
        );
        assert_eq!(
            pod_ip(Some("10.244.3.0/24"), 7, 253).to_string(),
            "10.244.3.2"
        );
        assert_eq!(pod_ip(None, 1, 0).to_string(), "100.64.1.2");
        assert_eq!(host_ip(0).to_string(), "172.16.0.1");
        assert_eq!(host_ip(300).to_string(), "172.16.1.45");
    }

    #[test]
    fn lease_times_have_microseconds() {
        let t = now_micro();
        assert_eq!(t.len(), "2026-01-01T00:00:00.000000Z".len(), "{t}");
    }
}
