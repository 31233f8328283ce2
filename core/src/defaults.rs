//! Defaulting: the values Kubernetes fills in when a manifest leaves them
//! out, applied on every create and update so clients read back what they
//! would from Kubernetes.

use serde_json::{json, Value};

use crate::resource::Resource;

/// Sets `object[key]` to `value` unless it is already set.
fn default(object: &mut Value, key: &str, value: Value) {
    if object.get(key).is_none_or(Value::is_null) {
        object[key] = value;
    }
}

fn default_container(container: &mut Value) {
    let image = container["image"].as_str().unwrap_or("");
    let latest = !image.contains(':') || image.ends_with(":latest");
    let policy = if latest { "Always" } else { "IfNotPresent" };
    default(container, "imagePullPolicy", json!(policy));
    default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    default(container, "terminationMessagePolicy", json!("File"));
    if let Some(ports) = container["ports"].as_array_mut() {
        for port in ports {
            default(port, "protocol", json!("TCP"));
        }
    }
}

/// Defaults of a pod spec (also used inside workload templates).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec[list].as_array_mut() {
            for container in containers {
                default_container(container);
            }
        }
    }
}

fn default_rolling_workload(spec: &mut Value, strategy_key: &str, rolling: Value) {
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, strategy_key, rolling);
    default_pod_spec(&mut spec["template"]["spec"]);
}

/// A Job without a selector (and without `manualSelector`) selects its
/// pods by its own uid, as Kubernetes generates it: the selector and the
/// template labels `batch.kubernetes.io/controller-uid` and
/// `batch.kubernetes.io/job-name` (plus their legacy short forms).
fn default_job_selector(job: &mut Value) {
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
    if uid.is_empty()
        || !job["spec"]["selector"].is_null()
        || job["spec"]["manualSelector"] == json!(true)
    {
        return;
    }
    job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("job-name", &name),
    ] {
        default(labels, key, json!(value));
    }
}

/// Applies the defaults of `resource` to `object`.
pub fn apply(resource: &Resource, object: &mut Value) {
    match resource.kind {
        "Pod" => {
            default_pod_spec(&mut object["spec"]);
            default(&mut object["status"], "phase", json!("Pending"));
        }
        "Deployment" => {
            let spec = &mut object["spec"];
            default_rolling_workload(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            default(spec, "progressDeadlineSeconds", json!(600));
        }
        "StatefulSet" => {
            let spec = &mut object["spec"];
            default_rolling_workload(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            default(spec, "podManagementPolicy", json!("OrderedReady"));
        }
        "DaemonSet" => {
            let spec = &mut object["spec"];
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            default_pod_spec(&mut spec["template"]["spec"]);
        }
        "ReplicaSet" => {
            default(&mut object["spec"], "replicas", json!(1));
            default_pod_spec(&mut object["spec"]["template"]["spec"]);
        }
        "Job" => {
            default_job_selector(object);
            let spec = &mut object["spec"];
            default(spec, "completions", json!(1));
            default(spec, "parallelism", json!(1));
            default(spec, "backoffLimit", json!(6));
            default(
                &mut spec["template"]["spec"],
                "restartPolicy",
                json!("Never"),
            );
            default_pod_spec(&mut spec["template"]["spec"]);
        }
        "Service" => {
            let spec = &mut object["spec"];
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            if let Some(ports) = spec["ports"].as_array_mut() {
                for port in ports {
                    default(port, "protocol", json!("TCP"));
                    let number = port["port"].clone();
                    default(port, "targetPort", number);
                }
            }
        }
        "Secret" => {
            default(object, "type", json!("Opaque"));
            // stringData is write-only: merged into data, base64-encoded.
            if let Some(strings) = object.get("stringData").and_then(Value::as_object).cloned() {
                use base64::Engine;
                for (key, value) in strings {
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(value.as_str().unwrap_or(""));
                    object["data"][key] = json!(encoded);
                }
                if let Some(map) = object.as_object_mut() {
                    map.remove("stringData");
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::find_kind;

    #[test]
    fn jobs_without_a_selector_select_their_pods_by_uid() {
        let job_kind = find_kind("batch/v1", "Job").unwrap();
        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "busybox"}]}}}});
        apply(job_kind, &mut job);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], "u-1");
        assert_eq!(labels["job-name"], "pi");
        let mut manual = json!({"metadata": {"name": "m", "uid": "u-2"}, "spec": {"manualSelector": true, "template": {}}});
        apply(job_kind, &mut manual);
        assert!(
            manual["spec"]["selector"].is_null(),
            "a manual selector is left to the user"
        );
    }

    #[test]
    fn pods_get_the_defaults_kubectl_users_rely_on() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "busybox:1.36", "imagePullPolicy": "Never"}
        ]}});
        apply(find_kind("v1", "Pod").unwrap(), &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            pod["spec"]["containers"][1]["imagePullPolicy"], "Never",
            "set values are kept"
        );
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn workloads_services_and_secrets_are_defaulted() {
        let mut deploy = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        apply(find_kind("apps/v1", "Deployment").unwrap(), &mut deploy);
        assert_eq!(deploy["spec"]["replicas"], 1);
        assert_eq!(deploy["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(
            deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        apply(find_kind("v1", "Service").unwrap(), &mut svc);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        let mut secret = json!({"stringData": {"p": "s3cret"}});
        apply(find_kind("v1", "Secret").unwrap(), &mut secret);
        assert_eq!(secret["data"]["p"], "czNjcmV0");
        assert!(secret.get("stringData").is_none());
    }
}
