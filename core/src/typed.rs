//! Shape validation through the `k8s-openapi` types: an object must
//! deserialize into its kind's struct (wrong types are refused), and under
//! `fieldValidation=Strict` every field must be one the kind declares
//! (found by comparing the object with its typed round trip).

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::resource::Resource;

/// Deserializes `object` as `T`, and returns its fields that `T` does not
/// declare (paths like `spec.replicaz`).
fn unknown_fields<T: DeserializeOwned + Serialize>(
    object: &Value,
) -> Result<Vec<String>, ApiError> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| {
        ApiError::bad_request(format!("the object does not match its kind's schema: {e}"))
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut unknown = Vec::new();
    diff(object, &back, "", &mut unknown);
    Ok(unknown)
}

/// Collects paths present (and non-null) in `input` but absent from `typed`.
fn diff(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(other) => diff(value, other, &child, out),
                    None if value.is_null() || is_empty(value) => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                diff(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// A request body as the API server reads it: JSON, else YAML (400 for
/// an empty body or neither).
pub fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice::<Value>(body))
        .map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON or YAML: {e}"))
        })
}

/// Everything the API server does to a create's body before it goes to
/// the store, short of the store: parsing, the kind's type check,
/// defaulting and validation. What the request fuzz target drives.
pub fn decode_new_object(
    resource: &Resource,
    body: &[u8],
    strict: bool,
) -> Result<Value, ApiError> {
    let mut object = parse_body(body)?;
    if !object.is_object() {
        return Err(ApiError::bad_request("the request body is not an object"));
    }
    object["kind"] = serde_json::json!(resource.kind);
    object["apiVersion"] = serde_json::json!(resource.api_version());
    check(resource, &object, strict)?;
    crate::defaults::apply(resource, &mut object);
    crate::validation::check(resource, &object)?;
    Ok(object)
}

/// Checks `object` against its kind's type; with `strict`, unknown fields
/// are refused too (400, as Kubernetes' strict field validation does).
pub fn check(resource: &Resource, object: &Value, strict: bool) -> Result<(), ApiError> {
    use k8s_openapi::api::networking::v1 as networking;
    use k8s_openapi::api::{apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch};
    use k8s_openapi::api::{
        coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
    };
    let unknown = match resource.kind {
        "Namespace" => unknown_fields::<core::Namespace>(object)?,
        "Node" => unknown_fields::<core::Node>(object)?,
        "Pod" => unknown_fields::<core::Pod>(object)?,
        "Service" => unknown_fields::<core::Service>(object)?,
        "Endpoints" => unknown_fields::<core::Endpoints>(object)?,
        "ConfigMap" => unknown_fields::<core::ConfigMap>(object)?,
        "Secret" => unknown_fields::<core::Secret>(object)?,
        "Event" => unknown_fields::<core::Event>(object)?,
        "ResourceQuota" => unknown_fields::<core::ResourceQuota>(object)?,
        "LimitRange" => unknown_fields::<core::LimitRange>(object)?,
        "Deployment" => unknown_fields::<apps::Deployment>(object)?,
        "ReplicaSet" => unknown_fields::<apps::ReplicaSet>(object)?,
        "StatefulSet" => unknown_fields::<apps::StatefulSet>(object)?,
        "DaemonSet" => unknown_fields::<apps::DaemonSet>(object)?,
        "Job" => unknown_fields::<batch::Job>(object)?,
        "Lease" => unknown_fields::<coordination::Lease>(object)?,
        "EndpointSlice" => unknown_fields::<discovery::EndpointSlice>(object)?,
        "Ingress" => unknown_fields::<networking::Ingress>(object)?,
        "HorizontalPodAutoscaler" => {
            unknown_fields::<autoscaling::HorizontalPodAutoscaler>(object)?
        }
        _ => Vec::new(),
    };
    if strict && !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            fields.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::find_kind;
    use serde_json::json;

    #[test]
    fn wrong_types_are_refused_and_strict_mode_names_unknown_fields() {
        let deploy = find_kind("apps/v1", "Deployment").unwrap();
        let good = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        check(deploy, &good, true).unwrap();
        let mut typo = good.clone();
        typo["spec"]["replicaz"] = json!(3);
        check(deploy, &typo, false).unwrap();
        let err = check(deploy, &typo, true).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("spec.replicaz"), "{}", err.message);
        let mut wrong = good.clone();
        wrong["spec"]["replicas"] = json!("three");
        assert_eq!(check(deploy, &wrong, false).unwrap_err().code, 400);
    }
}
