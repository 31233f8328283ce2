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

/// A Service's type, ports and session affinity, as kube-apiserver checks
/// them (node ports against the node-port range; whether one is free is
/// the allocation's business).
fn check_service(spec: &Value, causes: &mut Vec<FieldCause>) {
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(cause(
            "spec.type",
            format!("Unsupported value: {kind:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    if let Some(affinity) = spec["sessionAffinity"].as_str() {
        if !matches!(affinity, "None" | "ClientIP") {
            causes.push(cause(
                "spec.sessionAffinity",
                format!(
                    "Unsupported value: {affinity:?}: supported values: \"ClientIP\", \"None\""
                ),
            ));
        }
    }
    if kind == "ExternalName" && spec["externalName"].as_str().is_none_or(str::is_empty) {
        causes.push(cause("spec.externalName", "Required value"));
    }
    let ports: Vec<&Value> = spec["ports"].as_array().into_iter().flatten().collect();
    let headless = spec["clusterIP"].as_str() == Some("None");
    if ports.is_empty() && kind != "ExternalName" && !headless {
        causes.push(cause("spec.ports", "Required value"));
    }
    let mut names = Vec::new();
    let mut numbers = Vec::new();
    let mut node_ports = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = port["port"].as_i64();
        if !number.is_some_and(|p| (1..=65535).contains(&p)) {
            causes.push(cause(
                format!("{field}.port"),
                "Invalid value: must be between 1 and 65535, inclusive",
            ));
        }
        let protocol = port["protocol"].as_str().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            causes.push(cause(
                format!("{field}.protocol"),
                format!(
                    "Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
        match port["name"].as_str().filter(|n| !n.is_empty()) {
            None if ports.len() > 1 => {
                causes.push(cause(format!("{field}.name"), "Required value"))
            }
            None => {}
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
        if let Some(n) = number {
            if numbers.contains(&(n, protocol)) {
                causes.push(cause(
                    field.clone(),
                    format!("Duplicate value: port {n}/{protocol} is already used by another port of this Service"),
                ));
            }
            numbers.push((n, protocol));
        }
        match &port["targetPort"] {
            Value::Number(n) if !n.as_i64().is_some_and(|p| (1..=65535).contains(&p)) => causes
                .push(cause(
                    format!("{field}.targetPort"),
                    "Invalid value: must be between 1 and 65535, inclusive",
                )),
            Value::String(s)
                if s.is_empty() || s.len() > 15 || check_dns1123_label(s).is_some() =>
            {
                causes.push(cause(
                    format!("{field}.targetPort"),
                    format!("Invalid value: {s:?}: must be a port number or an IANA service name"),
                ))
            }
            _ => {}
        }
        let Some(node_port) = port["nodePort"].as_i64().filter(|p| *p != 0) else {
            continue;
        };
        if !matches!(kind, "NodePort" | "LoadBalancer") {
            causes.push(cause(
                format!("{field}.nodePort"),
                format!("Forbidden: may not be used when `type` is '{kind}'"),
            ));
        } else if !crate::node_ports::in_range(node_port) {
            let (low, high) = (
                crate::node_ports::RANGE.start(),
                crate::node_ports::RANGE.end(),
            );
            causes.push(cause(
                format!("{field}.nodePort"),
                format!("Invalid value: {node_port}: provided port is not in the valid range. The range of valid ports is {low}-{high}"),
            ));
        } else if node_ports.contains(&(node_port, protocol)) {
            causes.push(cause(
                format!("{field}.nodePort"),
                format!("Duplicate value: {node_port}"),
            ));
        }
        node_ports.push((node_port, protocol));
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
        "Service" => check_service(&object["spec"], &mut causes),
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
    fn services_need_distinct_named_ports_and_node_ports_in_range() {
        let services = find_kind("v1", "Service").unwrap();
        let fields = |spec: Value| -> Vec<String> {
            match check(services, &json!({"metadata": {"name": "s"}, "spec": spec})) {
                Ok(()) => vec![],
                Err(e) => e.causes.into_iter().map(|c| c.field).collect(),
            }
        };
        assert!(fields(json!({"ports": [{"port": 80}]})).is_empty());
        assert_eq!(fields(json!({"ports": []})), ["spec.ports"]);
        assert!(fields(json!({"clusterIP": "None"})).is_empty());
        assert_eq!(
            fields(json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]})),
            ["spec.ports[1]"]
        );
        assert!(fields(json!({"ports": [{"name": "a", "port": 53, "protocol": "TCP"}, {"name": "b", "port": 53, "protocol": "UDP"}]})).is_empty());
        assert_eq!(
            fields(json!({"ports": [{"port": 80}, {"port": 81}]})),
            ["spec.ports[0].name", "spec.ports[1].name"]
        );
        assert_eq!(
            fields(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]})),
            ["spec.ports[0].nodePort"]
        );
        assert_eq!(
            fields(json!({"ports": [{"port": 80, "nodePort": 30080}]})),
            ["spec.ports[0].nodePort"]
        );
        assert!(
            fields(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}))
                .is_empty()
        );
        assert_eq!(
            fields(json!({"type": "Magic", "ports": [{"port": 80}]})),
            ["spec.type"]
        );
        assert_eq!(
            fields(json!({"sessionAffinity": "Sticky", "ports": [{"port": 80}]})),
            ["spec.sessionAffinity"]
        );
    }

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
