//! Service links: the environment variables Kubernetes gives containers
//! for every Service of their namespace (unless the pod sets
//! `enableServiceLinks: false`), Docker-links style, as the kubelet makes
//! them: for Service `redis-primary` at 10.96.0.11 with port 6379/TCP
//! named `redis`,
//!
//! ```text
//! REDIS_PRIMARY_SERVICE_HOST=10.96.0.11
//! REDIS_PRIMARY_SERVICE_PORT=6379
//! REDIS_PRIMARY_SERVICE_PORT_REDIS=6379
//! REDIS_PRIMARY_PORT=tcp://10.96.0.11:6379
//! REDIS_PRIMARY_PORT_6379_TCP=tcp://10.96.0.11:6379
//! REDIS_PRIMARY_PORT_6379_TCP_PROTO=tcp
//! REDIS_PRIMARY_PORT_6379_TCP_PORT=6379
//! REDIS_PRIMARY_PORT_6379_TCP_ADDR=10.96.0.11
//! ```
//!
//! Services without a ClusterIP (headless, ExternalName) get none. The
//! container's own `env` and `envFrom` win over these.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

/// The service-link variables of the Services of `namespace`, in the
/// order of the Services' names.
pub fn service_links(services: &[Arc<Service>], namespace: &str) -> Vec<(String, String)> {
    let mut selected: Vec<&Service> = services
        .iter()
        .map(Arc::as_ref)
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut env = Vec::new();
    for service in selected {
        let Some(spec) = &service.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let name = env_name(service.metadata.name.as_deref().unwrap_or_default());
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        env.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        env.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for port in ports {
            if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                env.push((
                    format!("{name}_SERVICE_PORT_{}", env_name(port_name)),
                    port.port.to_string(),
                ));
            }
        }
        let url = |port: &k8s_openapi::api::core::v1::ServicePort| {
            let protocol = port
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .to_ascii_lowercase();
            (protocol.clone(), format!("{protocol}://{ip}:{}", port.port))
        };
        env.push((format!("{name}_PORT"), url(first).1));
        for port in ports {
            let (protocol, link) = url(port);
            let prefix = format!(
                "{name}_PORT_{}_{}",
                port.port,
                protocol.to_ascii_uppercase()
            );
            env.push((prefix.clone(), link));
            env.push((format!("{prefix}_PROTO"), protocol));
            env.push((format!("{prefix}_PORT"), port.port.to_string()));
            env.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    env
}

/// A Service or port name as a variable name: upper case, `-` as `_`.
fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ns: &str, name: &str, spec: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn links_name_every_port_of_the_namespaces_services() {
        let services = vec![
            service(
                "prod",
                "redis-primary",
                json!({"clusterIP": "10.96.0.11",
                "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}]}),
            ),
            service(
                "prod",
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            service(
                "other",
                "web",
                json!({"clusterIP": "10.96.0.12", "ports": [{"port": 80}]}),
            ),
        ];
        let env = service_links(&services, "prod");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REDIS_PRIMARY_SERVICE_HOST"), Some("10.96.0.11"));
        assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT_REDIS"), Some("6379"));
        assert_eq!(get("REDIS_PRIMARY_PORT"), Some("tcp://10.96.0.11:6379"));
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_ADDR"), Some("10.96.0.11"));
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_PROTO"), Some("tcp"));
        assert!(get("HEADLESS_SERVICE_HOST").is_none());
        assert!(get("WEB_SERVICE_HOST").is_none(), "another namespace's");
    }
}
