//! ConfigMaps, Secrets and emptyDirs reaching real containers as
//! environment and files; updates propagating; missing sources and refused
//! hostPaths reported as the kubelet reports them, without disturbing
//! other pods.

use std::time::Duration;

use crate::{container_status, phase, Rig};

async fn logs(rig: &Rig, pod: &str) -> String {
    rig.api.kubectl(&["logs", pod]).await.stdout
}

#[tokio::test]
async fn config_maps_and_secrets_reach_containers_as_env_and_files() {
    let rig = Rig::start().await;
    rig.apply(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {greeting: hello, mode: fast}
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: reader, labels: {app: reader}}
spec:
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo \"G=$GREETING P=$PASSWORD M=$CFG_mode POD=$POD\"; echo scratch > /scratch/x; cat /scratch/x; cat /etc/sec/password; echo; while :; do echo \"file=$(cat /etc/cfg/greeting)\"; sleep 0.5; done"]
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: app-config, key: greeting}}
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: app-secret, key: password}}
    - name: POD
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    envFrom:
    - configMapRef: {name: app-config}
      prefix: CFG_
    volumeMounts:
    - {name: cfg, mountPath: /etc/cfg}
    - {name: sec, mountPath: /etc/sec}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - name: cfg
    configMap: {name: app-config}
  - name: sec
    secret: {secretName: app-secret}
  - name: scratch
    emptyDir: {}
"#,
    )
    .await;
    rig.wait_pod("reader", "Running", Duration::from_secs(30), |p| {
        phase(p) == "Running"
    })
    .await;
    let out = orch_tests::wait_until("the reader's output", Duration::from_secs(20), || async {
        let out = logs(&rig, "reader").await;
        out.contains("file=hello").then_some(out)
    })
    .await;
    assert!(
        out.starts_with("G=hello P=s3cret M=fast POD=reader\nscratch\ns3cret\n"),
        "{out}"
    );

    // An update of the ConfigMap reaches the running container's files.
    rig.api
        .kubectl_ok(&[
            "patch",
            "configmap",
            "app-config",
            "--type=merge",
            "-p",
            r#"{"data":{"greeting":"bonjour"}}"#,
        ])
        .await;
    orch_tests::wait_until("the updated file", Duration::from_secs(30), || async {
        logs(&rig, "reader")
            .await
            .contains("file=bonjour")
            .then_some(())
    })
    .await;
    let pod = rig.pod("reader").await.unwrap();
    assert_eq!(container_status(&pod, "main")["restartCount"], 0);
}

#[tokio::test]
async fn a_missing_config_map_holds_the_container_until_it_exists() {
    let rig = Rig::start().await;
    rig.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: waits}
spec:
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo $LATER; sleep 3600"]
    env:
    - name: LATER
      valueFrom: {configMapKeyRef: {name: later, key: value}}
---
apiVersion: v1
kind: Pod
metadata: {name: mounts}
spec:
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /etc/later/value; sleep 3600"]
    volumeMounts: [{name: later, mountPath: /etc/later}]
  volumes:
  - name: later
    configMap: {name: later}
"#,
    )
    .await;
    let pod = rig
        .wait_pod(
            "waits",
            "CreateContainerConfigError",
            Duration::from_secs(30),
            |p| {
                container_status(p, "main")["state"]["waiting"]["reason"]
                    == "CreateContainerConfigError"
            },
        )
        .await;
    let message = container_status(&pod, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(r#"configmap "later" not found"#),
        "{message}"
    );
    orch_tests::wait_until("a FailedMount event", Duration::from_secs(30), || async {
        let events = rig.api.kubectl_ok(&["get", "events"]).await;
        events.contains("FailedMount").then_some(())
    })
    .await;
    assert_eq!(phase(&rig.pod("mounts").await.unwrap()), "Pending");

    rig.api
        .kubectl_ok(&[
            "create",
            "configmap",
            "later",
            "--from-literal=value=arrived",
        ])
        .await;
    for name in ["waits", "mounts"] {
        rig.wait_pod(
            name,
            "Running once the ConfigMap exists",
            Duration::from_secs(60),
            |p| phase(p) == "Running",
        )
        .await;
        orch_tests::wait_until("its output", Duration::from_secs(20), || async {
            logs(&rig, name).await.contains("arrived").then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_host_path_into_the_kernel_or_the_agent_is_refused() {
    let rig = Rig::start().await;
    rig.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: snoop}
spec:
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
    volumeMounts: [{name: host, mountPath: /host}]
  volumes:
  - name: host
    hostPath: {path: /proc}
---
apiVersion: v1
kind: Pod
metadata: {name: bystander}
spec:
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
"#,
    )
    .await;
    rig.wait_pod("bystander", "Running", Duration::from_secs(30), |p| {
        phase(p) == "Running"
    })
    .await;
    let events = orch_tests::wait_until(
        "a FailedMount event for snoop",
        Duration::from_secs(30),
        || async {
            let events = rig.api.kubectl_ok(&["get", "events"]).await;
            events.contains("FailedMount").then_some(events)
        },
    )
    .await;
    assert!(events.contains("/proc"), "{events}");
    assert_eq!(phase(&rig.pod("snoop").await.unwrap()), "Pending");
}
