//! A node agent's HTTP API over log files written by hand: the real
//! server of `orch-runtime`, with the agent's side (which pods it runs,
//! which container runs still write) played by the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use orch_runtime::agent::server::{self, AgentPods, AgentServerConfig, AgentServerHandle};
use orch_runtime::pod::{ExecError, ExecProcess, ExecRequest};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The agent's answers to the log server, set by the test.
#[derive(Default)]
pub struct FakePods {
    uids: Mutex<HashMap<(String, String), String>>,
    running: Mutex<HashMap<(String, String, u32), bool>>,
}

impl FakePods {
    /// Pod `namespace/name` is the pod with `uid` on this node.
    pub fn add_pod(&self, namespace: &str, name: &str, uid: &str) {
        self.uids
            .lock()
            .unwrap()
            .insert((namespace.into(), name.into()), uid.into());
    }

    /// Whether run `attempt` of `container` in pod `uid` still writes.
    pub fn set_running(&self, uid: &str, container: &str, attempt: u32, running: bool) {
        self.running
            .lock()
            .unwrap()
            .insert((uid.into(), container.into(), attempt), running);
    }
}

impl AgentPods for FakePods {
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

/// A running agent log server on a loopback port.
pub struct TestAgent {
    /// The agent's side.
    pub pods: Arc<FakePods>,
    /// The server.
    pub server: Option<AgentServerHandle>,
    dir: TempDir,
}

impl TestAgent {
    /// Starts a server over an empty log dir, requiring `token` if given.
    pub async fn start(token: Option<&str>) -> TestAgent {
        crate::init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let pods = Arc::new(FakePods::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback port");
        let server = server::serve(
            listener,
            AgentServerConfig {
                log_dir: dir.path().to_path_buf(),
                token: token.map(String::from),
            },
            pods.clone(),
        )
        .expect("agent server starts");
        TestAgent {
            pods,
            server: Some(server),
            dir,
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.server.as_ref().expect("running").addr.port()
    }

    /// The log file of run `attempt` of `container` in pod
    /// `namespace/name` with `uid`.
    pub fn log_path(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        attempt: u32,
    ) -> PathBuf {
        log_path(self.dir.path(), namespace, name, uid, container, attempt)
    }

    /// Writes (replacing) a log file.
    pub fn write_log(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        attempt: u32,
        text: &str,
    ) {
        let path = self.log_path(namespace, name, uid, container, attempt);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Appends to a log file, as a running container does.
    pub fn append_log(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        attempt: u32,
        text: &str,
    ) {
        use std::io::Write;
        let path = self.log_path(namespace, name, uid, container, attempt);
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// A Ready Node `name` whose agent endpoint is this server
    /// (`127.0.0.1` as its InternalIP).
    pub fn node(&self, name: &str) -> Value {
        node_at(name, "127.0.0.1", self.port())
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// `<dir>/<namespace>_<name>_<uid>/<container>/<attempt>.log`.
fn log_path(
    dir: &Path,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &str,
    attempt: u32,
) -> PathBuf {
    dir.join(format!("{namespace}_{name}_{uid}"))
        .join(container)
        .join(format!("{attempt}.log"))
}

/// A Ready Node `name` whose agent listens at `ip:port`.
pub fn node_at(name: &str, ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        }
    })
}
