//! `kubectl logs` end to end: kubectl -> API server -> the agent of the
//! pod's node (found through the Node object) -> log files written by hand.

use std::process::Stdio;
use std::time::Duration;

use orch_tests::api::TestApi;
use orch_tests::log_server::{node_at, TestAgent};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "agent-token-for-tests";

/// Creates an object through a raw POST; returns it.
async fn create(api: &TestApi, path: &str, object: Value) -> Value {
    let (status, created) = api
        .request(
            "POST",
            path,
            "application/json",
            object.to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 201, "POST {path}: {created}");
    created
}

/// Pod `name` in `default` with containers `containers`, bound to `node`
/// (unbound if empty); returns its uid.
async fn create_pod(api: &TestApi, name: &str, node: &str, containers: &[&str]) -> String {
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "busybox:1"}))
        .collect();
    let mut spec = json!({"containers": containers});
    if !node.is_empty() {
        spec["nodeName"] = json!(node);
    }
    let pod = create(
        api,
        "/api/v1/namespaces/default/pods",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
    )
    .await;
    pod["metadata"]["uid"].as_str().unwrap().to_string()
}

/// A control plane whose agents' token is [`TOKEN`], an agent requiring
/// it, Node `node-1` pointing at the agent, and pod `web` on it with
/// containers `app` (second run; the first left its log) and `side`.
async fn start() -> (TestApi, TestAgent, String) {
    let api = TestApi::start_with(|config| config.agent_token = Some(TOKEN.into())).await;
    let agent = TestAgent::start(Some(TOKEN)).await;
    create(&api, "/api/v1/nodes", agent.node("node-1")).await;
    let uid = create_pod(&api, "web", "node-1", &["app", "side"]).await;
    agent.pods.add_pod("default", "web", &uid);
    agent.write_log(
        "default",
        "web",
        &uid,
        "app",
        0,
        "crashed run\npanic: oops\n",
    );
    agent.write_log("default", "web", &uid, "app", 1, "line 1\nline 2\nline 3\n");
    agent.write_log("default", "web", &uid, "side", 0, "sidecar up\n");
    (api, agent, uid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_logs_reads_the_agents_files() {
    let (api, agent, _uid) = start().await;

    // kubectl picks the first container itself and says so on stderr.
    let out = api.kubectl(&["logs", "web"]).await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout, "line 1\nline 2\nline 3\n");
    assert!(
        out.stderr.contains("Defaulted container \"app\""),
        "{out:?}"
    );

    assert_eq!(
        api.kubectl_ok(&["logs", "web", "-c", "side"]).await,
        "sidecar up\n"
    );
    assert_eq!(
        api.kubectl_ok(&["logs", "web", "-c", "app", "--tail=2"])
            .await,
        "line 2\nline 3\n"
    );
    assert_eq!(
        api.kubectl_ok(&["logs", "web", "-c", "app", "--previous"])
            .await,
        "crashed run\npanic: oops\n"
    );
    assert_eq!(
        api.kubectl_ok(&["logs", "pod/web", "-c", "app", "--limit-bytes=8"])
            .await,
        "line 1\nl"
    );

    // Errors, as kubectl prints them.
    let out = api
        .kubectl(&["logs", "web", "-c", "side", "--previous"])
        .await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("previous terminated container \"side\" in pod \"web\" not found"),
        "{out:?}"
    );
    // kubectl 1.32 checks the container name against the pod itself; the
    // API server gives the same answer to clients that do not.
    let out = api.kubectl(&["logs", "web", "-c", "nope"]).await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("container nope is not valid for pod web"),
        "{out:?}"
    );
    let (status, body) = api
        .request(
            "GET",
            "/api/v1/namespaces/default/pods/web/log?container=nope",
            "",
            b"",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "BadRequest");
    assert_eq!(body["message"], "container nope is not valid for pod web");
    let out = api
        .kubectl(&["logs", "web", "-c", "app", "--timestamps"])
        .await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("timestamps is not supported"),
        "{out:?}"
    );
    let out = api.kubectl(&["logs", "ghost"]).await;
    assert!(!out.success);
    assert!(out.stderr.contains("pods \"ghost\" not found"), "{out:?}");

    // A pod not bound to a node has no agent to ask.
    create_pod(&api, "pending", "", &["app"]).await;
    let out = api.kubectl(&["logs", "pending"]).await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("Error from server (BadRequest): pod pending does not have a host assigned"),
        "{out:?}"
    );

    // kubectl names the container itself; other clients may not.
    let (status, body) = api
        .request("GET", "/api/v1/namespaces/default/pods/web/log", "", b"")
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "a container name must be specified for pod web, choose one of: [app side]"
    );
    api.shutdown().await;
    agent.shutdown().await;
}

/// The next line kubectl prints, within ten seconds.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("kubectl prints within 10s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_logs_follow_streams_until_killed() {
    let (api, agent, uid) = start().await;
    agent.pods.set_running(&uid, "app", 1, true);
    let mut child = tokio::process::Command::new("kubectl")
        .args(["logs", "-f", "web", "-c", "app"])
        .env("KUBECONFIG", &api.kubeconfig)
        .env("KUBECACHEDIR", api.path("kube-cache"))
        .env("HOME", api.path(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl is installed");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for expected in ["line 1", "line 2", "line 3"] {
        assert_eq!(next_line(&mut lines).await.as_deref(), Some(expected));
    }
    agent.append_log("default", "web", &uid, "app", 1, "line 4\n");
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("line 4"));
    agent.append_log("default", "web", &uid, "app", 1, "line 5\nline 6\n");
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("line 5"));
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("line 6"));
    child.kill().await.unwrap();

    // Once the container exits, the stream (and kubectl) ends by itself.
    agent.append_log("default", "web", &uid, "app", 1, "exiting\n");
    agent.pods.set_running(&uid, "app", 1, false);
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        api.kubectl(&["logs", "-f", "web", "-c", "app", "--tail=1"]),
    )
    .await
    .expect("kubectl logs -f of an exited container returns");
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout, "exiting\n");
    api.shutdown().await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_that_refuse_or_cannot_be_reached_are_reported() {
    // The API server has no token; the agent wants one.
    let api = TestApi::start().await;
    let agent = TestAgent::start(Some(TOKEN)).await;
    create(&api, "/api/v1/nodes", agent.node("node-1")).await;
    let uid = create_pod(&api, "web", "node-1", &["app"]).await;
    agent.pods.add_pod("default", "web", &uid);
    agent.write_log("default", "web", &uid, "app", 0, "hello\n");
    let out = api.kubectl(&["logs", "web"]).await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("the agent of node node-1 refused the API server's credentials"),
        "{out:?}"
    );

    // A node whose agent port is closed.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    create(
        &api,
        "/api/v1/nodes",
        node_at("node-2", "127.0.0.1", closed),
    )
    .await;
    create_pod(&api, "lost", "node-2", &["app"]).await;
    let out = api.kubectl(&["logs", "lost"]).await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("the agent of node node-2 at 127.0.0.1:")
            && out.stderr.contains("cannot be reached"),
        "{out:?}"
    );

    // A pod bound to a node that does not exist.
    create_pod(&api, "orphan", "node-9", &["app"]).await;
    let out = api.kubectl(&["logs", "orphan"]).await;
    assert!(!out.success);
    assert!(out.stderr.contains("nodes \"node-9\" not found"), "{out:?}");
    api.shutdown().await;
    agent.shutdown().await;
}
