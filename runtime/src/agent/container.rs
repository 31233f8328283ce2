//! A pod's container as the pod runtime runs it: the Kubernetes
//! `Container` (command, args, working dir, user, resources) turned into a
//! [`ContainerConfig`]. Environment and mounts are resolved elsewhere
//! ([`super::env`], [`super::volumes`]) and passed in.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use orch_core::quantity;

use crate::pod::{BindMount, ContainerConfig};

/// The runtime config of `container` (attempt `attempt`) of a pod with
/// `spec`, with its environment and mounts already resolved. The image is
/// the store's reference the pull resolved to.
pub fn container_config(
    spec: &PodSpec,
    container: &Container,
    image: &str,
    attempt: u32,
    env: Vec<(String, String)>,
    mounts: Vec<BindMount>,
) -> ContainerConfig {
    let security = container.security_context.as_ref();
    let pod_security = spec.security_context.as_ref();
    let resources = container.resources.as_ref();
    let quantity_of = |map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
                       name: &str| {
        map.and_then(|m| m.get(name))
            .and_then(|q| quantity::parse(&q.0))
            .filter(|v| *v > 0)
    };
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    ContainerConfig {
        name: container.name.clone(),
        image: image.to_string(),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        env,
        working_dir: container.working_dir.clone().filter(|d| !d.is_empty()),
        run_as_user: security
            .and_then(|s| s.run_as_user)
            .or_else(|| pod_security.and_then(|s| s.run_as_user))
            .and_then(|u| u32::try_from(u).ok()),
        run_as_group: security
            .and_then(|s| s.run_as_group)
            .or_else(|| pod_security.and_then(|s| s.run_as_group))
            .and_then(|g| u32::try_from(g).ok()),
        // A request defaults to the limit, as the API server's defaulting does.
        cpu_request_millis: quantity_of(requests, "cpu")
            .or_else(|| quantity_of(limits, "cpu"))
            .map(|m| m as u64),
        cpu_limit_millis: quantity_of(limits, "cpu").map(|m| m as u64),
        // Thousandths of a byte to bytes.
        memory_limit_bytes: quantity_of(limits, "memory").map(|m| (m / 1000) as u64),
        attempt,
        mounts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_and_users_come_from_the_container_then_the_pod() {
        let spec: PodSpec = serde_json::from_value(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 50},
            "containers": [{
                "name": "app", "image": "busybox",
                "command": ["sh", "-c"], "args": ["echo hi"],
                "securityContext": {"runAsUser": 7},
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
            }],
        }))
        .unwrap();
        let c = container_config(&spec, &spec.containers[0], "img", 2, vec![], vec![]);
        assert_eq!(c.command, ["sh", "-c"]);
        assert_eq!(c.args, ["echo hi"]);
        assert_eq!(c.run_as_user, Some(7));
        assert_eq!(c.run_as_group, Some(50));
        assert_eq!(c.cpu_request_millis, Some(500));
        assert_eq!(c.cpu_limit_millis, Some(500));
        assert_eq!(c.memory_limit_bytes, Some(64 << 20));
        assert_eq!(c.attempt, 2);
    }
}
