//! Admission at create: LimitRange defaults and bounds for containers, then
//! ResourceQuota counts and compute totals per namespace. Refusals are 403
//! Forbidden with the numbers, as Kubernetes words them.
//!
//! Quota is checked against a read of the namespace taken after reading
//! the namespace's quota lock (a store key); the create's transaction
//! requires the lock unchanged and bumps it, so of two creates racing for
//! the last unit of a quota one fails its guard, is admitted again on what
//! the other wrote, and is refused.

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::quantity::{self, Milli};
use crate::registry::{ListOptions, Registry};
use crate::resource::{self, Resource};

/// The compute totals of a pod: requests and limits of CPU and memory,
/// summed over its containers (init containers count by their maximum).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Compute {
    requests_cpu: Milli,
    requests_memory: Milli,
    limits_cpu: Milli,
    limits_memory: Milli,
}

fn container_value(container: &Value, section: &str, name: &str) -> Milli {
    container["resources"][section][name]
        .as_str()
        .map(String::from)
        .or_else(|| {
            container["resources"][section][name]
                .as_f64()
                .map(|n| n.to_string())
        })
        .and_then(|q| quantity::parse(&q))
        .unwrap_or(0)
}

fn pod_compute(pod: &Value) -> Compute {
    let sum = |section: &str, name: &str| -> Milli {
        let regular: Milli = pod["spec"]["containers"]
            .as_array()
            .map(|cs| cs.iter().map(|c| container_value(c, section, name)).sum())
            .unwrap_or(0);
        let init: Milli = pod["spec"]["initContainers"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| container_value(c, section, name))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        regular.max(init)
    };
    Compute {
        requests_cpu: sum("requests", "cpu"),
        requests_memory: sum("requests", "memory"),
        limits_cpu: sum("limits", "cpu"),
        limits_memory: sum("limits", "memory"),
    }
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// Applies LimitRange container defaults to a pod and checks min/max.
fn apply_limit_ranges(ranges: &[Value], pod: &mut Value) -> Result<(), ApiError> {
    for range in ranges {
        let Some(limits) = range["spec"]["limits"].as_array() else {
            continue;
        };
        for limit in limits.iter().filter(|l| l["type"] == "Container") {
            for list in ["initContainers", "containers"] {
                let Some(containers) = pod["spec"][list].as_array_mut() else {
                    continue;
                };
                for container in containers {
                    for (section, defaults) in [
                        ("limits", &limit["default"]),
                        ("requests", &limit["defaultRequest"]),
                    ] {
                        if let Some(defaults) = defaults.as_object() {
                            for (name, value) in defaults {
                                if container["resources"][section][name].is_null() {
                                    container["resources"][section][name] = value.clone();
                                }
                            }
                        }
                    }
                    // A request defaults to the limit, as in Kubernetes.
                    if let Some(lims) = container["resources"]["limits"].as_object().cloned() {
                        for (name, value) in lims {
                            if container["resources"]["requests"][&name].is_null() {
                                container["resources"]["requests"][&name] = value;
                            }
                        }
                    }
                    let cname = container["name"].as_str().unwrap_or("").to_string();
                    for (bound, is_max) in [(&limit["max"], true), (&limit["min"], false)] {
                        let Some(bound) = bound.as_object() else {
                            continue;
                        };
                        for (name, q) in bound {
                            let Some(b) = q.as_str().and_then(quantity::parse) else {
                                continue;
                            };
                            let section = if is_max { "limits" } else { "requests" };
                            let value = container_value(container, section, name);
                            let missing = container["resources"][section][name].is_null();
                            if is_max && (missing || value > b) {
                                return Err(ApiError::forbidden(format!(
                                    "maximum {name} usage per Container is {}, but limit is {} (container {cname})",
                                    quantity::format(b),
                                    if missing { "unset".into() } else { quantity::format(value) }
                                )));
                            }
                            if !is_max && value < b {
                                return Err(ApiError::forbidden(format!(
                                    "minimum {name} usage per Container is {}, but request is {} (container {cname})",
                                    quantity::format(b),
                                    quantity::format(value)
                                )));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The quota key that counts objects of `resource` (`pods`, `count/deployments.apps`).
fn count_keys(resource: &Resource) -> Vec<String> {
    let mut keys = vec![if resource.group.is_empty() {
        format!("count/{}", resource.plural)
    } else {
        format!("count/{}.{}", resource.plural, resource.group)
    }];
    if resource.group.is_empty()
        && matches!(
            resource.plural,
            "pods" | "services" | "configmaps" | "secrets" | "resourcequotas"
        )
    {
        keys.push(resource.plural.to_string());
    }
    keys
}

/// The quota lock of a namespace as admission read it: a create under a
/// quota must find it at `revision` and bump it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaLock {
    /// The store key.
    pub key: String,
    /// Its mod revision when admission read it (0: never written).
    pub revision: i64,
}

/// The store key of `namespace`'s quota lock.
pub fn quota_lock_key(namespace: &str) -> String {
    format!("/orch/locks/quota/{namespace}")
}

/// Admits `object` for creation in `namespace`: may change it (defaults).
/// Returns the quota lock the create must hold when a quota applies.
pub async fn admit_create(
    registry: &Registry,
    resource: &Resource,
    namespace: &str,
    object: &mut Value,
) -> Result<Option<QuotaLock>, ApiError> {
    let all = ListOptions {
        serializable: true,
        ..ListOptions::default()
    };
    // Read before the quotas and the usage: they are at least as new.
    let lock_key = quota_lock_key(namespace);
    let lock = QuotaLock {
        revision: registry.local_mod_revision(&lock_key).await?,
        key: lock_key,
    };
    if resource.kind == "Pod" {
        let limit_ranges = resource::find("", "v1", "limitranges").expect("served");
        let ranges = registry
            .list(limit_ranges, Some(namespace), &all)
            .await?
            .items;
        apply_limit_ranges(&ranges, object)?;
    }
    let quotas_resource = resource::find("", "v1", "resourcequotas").expect("served");
    let quotas = registry
        .list(quotas_resource, Some(namespace), &all)
        .await?
        .items;
    if quotas.is_empty() {
        return Ok(None);
    }
    let counted = count_keys(resource);
    let existing = registry.list(resource, Some(namespace), &all).await?.items;
    let count = existing
        .iter()
        .filter(|o| !(resource.kind == "Pod" && is_terminal(o)))
        .count() as i128;
    let (used, new) = if resource.kind == "Pod" {
        let used = existing
            .iter()
            .filter(|p| !is_terminal(p))
            .map(pod_compute)
            .fold(Compute::default(), |a, b| Compute {
                requests_cpu: a.requests_cpu + b.requests_cpu,
                requests_memory: a.requests_memory + b.requests_memory,
                limits_cpu: a.limits_cpu + b.limits_cpu,
                limits_memory: a.limits_memory + b.limits_memory,
            });
        (used, pod_compute(object))
    } else {
        (Compute::default(), Compute::default())
    };
    for quota in &quotas {
        let Some(hard) = quota["spec"]["hard"].as_object() else {
            continue;
        };
        let qname = quota["metadata"]["name"].as_str().unwrap_or("");
        for (key, limit) in hard {
            let Some(limit) = limit
                .as_str()
                .map(String::from)
                .or_else(|| limit.as_i64().map(|n| n.to_string()))
                .and_then(|l| quantity::parse(&l))
            else {
                continue;
            };
            let (used_now, requested) = if counted.contains(key) {
                (count * 1000, 1000)
            } else if resource.kind == "Pod" {
                match key.as_str() {
                    "requests.cpu" | "cpu" => (used.requests_cpu, new.requests_cpu),
                    "requests.memory" | "memory" => (used.requests_memory, new.requests_memory),
                    "limits.cpu" => (used.limits_cpu, new.limits_cpu),
                    "limits.memory" => (used.limits_memory, new.limits_memory),
                    _ => continue,
                }
            } else {
                continue;
            };
            if used_now + requested > limit {
                return Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: exceeded quota: {qname}, requested: {key}={}, used: {key}={}, limited: {key}={}",
                    resource.plural,
                    crate::object::name(object),
                    quantity::format(requested),
                    quantity::format(used_now),
                    quantity::format(limit)
                )));
            }
        }
    }
    Ok(Some(lock))
}

/// Status of a ResourceQuota as Kubernetes reports it: hard limits echoed.
pub fn quota_status(quota: &mut Value) {
    if quota["status"]["hard"].is_null() {
        quota["status"] = json!({"hard": quota["spec"]["hard"].clone()});
    }
}
