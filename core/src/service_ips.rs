//! ClusterIPs: every Service that needs one (not `ExternalName`, not
//! headless) gets an address from the service CIDR, allocated by the API
//! server. Each address in use has a key in the store naming its Service;
//! the key is created in the same transaction as the Service and deleted
//! in the same transaction as its removal, so no address is ever handed
//! out twice and none leaks.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::error::{ApiError, FieldCause};

/// Kubernetes' default service CIDR.
pub const DEFAULT_SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);

/// Where the allocation of `ip` is kept.
pub fn allocation_key(ip: Ipv4Addr) -> String {
    format!("/orch/allocations/serviceips/{ip}")
}

/// Whether a Service object needs a ClusterIP.
pub fn needs_cluster_ip(service: &Value) -> bool {
    service["spec"]["type"].as_str() != Some("ExternalName")
        && service["spec"]["clusterIP"].as_str() != Some("None")
}

/// The ClusterIP a Service holds (an allocated address), if any.
pub fn held_ip(service: &Value) -> Option<Ipv4Addr> {
    service["spec"]["clusterIP"].as_str()?.parse().ok()
}

/// What a Service asks for: a given address (checked against the CIDR)
/// or any.
pub fn requested_ip(service: &Value, name: &str) -> Result<Option<Ipv4Addr>, ApiError> {
    let Some(text) = service["spec"]["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let invalid = |message: String| {
        ApiError::invalid(
            "Service",
            name,
            vec![FieldCause {
                field: "spec.clusterIP".into(),
                message,
            }],
        )
    };
    let ip: Ipv4Addr = text.parse().map_err(|_| {
        invalid(format!(
            "Invalid value: \"{text}\": must be a valid IP address"
        ))
    })?;
    let (base, prefix) = DEFAULT_SERVICE_CIDR;
    if !usable(ip, base, prefix) {
        return Err(invalid(format!(
            "Invalid value: \"{text}\": provided IP is not in the valid range. The range of valid IPs is {base}/{prefix}"
        )));
    }
    Ok(Some(ip))
}

/// Whether `ip` is a host address of `base/prefix` other than the first
/// (kept for the API's own Service, as Kubernetes does).
fn usable(ip: Ipv4Addr, base: Ipv4Addr, prefix: u8) -> bool {
    let size = 1u32 << (32 - prefix);
    let offset = u32::from(ip).wrapping_sub(u32::from(base));
    offset > 1 && offset < size - 1
}

/// A random candidate address of the service CIDR.
pub fn random_ip() -> Ipv4Addr {
    let (base, prefix) = DEFAULT_SERVICE_CIDR;
    let size = 1u32 << (32 - prefix);
    Ipv4Addr::from(u32::from(base) + rand::random_range(2..size - 1))
}

/// The message Kubernetes gives for an address in use.
pub fn already_allocated(name: &str, ip: Ipv4Addr) -> ApiError {
    ApiError::invalid(
        "Service",
        name,
        vec![FieldCause {
            field: "spec.clusterIPs".into(),
            message: format!(
                "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"
            ),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_checked_against_the_cidr() {
        let svc = |ip: &str| json!({"spec": {"clusterIP": ip}});
        assert_eq!(requested_ip(&svc(""), "a").unwrap(), None);
        assert_eq!(
            requested_ip(&svc("10.96.3.4"), "a").unwrap(),
            Some(Ipv4Addr::new(10, 96, 3, 4))
        );
        assert_eq!(requested_ip(&svc("10.200.0.1"), "a").unwrap_err().code, 422);
        assert_eq!(requested_ip(&svc("10.96.0.1"), "a").unwrap_err().code, 422);
        assert_eq!(requested_ip(&svc("nope"), "a").unwrap_err().code, 422);
        for _ in 0..1000 {
            let ip = random_ip();
            assert!(usable(ip, Ipv4Addr::new(10, 96, 0, 0), 12), "{ip}");
        }
        assert!(!needs_cluster_ip(&json!({"spec": {"clusterIP": "None"}})));
        assert!(!needs_cluster_ip(
            &json!({"spec": {"type": "ExternalName"}})
        ));
        assert!(needs_cluster_ip(&json!({"spec": {"type": "NodePort"}})));
    }
}
