//! The three patch types kubectl sends: JSON patch (RFC 6902), JSON merge
//! patch (RFC 7386) and Kubernetes strategic merge patch (lists of known
//! fields merged by key, `$patch` / `$retainKeys` / `$setElementOrder` /
//! `$deleteFromPrimitiveList` directives).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The patch type named by a request's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// Recognises a `Content-Type` header value.
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies a patch of `kind` to `target`.
pub fn apply(kind: PatchType, target: &mut Value, patch: &[u8]) -> Result<(), ApiError> {
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(target, &ops).map_err(|e| {
                ApiError::invalid_patch(format!("the JSON patch cannot be applied: {e}"))
            })
        }
        PatchType::Merge => {
            let patch = parse_object(patch)?;
            json_patch::merge(target, &patch);
            Ok(())
        }
        PatchType::Strategic => {
            let patch = parse_object(patch)?;
            strategic_merge(target, &patch);
            Ok(())
        }
        PatchType::Apply => {
            // The merge of server-side apply, without field ownership (see
            // `managed_fields::apply` for the whole of it): the applied
            // configuration's fields win; lists merge by key.
            let config = parse_apply_config(patch)?;
            strategic_merge(target, &config);
            Ok(())
        }
    }
}

/// Reads a server-side apply configuration: a JSON or YAML object.
pub fn parse_apply_config(body: &[u8]) -> Result<Value, ApiError> {
    let config: Value = serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice(body))
        .map_err(|e| ApiError::bad_request(format!("invalid apply configuration: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    Ok(config)
}

fn parse_object(patch: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    Ok(value)
}

/// The merge key of the list field `field`, judged by the field name and by
/// the shape of its items (the `ports` of a container and of a service differ).
pub(crate) fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "hostAliases" => Some("ip"),
        "ownerReferences" => Some("uid"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" => match sample {
            Some(item) if item.get("containerPort").is_some() => Some("containerPort"),
            _ => Some("port"),
        },
        _ => None,
    }
}

/// Fields whose lists of plain values merge as sets.
pub(crate) fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Applies a strategic merge patch.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch_map.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> =
        patch_map
            .get("$retainKeys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            });
    let target_map = target.as_object_mut().expect("made an object above");
    if let Some(retain) = retain {
        target_map.retain(|k, _| retain.contains(k) || patch_map.contains_key(k));
    }
    for (key, value) in patch_map {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target_map.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(obj) if obj.get("$patch").and_then(Value::as_str) == Some("delete") => {
                target_map.remove(key);
            }
            Value::Object(_) => {
                let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value);
            }
            Value::Array(items) => {
                let sample = items.iter().find(|i| i.is_object());
                let existing = target_map.get_mut(key);
                match (merge_key(key, sample), existing) {
                    (Some(merge_key), Some(Value::Array(current))) => {
                        merge_list(current, items, merge_key)
                    }
                    (None, Some(Value::Array(current))) if is_set_list(key) => {
                        for item in items {
                            if !current.contains(item) {
                                current.push(item.clone());
                            }
                        }
                    }
                    _ => {
                        let cleaned: Vec<Value> = items
                            .iter()
                            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                            .map(strip_directives)
                            .collect();
                        target_map.insert(key.clone(), Value::Array(cleaned));
                    }
                }
            }
            other => {
                target_map.insert(key.clone(), other.clone());
            }
        }
    }
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_list(current: &mut Vec<Value>, patch: &[Value], key: &str) {
    for item in patch {
        let Some(id) = item.get(key) else {
            current.push(strip_directives(item));
            continue;
        };
        let position = current.iter().position(|c| c.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut current[i], item),
            (None, true) => {}
            (None, false) => current.push(strip_directives(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_env_by_name() {
        let mut target = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]
        }});
        strategic_merge(&mut target, &patch);
        assert_eq!(target["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(
            target["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(target["spec"]["containers"][1]["image"], "b:1");
        assert!(target["spec"].get("$setElementOrder/containers").is_none());
    }

    #[test]
    fn strategic_merge_deletes_with_null_and_patch_delete() {
        let mut target = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"metadata": {"labels": {"a": null}},
            "spec": {"containers": [{"name": "b", "$patch": "delete"}]}});
        strategic_merge(&mut target, &patch);
        assert_eq!(target["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(target["spec"]["containers"], json!([{"name": "a"}]));
    }

    #[test]
    fn json_and_merge_patches_apply_and_bad_ones_are_refused() {
        let mut target = json!({"spec": {"replicas": 1}, "metadata": {"labels": {"a": "1"}}});
        apply(
            PatchType::Json,
            &mut target,
            br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
        )
        .unwrap();
        assert_eq!(target["spec"]["replicas"], 3);
        apply(
            PatchType::Merge,
            &mut target,
            br#"{"metadata":{"labels":{"a":null,"b":"2"}}}"#,
        )
        .unwrap();
        assert_eq!(target["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(
            apply(PatchType::Json, &mut target, b"{not json")
                .unwrap_err()
                .code,
            400
        );
        let err = apply(
            PatchType::Json,
            &mut target,
            br#"[{"op":"remove","path":"/nope"}]"#,
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            apply(PatchType::Merge, &mut target, b"[1]")
                .unwrap_err()
                .code,
            400
        );
    }
}
