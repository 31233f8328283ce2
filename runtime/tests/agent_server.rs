//! The agent's HTTP API over log files written by hand in the agent's
//! layout: whole logs, tails, the previous run, byte limits, following a
//! log until its container exits or the client leaves, bearer tokens and
//! errors as Kubernetes `Status` objects.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use orch_runtime::agent::server::{self, AgentPods, AgentServerConfig, AgentServerHandle};
use orch_runtime::pod::{ExecError, ExecProcess, ExecRequest};
use serde_json::Value;

const TOKEN: &str = "s3cret-agent-token";

/// The agent's side: pods by name and which runs still write.
#[derive(Default)]
struct FakeAgent {
    uids: Mutex<HashMap<(String, String), String>>,
    running: Mutex<HashMap<(String, String, u32), bool>>,
    running_calls: AtomicUsize,
}

impl FakeAgent {
    fn add_pod(&self, namespace: &str, name: &str, uid: &str) {
        self.uids
            .lock()
            .unwrap()
            .insert((namespace.into(), name.into()), uid.into());
    }

    fn set_running(&self, uid: &str, container: &str, attempt: u32, running: bool) {
        self.running
            .lock()
            .unwrap()
            .insert((uid.into(), container.into(), attempt), running);
    }
}

impl AgentPods for FakeAgent {
    fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.uids
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    fn is_running<'a>(
        &'a self,
        pod_uid: &'a str,
        container: &'a str,
        attempt: u32,
    ) -> BoxFuture<'a, bool> {
        self.running_calls.fetch_add(1, Ordering::SeqCst);
        let running = self
            .running
            .lock()
            .unwrap()
            .get(&(pod_uid.to_string(), container.to_string(), attempt))
            .copied()
            .unwrap_or(false);
        Box::pin(async move { running })
    }

    fn running_container<'a>(
        &'a self,
        _pod_uid: &'a str,
        container: &'a str,
    ) -> BoxFuture<'a, Result<String, ExecError>> {
        // This fake serves logs only; it runs no containers.
        Box::pin(async move { Err(ExecError::NotRunning(container.to_string())) })
    }

    fn exec<'a>(
        &'a self,
        container_id: &'a str,
        _request: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecProcess, ExecError>> {
        Box::pin(async move { Err(ExecError::NotRunning(container_id.to_string())) })
    }
}

fn write_log(dir: &Path, pod_dir: &str, container: &str, attempt: u32, content: &str) {
    let dir = dir.join(pod_dir).join(container);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{attempt}.log")), content).unwrap();
}

fn append_log(dir: &Path, pod_dir: &str, container: &str, attempt: u32, content: &str) {
    use std::io::Write;
    let path = dir
        .join(pod_dir)
        .join(container)
        .join(format!("{attempt}.log"));
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(content.as_bytes()).unwrap();
}

struct Fixture {
    dir: tempfile::TempDir,
    agent: Arc<FakeAgent>,
    server: AgentServerHandle,
    client: hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>,
}

impl Fixture {
    /// Pod `default/web` (uid `u2`; an older pod of that name, `u1`, left
    /// logs too) with container `app` in its second run and `side` in its
    /// first.
    async fn start() -> Fixture {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), "default_web_u1", "app", 0, "old pod\n");
        write_log(
            dir.path(),
            "default_web_u2",
            "app",
            0,
            "first run 1\nfirst run 2\n",
        );
        write_log(
            dir.path(),
            "default_web_u2",
            "app",
            1,
            "one\ntwo\nthree\nfour",
        );
        write_log(dir.path(), "default_web_u2", "side", 0, "side car\n");
        let agent = Arc::new(FakeAgent::default());
        agent.add_pod("default", "web", "u2");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = server::serve(
            listener,
            AgentServerConfig {
                log_dir: dir.path().to_path_buf(),
                token: Some(TOKEN.into()),
            },
            agent.clone(),
        )
        .unwrap();
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(HttpConnector::new());
        Fixture {
            dir,
            agent,
            server,
            client,
        }
    }

    async fn get_with(&self, path: &str, token: Option<&str>) -> (StatusCode, Incoming) {
        let mut request = hyper::Request::get(format!("http://{}{path}", self.server.addr));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = self
            .client
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        (response.status(), response.into_body())
    }

    async fn get(&self, path: &str) -> (StatusCode, Incoming) {
        self.get_with(path, Some(TOKEN)).await
    }

    async fn text(&self, path: &str) -> String {
        let (status, body) = self.get(path).await;
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::OK, "{path}: {bytes:?}");
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn status(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (status, body) = self.get_with(path, token).await;
        let bytes = body.collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(value["kind"], "Status", "{path}: {bytes:?}");
        assert_eq!(value["code"].as_u64(), Some(status.as_u16() as u64));
        (status, value)
    }
}

/// The next data frame of a streaming body, within five seconds.
async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the stream answers within 5s")?
            .unwrap();
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

#[tokio::test]
async fn logs_tails_previous_runs_and_limits() {
    let f = Fixture::start().await;
    assert_eq!(
        f.text("/containerLogs/default/web/app").await,
        "one\ntwo\nthree\nfour",
        "the current run of the current pod"
    );
    assert_eq!(
        f.text("/containerLogs/default/web/side").await,
        "side car\n"
    );
    assert_eq!(
        f.text("/containerLogs/default/web/app?tailLines=2").await,
        "three\nfour"
    );
    assert_eq!(
        f.text("/containerLogs/default/web/app?tailLines=0").await,
        ""
    );
    assert_eq!(
        f.text("/containerLogs/default/web/app?previous=true").await,
        "first run 1\nfirst run 2\n"
    );
    assert_eq!(
        f.text("/containerLogs/default/web/app?previous=true&tailLines=1")
            .await,
        "first run 2\n"
    );
    assert_eq!(
        f.text("/containerLogs/default/web/app?limitBytes=6").await,
        "one\ntw"
    );
    // A finished run is not followed: the stream ends at the end of the file.
    assert_eq!(
        f.text("/containerLogs/default/web/app?follow=true&previous=true")
            .await,
        "first run 1\nfirst run 2\n"
    );
    assert_eq!(
        f.text("/containerLogs/default/web/app?timestamps=false")
            .await,
        "one\ntwo\nthree\nfour"
    );
    f.server.shutdown().await;
}

#[tokio::test]
async fn follow_streams_appended_bytes_until_the_container_exits() {
    let f = Fixture::start().await;
    f.agent.set_running("u2", "app", 1, true);
    let (status, mut body) = f
        .get("/containerLogs/default/web/app?follow=true&tailLines=1")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next_data(&mut body).await.unwrap(), "four");
    append_log(f.dir.path(), "default_web_u2", "app", 1, "\nfive\n");
    assert_eq!(next_data(&mut body).await.unwrap(), "\nfive\n");
    append_log(f.dir.path(), "default_web_u2", "app", 1, "six\n");
    assert_eq!(next_data(&mut body).await.unwrap(), "six\n");
    // The last words before exiting still arrive, then the stream ends.
    append_log(f.dir.path(), "default_web_u2", "app", 1, "bye\n");
    f.agent.set_running("u2", "app", 1, false);
    let mut rest = Vec::new();
    while let Some(data) = next_data(&mut body).await {
        rest.extend_from_slice(&data);
    }
    assert_eq!(String::from_utf8(rest).unwrap(), "bye\n");
    f.server.shutdown().await;
}

#[tokio::test]
async fn follow_stops_when_the_client_goes_away() {
    let f = Fixture::start().await;
    f.agent.set_running("u2", "app", 1, true);
    let (status, mut body) = f
        .get("/containerLogs/default/web/app?follow=true&limitBytes=100")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next_data(&mut body).await.unwrap(), "one\ntwo\nthree\nfour");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        f.agent.running_calls.load(Ordering::SeqCst) > 0,
        "a followed log asks whether its container still runs"
    );
    drop(body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = f.agent.running_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        f.agent.running_calls.load(Ordering::SeqCst),
        calls,
        "the follow loop ended with its connection"
    );
    f.server.shutdown().await;
}

#[tokio::test]
async fn requests_need_the_token() {
    let f = Fixture::start().await;
    let (status, value) = f.status("/containerLogs/default/web/app", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(value["reason"], "Unauthorized");
    let (status, _) = f
        .status("/containerLogs/default/web/app", Some("wrong"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = f.status("/containerLogs/default/nope/app", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "nothing is told before the token is checked"
    );
    f.server.shutdown().await;
}

#[tokio::test]
async fn unknown_pods_containers_and_options_are_refused() {
    let f = Fixture::start().await;
    let (status, value) = f
        .status("/containerLogs/default/nope/app", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(value["reason"], "NotFound");
    assert_eq!(
        value["message"],
        "pod \"default/nope\" does not exist on this node"
    );
    let (status, value) = f
        .status("/containerLogs/default/web/other", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        value["message"],
        "container \"other\" in pod \"default/web\" has no log on this node"
    );
    let (status, _) = f.status("/containerLogs/default/web/..", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, value) = f
        .status("/containerLogs/default/web/side?previous=true", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        value["message"],
        "previous terminated container \"side\" in pod \"web\" not found"
    );
    for query in [
        "timestamps=true",
        "sinceSeconds=5",
        "tailLines=x",
        "stream=Stdout",
    ] {
        let (status, value) = f
            .status(
                &format!("/containerLogs/default/web/app?{query}"),
                Some(TOKEN),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {value}");
    }
    // exec: a command is required; unknown pods are not found; a plain
    // request (no WebSocket upgrade) is refused; attach is not served.
    let (status, value) = f.status("/exec/default/web/app", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    assert_eq!(value["message"], "you must specify at least 1 command");
    let (status, _) = f
        .status("/exec/default/ghost/app?command=ls&stdout=1", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = f.status("/attach/default/web/app", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    f.server.shutdown().await;
}
