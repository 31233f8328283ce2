//! `kubectl exec` end to end: kubectl -> API server (upgrade relayed) ->
//! the agent's WebSocket (v5.channel.k8s.io) -> a process started by
//! libcontainer in the running busybox container. The Python client speaks
//! v4.channel.k8s.io through the same path.

use std::time::Duration;

use super::{phase, Rig};

const SHELL_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: shell
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello; sleep 3600"]
"#;

/// Starts the rig with pod `shell` Running.
async fn running_shell() -> Rig {
    let rig = Rig::start().await;
    rig.apply(SHELL_POD).await;
    rig.wait_pod("shell", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    })
    .await;
    rig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_exec_runs_commands_in_the_container() {
    let rig = running_shell().await;
    let api = &rig.api;

    // The pod's hostname is its name.
    assert_eq!(
        api.kubectl_ok(&["exec", "shell", "--", "cat", "/etc/hostname"])
            .await,
        "shell\n"
    );

    // stdout and stderr apart; the exit code is kubectl's.
    let out = api
        .kubectl(&[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 3",
        ])
        .await;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout, "to-out\n");
    assert!(out.stderr.starts_with("to-err\n"), "{out:?}");
    assert!(
        out.stderr.contains("command terminated with exit code 3"),
        "{out:?}"
    );

    // stdin reaches the process, and its end ends the process' input
    // (version 5's close signal).
    let out = api
        .kubectl_fed(
            &[
                "exec",
                "-i",
                "shell",
                "--",
                "sh",
                "-c",
                "tr a-z A-Z; echo done",
            ],
            b"hello from stdin\n",
        )
        .await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout, "HELLO FROM STDIN\ndone\n");

    // kubectl cp streams a tar archive through exec in both directions.
    let local = api.path("copied.txt");
    std::fs::write(&local, "copied through exec\n").unwrap();
    api.kubectl_ok(&["cp", local.to_str().unwrap(), "shell:/tmp/copied.txt"])
        .await;
    assert_eq!(
        api.kubectl_ok(&["exec", "shell", "--", "cat", "/tmp/copied.txt"])
            .await,
        "copied through exec\n"
    );
    let back = api.path("back.txt");
    api.kubectl_ok(&["cp", "shell:/tmp/copied.txt", back.to_str().unwrap()])
        .await;
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "copied through exec\n"
    );

    // A command the image does not have: a clear error, the pod unharmed.
    let out = api
        .kubectl(&["exec", "shell", "--", "no-such-command"])
        .await;
    assert!(!out.success, "{out:?}");
    assert!(out.stderr.contains("no-such-command"), "{out:?}");
    let out = api.kubectl(&["exec", "ghost", "--", "true"]).await;
    assert!(!out.success);
    assert!(out.stderr.contains("pods \"ghost\" not found"), "{out:?}");
    let out = api
        .kubectl(&["exec", "shell", "-c", "nope", "--", "true"])
        .await;
    assert!(!out.success);
    assert!(out.stderr.contains("nope"), "{out:?}");
    let pod = rig.pod("shell").await.unwrap();
    assert_eq!(super::container_status(&pod, "main")["restartCount"], 0);
    // exec is a stream: a plain request is refused as kube-apiserver does.
    let (status, body) = api
        .request(
            "POST",
            "/api/v1/namespaces/default/pods/shell/exec?command=ls&stdout=true",
            "",
            b"",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "Upgrade request required");

    // No exec process is left in the container: only its own command
    // (sh has exec'd its last one, sleep) and this ps.
    let out = api
        .kubectl_ok(&["exec", "shell", "--", "ps", "-o", "comm"])
        .await;
    let commands: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(commands, ["sleep", "ps"], "{out}");
    // The agent counts its sessions at /metrics (with the cluster's token).
    let port = api
        .kubectl_ok(&[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
        ])
        .await;
    let metrics = std::process::Command::new("curl")
        .args(["-s", "-H"])
        .arg(format!("Authorization: Bearer {}", super::AGENT_TOKEN))
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("curl runs");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains("\norch_agent_pods 1\n"), "{metrics}");
    let sessions: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orch_agent_exec_sessions_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(sessions >= 8, "{metrics}");
    assert!(
        metrics.contains("orch_controller_reconciles_total{controller=\"agent-pods\"}"),
        "{metrics}"
    );
    rig.api
        .kubectl_ok(&["delete", "pod", "shell", "--wait=true"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_exec_it_gives_a_terminal() {
    let rig = running_shell().await;
    // kubectl wants a terminal of its own for -t: `script` runs it on a
    // pseudo-terminal fed from a pipe.
    let kubectl = "stty cols 90 rows 25; kubectl exec -it shell -- sh";
    let mut child = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", kubectl, "/dev/null"])
        .env("KUBECONFIG", &rig.api.kubeconfig)
        .env("KUBECACHEDIR", rig.api.path("kube-cache"))
        .env("HOME", rig.api.path(""))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script (bsdutils) is installed");
    let mut stdin = child.stdin.take().unwrap();
    use tokio::io::AsyncWriteExt;
    // Give kubectl time to connect before typing, as a user would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let typed = stdin
        .write_all(b"tty; stty size; echo $((6*7)); exit 4\n")
        .await;
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("kubectl exec -it ends when the shell exits")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(typed.is_ok(), "script ended early: {text}\n{errors}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(
        text.contains("25 90"),
        "the terminal has kubectl's size: {text}"
    );
    assert!(text.contains("42"), "{text}");
    assert_eq!(output.status.code(), Some(4), "{text}");
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_client_execs_over_websocket_v4() {
    let rig = running_shell().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/agent/python/exec.py");
    let kubeconfig = rig.api.kubeconfig.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, "shell"])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("hostname: shell\n"), "{stdout}");
    let terminal = stdout
        .lines()
        .find_map(|l| l.strip_prefix("terminal: "))
        .expect("the script prints the terminal's output");
    let terminal: String = serde_json::from_str(terminal).unwrap();
    assert!(terminal.contains("30 100"), "resized: {terminal:?}");
    assert!(terminal.contains("/dev/pts/"), "{terminal:?}");
    assert!(stdout.contains("returncode: 5"), "{stdout}");
}
