//! NodePorts: every port of a `NodePort` or `LoadBalancer` Service gets a
//! port of the node-port range (30000-32767) on every node, allocated by
//! the API server as ClusterIPs are ([`crate::service_ips`]): each port in
//! use has a key in the store naming its Service, created and deleted in
//! the same transaction as the Service's own write, so no port is handed
//! out twice and none leaks. A Service may use one port number for two
//! protocols (TCP and UDP of the same port, as Kubernetes allows).

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use serde_json::Value;

use crate::error::{ApiError, FieldCause};

/// Kubernetes' default node-port range.
pub const RANGE: RangeInclusive<u16> = 30000..=32767;

/// Where the allocation of node port `port` is kept.
pub fn allocation_key(port: u16) -> String {
    format!("/orch/allocations/nodeports/{port}")
}

/// Whether a Service's ports get node ports.
pub fn needs_node_ports(service: &Value) -> bool {
    matches!(
        service["spec"]["type"].as_str(),
        Some("NodePort" | "LoadBalancer")
    )
}

/// The node ports a Service holds (each number once).
pub fn held(service: &Value) -> BTreeSet<u16> {
    if !needs_node_ports(service) {
        return BTreeSet::new();
    }
    ports(service)
        .filter_map(|p| p["nodePort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
}

fn ports(service: &Value) -> impl Iterator<Item = &Value> {
    service["spec"]["ports"].as_array().into_iter().flatten()
}

/// Whether `port` is in the node-port range.
pub fn in_range(port: i64) -> bool {
    u16::try_from(port).is_ok_and(|p| RANGE.contains(&p))
}

/// Gives every port of a Service that needs node ports and has none a
/// random one of the range (another try picks others); returns the
/// numbers it picked.
pub fn fill_missing(service: &mut Value) -> BTreeSet<u16> {
    let mut picked = BTreeSet::new();
    if !needs_node_ports(service) {
        return picked;
    }
    let mut taken = held(service);
    if let Some(list) = service["spec"]["ports"].as_array_mut() {
        for port in list {
            if port["nodePort"].as_u64().is_some_and(|p| p != 0) {
                continue;
            }
            let number = loop {
                let candidate = rand::random_range(RANGE);
                if taken.insert(candidate) {
                    break candidate;
                }
            };
            port["nodePort"] = number.into();
            picked.insert(number);
        }
    }
    picked
}

/// What an update keeps of the stored Service when the new one leaves it
/// out, as Kubernetes does: the ClusterIP(s), and the node port of each
/// port that is still there (same port number and protocol) while the
/// type still needs node ports. A type that no longer needs node ports
/// drops them.
pub fn carry_over(old: &Value, new: &mut Value) {
    for field in ["clusterIP", "clusterIPs"] {
        let missing = new["spec"][field].is_null()
            || new["spec"][field].as_str() == Some("")
            || new["spec"][field].as_array().is_some_and(|a| a.is_empty());
        let old_value = &old["spec"][field];
        if missing && !old_value.is_null() && new["spec"].is_object() {
            new["spec"][field] = old_value.clone();
        }
    }
    let keep = needs_node_ports(new);
    let old_ports: Vec<Value> = ports(old).cloned().collect();
    if let Some(list) = new["spec"]["ports"].as_array_mut() {
        for port in list {
            if !keep {
                if let Some(map) = port.as_object_mut() {
                    map.remove("nodePort");
                }
                continue;
            }
            if port["nodePort"].as_u64().is_some_and(|p| p != 0) {
                continue;
            }
            let same = |p: &&Value| {
                p["port"] == port["port"]
                    && p["protocol"].as_str().unwrap_or("TCP")
                        == port["protocol"].as_str().unwrap_or("TCP")
            };
            if let Some(n) = old_ports.iter().find(same).map(|p| p["nodePort"].clone()) {
                if n.as_u64().is_some_and(|p| p != 0) {
                    port["nodePort"] = n;
                }
            }
        }
    }
}

/// The message Kubernetes gives for a node port in use.
pub fn already_allocated(service: &Value, name: &str, port: u16) -> ApiError {
    let index = ports(service)
        .position(|p| p["nodePort"].as_u64() == Some(u64::from(port)))
        .unwrap_or(0);
    ApiError::invalid(
        "Service",
        name,
        vec![FieldCause {
            field: format!("spec.ports[{index}].nodePort"),
            message: format!("Invalid value: {port}: provided port is already allocated"),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_node_ports_are_filled_from_the_range_once_each() {
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [
            {"port": 80, "protocol": "TCP", "nodePort": 30080},
            {"port": 81, "protocol": "TCP"},
            {"port": 82, "protocol": "TCP"},
        ]}});
        let picked = fill_missing(&mut svc);
        assert_eq!(picked.len(), 2);
        let held = held(&svc);
        assert_eq!(held.len(), 3);
        assert!(held.contains(&30080));
        assert!(held.iter().all(|p| RANGE.contains(p)));
        let mut plain = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        assert!(fill_missing(&mut plain).is_empty());
        assert!(plain["spec"]["ports"][0].get("nodePort").is_none());
    }

    #[test]
    fn updates_keep_what_they_leave_out() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let mut new = json!({"spec": {"type": "NodePort", "ports": [
            {"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP"}]}});
        carry_over(&old, &mut new);
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.7");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        assert!(new["spec"]["ports"][1].get("nodePort").is_none());

        let mut to_cluster_ip = old.clone();
        to_cluster_ip["spec"]["type"] = json!("ClusterIP");
        carry_over(&old, &mut to_cluster_ip);
        assert!(to_cluster_ip["spec"]["ports"][0].get("nodePort").is_none());
        assert!(held(&to_cluster_ip).is_empty());
    }
}
