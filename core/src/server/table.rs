//! The `Table` format (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`)
//! kubectl asks for, with the columns kubectl users know.

use serde_json::{json, Value};

use crate::resource::Resource;

fn age(object: &Value) -> String {
    let Some(created) = object["metadata"]["creationTimestamp"].as_str() else {
        return "<unknown>".into();
    };
    let Ok(created) = created.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (crate::object::now_secs() - created.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// How long ago an Event was last seen (its lastTimestamp, else eventTime,
/// else its creation).
fn event_last_seen(event: &Value) -> String {
    let time = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|f| event[*f].as_str())
        .map(|t| json!({"metadata": {"creationTimestamp": t}}))
        .unwrap_or_else(|| event.clone());
    age(&time)
}

fn column(name: &str, kind: &str, priority: i64) -> Value {
    json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn or_none(value: String) -> String {
    if value.is_empty() {
        "<none>".into()
    } else {
        value
    }
}

/// The STATUS kubectl prints for a pod: the phase, unless an init
/// container is still due (`Init:1/2`, or its waiting reason), or a
/// container waits (`CrashLoopBackOff`) or ended with a reason
/// (`Completed`, `Error`, `OOMKilled`).
fn pod_status_cell(pod: &Value, statuses: &[Value]) -> String {
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    let inits = pod["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let init_total = pod["spec"]["initContainers"]
        .as_array()
        .map_or(0, |c| c.len());
    let init_done = inits
        .iter()
        .filter(|s| s["state"]["terminated"]["exitCode"] == json!(0))
        .count();
    if init_total > 0 && init_done < init_total && phase != "Failed" {
        let waiting = inits.iter().find_map(|s| {
            s["state"]["waiting"]["reason"]
                .as_str()
                .filter(|r| *r != "PodInitializing")
        });
        return match waiting {
            Some(reason) => format!("Init:{reason}"),
            None => format!("Init:{init_done}/{init_total}"),
        };
    }
    if let Some(failed) = inits.iter().find_map(|s| {
        let t = &s["state"]["terminated"];
        (t["exitCode"].as_i64().unwrap_or(0) != 0).then(|| t["reason"].as_str().unwrap_or("Error"))
    }) {
        return format!("Init:{failed}");
    }
    let waiting = statuses.iter().find_map(|s| {
        s["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
    });
    let terminated = statuses
        .iter()
        .find_map(|s| s["state"]["terminated"]["reason"].as_str());
    waiting.or(terminated).unwrap_or(phase).to_string()
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = pod["spec"]["containers"].as_array().map_or(0, |c| c.len());
    let ready = statuses
        .iter()
        .filter(|s| s["ready"].as_bool() == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .map(|s| s["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut status = pod_status_cell(pod, &statuses);
    if pod["metadata"]["deletionTimestamp"].is_string() {
        status = "Terminating".into();
    }
    vec![
        json!(str_of(&pod["metadata"]["name"])),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(age(pod)),
        json!(or_none(str_of(&pod["status"]["podIP"]))),
        json!(or_none(str_of(&pod["spec"]["nodeName"]))),
    ]
}

fn ports_of(service: &Value) -> String {
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node) => format!("{}:{}/{}", p["port"], node, proto),
                None => format!("{}/{}", p["port"], proto),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn node_status(node: &Value) -> String {
    let conditions = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready");
    let mut status = match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node["spec"]["unschedulable"].as_bool() == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(node: &Value) -> String {
    let roles: Vec<String> = node["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

/// Column definitions and cells for one kind.
fn columns_and_cells(resource: &Resource, object: &Value) -> (Vec<Value>, Vec<Value>) {
    let name = json!(str_of(&object["metadata"]["name"]));
    let i = |v: &Value| v.as_i64().unwrap_or(0);
    match resource.kind {
        "Pod" => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Status", "string", 0),
                column("Restarts", "integer", 0),
                column("Age", "string", 0),
                column("IP", "string", 1),
                column("Node", "string", 1),
            ],
            pod_cells(object),
        ),
        "Deployment" => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Up-to-date", "integer", 0),
                column("Available", "integer", 0),
                column("Age", "string", 0),
                column("Containers", "string", 1),
                column("Images", "string", 1),
                column("Selector", "string", 1),
            ],
            {
                let containers = object["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let selector = crate::object::match_labels_string(object);
                vec![
                    name,
                    json!(format!(
                        "{}/{}",
                        i(&object["status"]["readyReplicas"]),
                        object["spec"]["replicas"].as_i64().unwrap_or(1)
                    )),
                    json!(i(&object["status"]["updatedReplicas"])),
                    json!(i(&object["status"]["availableReplicas"])),
                    json!(age(object)),
                    json!(containers
                        .iter()
                        .map(|c| str_of(&c["name"]))
                        .collect::<Vec<_>>()
                        .join(",")),
                    json!(containers
                        .iter()
                        .map(|c| str_of(&c["image"]))
                        .collect::<Vec<_>>()
                        .join(",")),
                    json!(selector),
                ]
            },
        ),
        "Node" => (
            vec![
                column("Name", "string", 0),
                column("Status", "string", 0),
                column("Roles", "string", 0),
                column("Age", "string", 0),
                column("Version", "string", 0),
                column("Internal-IP", "string", 1),
                column("External-IP", "string", 1),
                column("OS-Image", "string", 1),
                column("Kernel-Version", "string", 1),
                column("Container-Runtime", "string", 1),
            ],
            {
                let info = &object["status"]["nodeInfo"];
                let address = |kind: &str| {
                    object["status"]["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["type"] == kind)
                        .map_or("<none>".to_string(), |a| str_of(&a["address"]))
                };
                vec![
                    name,
                    json!(node_status(object)),
                    json!(node_roles(object)),
                    json!(age(object)),
                    json!(str_of(&info["kubeletVersion"])),
                    json!(address("InternalIP")),
                    json!(address("ExternalIP")),
                    json!(str_of(&info["osImage"])),
                    json!(str_of(&info["kernelVersion"])),
                    json!(str_of(&info["containerRuntimeVersion"])),
                ]
            },
        ),
        "Ingress" => (
            vec![
                column("Name", "string", 0),
                column("Class", "string", 0),
                column("Hosts", "string", 0),
                column("Address", "string", 0),
                column("Ports", "string", 0),
                column("Age", "string", 0),
            ],
            {
                let rules = object["spec"]["rules"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let hosts: Vec<&str> = rules
                    .iter()
                    .map(|r| r["host"].as_str().unwrap_or("*"))
                    .collect();
                let ports = if object["spec"]["tls"]
                    .as_array()
                    .is_some_and(|t| !t.is_empty())
                {
                    "80, 443"
                } else {
                    "80"
                };
                let addresses: Vec<&str> = object["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                    .collect();
                vec![
                    name,
                    json!(object["spec"]["ingressClassName"]
                        .as_str()
                        .unwrap_or("<none>")),
                    json!(if hosts.is_empty() {
                        "*".to_string()
                    } else {
                        hosts.join(",")
                    }),
                    json!(addresses.join(",")),
                    json!(ports),
                    json!(age(object)),
                ]
            },
        ),
        "EndpointSlice" => (
            vec![
                column("Name", "string", 0),
                column("AddressType", "string", 0),
                column("Ports", "string", 0),
                column("Endpoints", "string", 0),
                column("Age", "string", 0),
            ],
            {
                let ports: Vec<String> = object["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["port"].as_i64().map(|n| n.to_string()))
                    .collect();
                let endpoints: Vec<&str> = object["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                let shown = if endpoints.len() > 3 {
                    format!(
                        "{} + {} more...",
                        endpoints[..3].join(","),
                        endpoints.len() - 3
                    )
                } else if endpoints.is_empty() {
                    "<unset>".to_string()
                } else {
                    endpoints.join(",")
                };
                vec![
                    name,
                    json!(str_of(&object["addressType"])),
                    json!(if ports.is_empty() {
                        "<unset>".to_string()
                    } else {
                        ports.join(",")
                    }),
                    json!(shown),
                    json!(age(object)),
                ]
            },
        ),
        "Service" => (
            vec![
                column("Name", "string", 0),
                column("Type", "string", 0),
                column("Cluster-IP", "string", 0),
                column("External-IP", "string", 0),
                column("Port(s)", "string", 0),
                column("Age", "string", 0),
            ],
            vec![
                name,
                json!(object["spec"]["type"].as_str().unwrap_or("ClusterIP")),
                json!(object["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
                json!("<none>"),
                json!(ports_of(object)),
                json!(age(object)),
            ],
        ),
        "ConfigMap" | "Secret" => {
            let data = object["data"].as_object().map_or(0, |d| d.len())
                + object["binaryData"].as_object().map_or(0, |d| d.len())
                + object["stringData"].as_object().map_or(0, |d| d.len());
            let mut columns = vec![column("Name", "string", 0)];
            let mut cells = vec![name];
            if resource.kind == "Secret" {
                columns.push(column("Type", "string", 0));
                cells.push(json!(object["type"].as_str().unwrap_or("Opaque")));
            }
            columns.push(column("Data", "integer", 0));
            columns.push(column("Age", "string", 0));
            cells.push(json!(data));
            cells.push(json!(age(object)));
            (columns, cells)
        }
        "Namespace" => (
            vec![
                column("Name", "string", 0),
                column("Status", "string", 0),
                column("Age", "string", 0),
            ],
            vec![
                name,
                json!(object["status"]["phase"].as_str().unwrap_or("Active")),
                json!(age(object)),
            ],
        ),
        "ReplicaSet" => (
            vec![
                column("Name", "string", 0),
                column("Desired", "integer", 0),
                column("Current", "integer", 0),
                column("Ready", "integer", 0),
                column("Age", "string", 0),
            ],
            vec![
                name,
                json!(object["spec"]["replicas"].as_i64().unwrap_or(1)),
                json!(i(&object["status"]["replicas"])),
                json!(i(&object["status"]["readyReplicas"])),
                json!(age(object)),
            ],
        ),
        "Event" => (
            vec![
                column("Last Seen", "string", 0),
                column("Type", "string", 0),
                column("Reason", "string", 0),
                column("Object", "string", 0),
                column("Message", "string", 0),
                column("Name", "string", 1),
            ],
            vec![
                json!(event_last_seen(object)),
                json!(str_of(&object["type"])),
                json!(str_of(&object["reason"])),
                json!(format!(
                    "{}/{}",
                    object["involvedObject"]["kind"]
                        .as_str()
                        .unwrap_or("")
                        .to_lowercase(),
                    str_of(&object["involvedObject"]["name"])
                )),
                json!(str_of(&object["message"])),
                name,
            ],
        ),
        _ => (
            vec![column("Name", "string", 0), column("Age", "string", 0)],
            vec![name, json!(age(object))],
        ),
    }
}

/// A `meta.k8s.io/v1` Table of `objects`.
pub fn table(
    resource: &Resource,
    objects: &[Value],
    resource_version: Option<String>,
    continue_token: Option<String>,
) -> Value {
    let columns = columns_and_cells(resource, &json!({"metadata": {}})).0;
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let partial = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object["metadata"].clone(),
            });
            json!({"cells": columns_and_cells(resource, object).1, "object": partial})
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}
