//! Probes on a real agent: a failing liveness probe, or a startup probe
//! that never passes, restarts the container; a readiness probe toggles
//! the pod's Ready condition.

use std::time::Duration;

use crate::{container_status, phase, Rig};

fn ready_condition(pod: &serde_json::Value) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() {
    let rig = Rig::start().await;
    rig.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "touch /tmp/alive; sleep 2; rm /tmp/alive; sleep 3600"]
    livenessProbe:
      exec: {command: ["test", "-f", "/tmp/alive"]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    )
    .await;
    let pod = rig
        .wait_pod(
            "live",
            "restarted after its liveness probe failed",
            Duration::from_secs(40),
            |p| container_status(p, "main")["restartCount"].as_u64() >= Some(1),
        )
        .await;
    assert_eq!(phase(&pod), "Running");
    let events = rig.api.kubectl_ok(&["get", "events"]).await;
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );
}

#[tokio::test]
async fn a_startup_probe_that_never_passes_restarts_the_container() {
    let rig = Rig::start().await;
    rig.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: neverup}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
    startupProbe:
      exec: {command: ["test", "-f", "/tmp/started"]}
      periodSeconds: 1
      failureThreshold: 2
    readinessProbe:
      exec: {command: ["true"]}
      periodSeconds: 1
"#,
    )
    .await;
    let pod = rig
        .wait_pod(
            "neverup",
            "restarted after its startup probe failed",
            Duration::from_secs(40),
            |p| container_status(p, "main")["restartCount"].as_u64() >= Some(1),
        )
        .await;
    let main = container_status(&pod, "main");
    assert_eq!(main["started"], false, "{main}");
    assert_eq!(main["ready"], false, "never ready before started: {main}");
    let events = rig.api.kubectl_ok(&["get", "events"]).await;
    assert!(events.contains("Startup probe failed"), "{events}");
    assert!(
        events.contains("failed startup probe, will be restarted"),
        "{events}"
    );
}

#[tokio::test]
async fn a_readiness_probe_toggles_the_ready_condition() {
    let rig = Rig::start().await;
    rig.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www; httpd -p 8080 -h /www; sleep 3; echo ok > /www/ready; sleep 4; rm /www/ready; sleep 3600"]
    readinessProbe:
      httpGet: {path: /ready, port: 8080}
      periodSeconds: 1
      failureThreshold: 1
"#,
    )
    .await;
    let pod = rig
        .wait_pod(
            "web",
            "Running but not Ready",
            Duration::from_secs(30),
            |p| phase(p) == "Running",
        )
        .await;
    assert_eq!(ready_condition(&pod), "False", "{pod:#}");
    assert_eq!(container_status(&pod, "main")["ready"], false);
    rig.wait_pod(
        "web",
        "Ready once /ready answers 200",
        Duration::from_secs(20),
        |p| ready_condition(p) == "True" && container_status(p, "main")["ready"] == true,
    )
    .await;
    let pod = rig
        .wait_pod(
            "web",
            "not Ready once /ready is gone",
            Duration::from_secs(20),
            |p| ready_condition(p) == "False",
        )
        .await;
    assert_eq!(
        container_status(&pod, "main")["restartCount"],
        0,
        "readiness never restarts"
    );
    let get = rig.api.kubectl_ok(&["get", "pod", "web"]).await;
    assert!(get.contains("0/1"), "{get}");
}
