//! This host as a Node of the cluster: registration (capacity, addresses,
//! nodeInfo, Ready), the heartbeat Lease renewed every few hundred
//! milliseconds, and a Ready status posted again whenever the control plane
//! marked the node otherwise (after the agent was unreachable).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use orch_core::heartbeat::{self, node_is_ready, LEASE_NAMESPACE};
use orch_core::patch::PatchType;
use orch_core::{ApiError, Client};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::host::HostFacts;
use super::AgentConfig;

/// The kubelet version orch's agent reports.
pub const AGENT_VERSION: &str = concat!("v1.33.0-orch-", env!("CARGO_PKG_VERSION"));

/// The container runtime it reports.
pub const RUNTIME_VERSION: &str = "libcontainer://0.7.0";

/// The status of this node: capacity, Ready, addresses, nodeInfo.
pub fn node_status(config: &AgentConfig, facts: &HostFacts, address: &str) -> Value {
    let resources = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{}Ki", facts.memory_bytes / 1024),
        "pods": config.max_pods.to_string(),
        "ephemeral-storage": format!("{}Ki", facts.storage_bytes / 1024),
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": heartbeat::node_conditions(&orch_core::object::now_rfc3339()),
        "addresses": [
            {"type": "InternalIP", "address": address},
            {"type": "Hostname", "address": facts.hostname},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": config.agent_port}},
        "nodeInfo": {
            "machineID": facts.machine_id,
            "systemUUID": facts.machine_id,
            "bootID": facts.boot_id,
            "kernelVersion": facts.kernel,
            "osImage": facts.os_image,
            "containerRuntimeVersion": RUNTIME_VERSION,
            "kubeletVersion": AGENT_VERSION,
            "kubeProxyVersion": AGENT_VERSION,
            "operatingSystem": "linux",
            "architecture": facts.architecture,
        },
    })
}

/// The Node object this agent registers.
pub fn node_object(config: &AgentConfig, facts: &HostFacts, address: &str) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": config.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": facts.architecture,
    });
    for (key, value) in &config.labels {
        labels[key] = json!(value);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.node_name, "labels": labels},
        "spec": {},
        "status": node_status(config, facts, address),
    })
}

/// Registers the Node (or takes over an existing one of the same name,
/// posting a fresh status) and its Lease; returns the Node's uid.
pub async fn register(
    client: &Client,
    config: &AgentConfig,
    facts: &HostFacts,
    address: &str,
) -> Result<String, ApiError> {
    let node: Node = serde_json::from_value(node_object(config, facts, address))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let node = match client.create(None, &node).await {
        Ok(node) => node,
        Err(e) if e.code == 409 => {
            let patch = json!({"status": node_status(config, facts, address)});
            client
                .patch::<Node>(
                    None,
                    &config.node_name,
                    Some("status"),
                    PatchType::Merge,
                    &patch,
                )
                .await?
        }
        Err(e) => return Err(e),
    };
    let uid = node.metadata.uid.unwrap_or_default();
    renew_lease(client, config, Some(&uid)).await?;
    Ok(uid)
}

/// Renews the node's Lease, creating it when it is missing.
pub async fn renew_lease(
    client: &Client,
    config: &AgentConfig,
    node_uid: Option<&str>,
) -> Result<(), ApiError> {
    let name = config.node_name.as_str();
    let duration = config.lease_duration_seconds;
    let patch = json!({"spec": heartbeat::lease_spec(name, duration)});
    match client
        .patch::<Lease>(Some(LEASE_NAMESPACE), name, None, PatchType::Merge, &patch)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(heartbeat::lease(name, node_uid, duration))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            match client.create(Some(LEASE_NAMESPACE), &lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Renews the Lease every `renew_interval`, and every `status_interval`
/// checks the Node: re-registers it if it was deleted, posts Ready again
/// if the control plane marked it otherwise. Runs until `stop`.
pub async fn heartbeat(
    client: Client,
    config: AgentConfig,
    facts: HostFacts,
    address: String,
    mut node_uid: String,
    stop: CancellationToken,
) {
    let mut renew = tokio::time::interval(config.renew_interval);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(config.status_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = renew.tick() => {
                let renewed = tokio::time::timeout(
                    config.renew_interval.max(Duration::from_secs(1)) * 2,
                    renew_lease(&client, &config, Some(&node_uid)),
                ).await;
                match renewed {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(node = %config.node_name, error = %e, "lease renewal failed"),
                    Err(_) => tracing::warn!(node = %config.node_name, "lease renewal timed out"),
                }
            }
            _ = check.tick() => {
                match client.get::<Node>(None, &config.node_name).await {
                    Ok(node) if node_is_ready(&node) => {}
                    Ok(_) => {
                        let patch = json!({"status": {"conditions":
                            heartbeat::node_conditions(&orch_core::object::now_rfc3339())}});
                        if let Err(e) = client
                            .patch::<Node>(None, &config.node_name, Some("status"), PatchType::Merge, &patch)
                            .await
                        {
                            tracing::warn!(error = %e, "posting Ready failed");
                        } else {
                            tracing::info!(node = %config.node_name, "posted Ready again");
                        }
                    }
                    Err(e) if e.code == 404 => {
                        match register(&client, &config, &facts, &address).await {
                            Ok(uid) => {
                                tracing::info!(node = %config.node_name, "node was deleted; registered again");
                                node_uid = uid;
                            }
                            Err(e) => tracing::warn!(error = %e, "registering again failed"),
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "reading the node failed"),
                }
            }
        }
    }
}
