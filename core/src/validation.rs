//! Validation of what a kind requires and of what may not change after
//! creation; refusals are 422 Invalid with the offending fields.

use serde_json::Value;

use crate::error::{ApiError, FieldCause};
use crate::object::{self, check_dns1123_label};
use crate::resource::Resource;

fn cause(field: impl Into<String>, message: impl Into<String>) -> FieldCause {
    FieldCause {
        field: field.into(),
        message: message.into(),
    }
}

fn check_pod_spec(spec: &Value, path: &str, causes: &mut Vec<FieldCause>) {
    let containers = spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(cause(format!("{path}.containers"), "Required value"));
    }
    let mut names = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let field = format!("{path}.{list}[{i}]");
            match c["name"].as_str() {
                None | Some("") => causes.push(cause(format!("{field}.name"), "Required value")),
                Some(name) => {
                    if let Some(msg) = check_dns1123_label(name) {
                        causes.push(cause(format!("{field}.name"), msg));
                    }
                    if names.contains(&name) {
                        causes.push(cause(
                            format!("{field}.name"),
                            format!("Duplicate value: {name:?}"),
                        ));
                    }
                    names.push(name);
                }
            }
            if c["image"].as_str().is_none_or(str::is_empty) {
                causes.push(cause(format!("{field}.image"), "Required value"));
            }
        }
    }
}

fn check_selector_matches_template(spec: &Value, causes: &mut Vec<FieldCause>) {
    let Some(selector) = spec["selector"]["matchLabels"].as_object() else {
        if spec["selector"]["matchExpressions"].is_null() {
            causes.push(cause("spec.selector", "Required value"));
        }
        return;
    };
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in selector {
        if labels.get(k) != Some(v) {
            causes.push(cause(
                "spec.template.metadata.labels",
                format!(
                    "Invalid value: `selector` does not match template `labels` ({k}={})",
                    v.as_str().unwrap_or("")
                ),
            ));
            return;
        }
    }
}

/// Checks an object about to be created or replaced.
pub fn check(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    match resource.kind {
        "Pod" => check_pod_spec(&object["spec"], "spec", &mut causes),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            if resource.kind != "Job" || !object["spec"]["selector"].is_null() {
                check_selector_matches_template(&object["spec"], &mut causes);
            }
            check_pod_spec(
                &object["spec"]["template"]["spec"],
                "spec.template.spec",
                &mut causes,
            );
            if object["spec"]["replicas"].as_i64().is_some_and(|r| r < 0) {
                causes.push(cause(
                    "spec.replicas",
                    "Invalid value: must be greater than or equal to 0",
                ));
            }
        }
        "Service" => {
            for (i, port) in object["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if !port["port"]
                    .as_i64()
                    .is_some_and(|p| (1..=65535).contains(&p))
                {
                    causes.push(cause(
                        format!("spec.ports[{i}].port"),
                        "Invalid value: must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            resource.kind,
            object::name(object),
            causes,
        ))
    }
}

/// Checks an update against the stored object: fields that may not change.
pub fn check_update(resource: &Resource, old: &Value, new: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let immutable = |path: &[&str], causes: &mut Vec<FieldCause>| {
        let get = |v: &Value| path.iter().fold(v.clone(), |v, step| v[*step].clone());
        let (before, after) = (get(old), get(new));
        if !before.is_null() && before != after {
            causes.push(cause(path.join("."), "field is immutable"));
        }
    };
    match resource.kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            immutable(&["spec", "selector"], &mut causes)
        }
        "Job" => {
            immutable(&["spec", "selector"], &mut causes);
            immutable(&["spec", "template"], &mut causes);
        }
        "Service" => immutable(&["spec", "clusterIP"], &mut causes),
        "Pod" => {
            // Only container images (and scheduling by binding) may change.
            let strip = |pod: &Value| {
                let mut spec = pod["spec"].clone();
                for list in ["initContainers", "containers"] {
                    if let Some(cs) = spec[list].as_array_mut() {
                        for c in cs {
                            c["image"] = Value::Null;
                        }
                    }
                }
                if let Some(m) = spec.as_object_mut() {
                    m.remove("nodeName");
                    m.remove("activeDeadlineSeconds");
                    m.remove("tolerations");
                }
                spec
            };
            if strip(old) != strip(new) {
                causes.push(cause("spec", "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations`"));
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        check(resource, new)
    } else {
        Err(ApiError::invalid(resource.kind, object::name(new), causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::find_kind;
    use serde_json::json;

    #[test]
    fn pods_need_named_containers_with_images() {
        let pods = find_kind("v1", "Pod").unwrap();
        let err = check(pods, &json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x"}]}})).unwrap_err();
        assert_eq!(err.code, 422);
        let fields: Vec<&str> = err.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.containers[0].image", "spec.containers[1].name"]
        );
        assert!(check(pods, &json!({"spec": {}})).is_err());
    }

    #[test]
    fn selectors_must_match_templates_and_stay_put() {
        let deploys = find_kind("apps/v1", "Deployment").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(
            check(deploys, &d).unwrap_err().causes[0].field,
            "spec.template.metadata.labels"
        );
        let mut ok = d.clone();
        ok["spec"]["template"]["metadata"]["labels"]["app"] = json!("a");
        check(deploys, &ok).unwrap();
        let mut moved = ok.clone();
        moved["spec"]["selector"]["matchLabels"]["app"] = json!("z");
        moved["spec"]["template"]["metadata"]["labels"]["app"] = json!("z");
        assert_eq!(
            check_update(deploys, &ok, &moved).unwrap_err().causes[0].field,
            "spec.selector"
        );
    }
}
