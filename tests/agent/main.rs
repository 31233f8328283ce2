//! The node agent with real containers: `orch-agent` processes running
//! busybox pods through libcontainer, scheduled by a real control plane and
//! driven by the real kubectl. Needs root (namespaces, cgroups, overlayfs).

mod exec;
mod logs;
mod pods;
mod probes;
mod volumes;

use std::time::Duration;

use orch_core::controller::LoopSettings;
use orch_tests::agent::TestNode;
use orch_tests::api::TestApi;
use orch_tests::wait_until;
use serde_json::Value;

/// The token the agents' API requires of the API server.
pub const AGENT_TOKEN: &str = "rig-agent-token";

/// A control plane running the loops, and one agent.
pub struct Rig {
    /// The control plane and kubectl.
    pub api: TestApi,
    /// The agent.
    pub node: TestNode,
}

impl Rig {
    /// Starts the control plane and agent `n1`, and waits until the node is
    /// Ready. The agent's API requires a token, which the API server sends.
    pub async fn start() -> Rig {
        Rig::start_with(&[]).await
    }

    /// [`Rig::start`] with more flags for the agent.
    pub async fn start_with(agent_args: &[&str]) -> Rig {
        let api = TestApi::start_with(|c| {
            c.loops = Some(LoopSettings::default());
            c.agent_token = Some(AGENT_TOKEN.to_string());
        })
        .await;
        let token_file = api.path("agent-token");
        std::fs::write(&token_file, AGENT_TOKEN).unwrap();
        let mut args = vec!["--agent-token-file", token_file.to_str().unwrap()];
        args.extend_from_slice(agent_args);
        let node = TestNode::start(&api, "n1", &args);
        let rig = Rig { api, node };
        rig.wait_node_ready().await;
        rig
    }

    /// Waits until node n1 is Ready.
    pub async fn wait_node_ready(&self) {
        self.api.wait_node_ready("n1").await;
    }

    /// `kubectl apply -f` of a manifest.
    pub async fn apply(&self, manifest: &str) {
        let path = self
            .api
            .path(&format!("manifest-{}.yaml", rand::random::<u32>()));
        std::fs::write(&path, manifest).unwrap();
        self.api
            .kubectl_ok(&["apply", "-f", path.to_str().unwrap()])
            .await;
    }

    /// The pod as JSON (`kubectl get pod -o json`), if it exists.
    pub async fn pod(&self, name: &str) -> Option<Value> {
        let out = self.api.kubectl(&["get", "pod", name, "-o", "json"]).await;
        out.success
            .then(|| serde_json::from_str(&out.stdout).expect("kubectl prints JSON"))
    }

    /// Waits until `check` holds for the pod; returns the pod.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(pod) = self.pod(name).await {
                    if check(&pod) {
                        return pod;
                    }
                    *last.lock().unwrap() = pod;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match found {
            Ok(pod) => pod,
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for pod {name}: {what}\nlast seen: {:#}\nagent log:\n{}",
                last.lock().unwrap(),
                tail(&self.node.log(), 40)
            ),
        }
    }

    /// The file the agent writes a container's output to (attempt
    /// `attempt`).
    pub fn log_file(&self, pod: &Value, container: &str, attempt: u32) -> std::path::PathBuf {
        let meta = &pod["metadata"];
        self.node.dir.path().join(format!(
            "logs/{}_{}_{}/{container}/{attempt}.log",
            meta["namespace"].as_str().unwrap(),
            meta["name"].as_str().unwrap(),
            meta["uid"].as_str().unwrap()
        ))
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The status of container `name` of a pod.
pub fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The phase of a pod.
pub fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}
