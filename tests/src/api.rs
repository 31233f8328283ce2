//! A control plane with its API server on ephemeral ports, a kubeconfig for
//! it, and helpers to run the real kubectl and send raw HTTP requests.

use std::path::{Path, PathBuf};
use std::process::Command;

use orch_core::{ControlPlane, ControlPlaneConfig};
use tempfile::TempDir;

/// Writes a kubeconfig for the API at `addr` (plain HTTP, namespace
/// `default`).
pub fn write_kubeconfig(path: &Path, addr: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: orch\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: orch\n  context:\n    cluster: orch\n    user: admin\n    namespace: default\ncurrent-context: orch\nusers:\n- name: admin\n  user: {{}}\n"
        ),
    )
    .expect("kubeconfig is written");
}

/// Runs the real kubectl with `kubeconfig`, caching discovery in `cache`.
pub async fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> KubectlOutput {
    kubectl_fed(kubeconfig, cache, args, None).await
}

/// Runs the real kubectl with `input` on its stdin (else `/dev/null`).
pub async fn kubectl_fed(
    kubeconfig: &Path,
    cache: &Path,
    args: &[&str],
    input: Option<&[u8]>,
) -> KubectlOutput {
    use std::io::Write;
    use std::process::Stdio;
    let kubeconfig = kubeconfig.to_path_buf();
    let cache = cache.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let input = input.map(<[u8]>::to_vec);
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("kubectl")
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("KUBECACHEDIR", &cache)
            .env("HOME", cache.parent().unwrap())
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl is installed");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let output = child.wait_with_output().expect("kubectl runs");
        KubectlOutput {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// Runs kubectl and panics unless it succeeds; returns stdout.
pub async fn kubectl_ok(kubeconfig: &Path, cache: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, cache, args).await;
    assert!(
        out.success,
        "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// A single-member control plane for API tests.
pub struct TestApi {
    /// The running control plane.
    pub plane: Option<ControlPlane>,
    /// `host:port` of the API.
    pub addr: String,
    /// A kubeconfig pointing at the API.
    pub kubeconfig: PathBuf,
    dir: TempDir,
}

/// What a kubectl run returned.
#[derive(Debug)]
pub struct KubectlOutput {
    /// Exit status was success.
    pub success: bool,
    /// The exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl TestApi {
    /// Starts a control plane on loopback ports, without control loops
    /// (API tests, and tests that run a loop by hand).
    pub async fn start() -> TestApi {
        Self::start_with(|_| {}).await
    }

    /// Starts a control plane on loopback ports with its settings changed
    /// by `configure` (e.g. the agents' token).
    pub async fn start_with(configure: impl FnOnce(&mut ControlPlaneConfig)) -> TestApi {
        crate::init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        // No control loops: API tests, and tests that run a loop by hand.
        let mut config = ControlPlaneConfig {
            loops: None,
            ..ControlPlaneConfig::local(1, dir.path().join("store"))
        };
        configure(&mut config);
        let plane = ControlPlane::start_single(config)
            .await
            .expect("control plane starts");
        let addr = plane.api.addr.to_string();
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &addr);
        TestApi {
            plane: Some(plane),
            addr,
            kubeconfig,
            dir,
        }
    }

    /// A file path inside the test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs kubectl with the test kubeconfig (a fresh cache dir per test).
    pub async fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        kubectl(&self.kubeconfig, &self.dir.path().join("kube-cache"), args).await
    }

    /// Runs kubectl with `input` on its stdin.
    pub async fn kubectl_fed(&self, args: &[&str], input: &[u8]) -> KubectlOutput {
        kubectl_fed(
            &self.kubeconfig,
            &self.path("kube-cache"),
            args,
            Some(input),
        )
        .await
    }

    /// Runs kubectl and panics unless it succeeds; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        kubectl_ok(&self.kubeconfig, &self.dir.path().join("kube-cache"), args).await
    }

    /// Waits until Node `node` reports Ready, as `kubectl get node` shows it.
    pub async fn wait_node_ready(&self, node: &str) {
        crate::wait_until(
            &format!("node {node} Ready"),
            std::time::Duration::from_secs(30),
            || async {
                let out = self
                    .kubectl(&[
                        "get",
                        "node",
                        node,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ])
                    .await;
                (out.stdout.trim() == "True").then_some(())
            },
        )
        .await;
    }

    /// Node `node`'s InternalIP, as `kubectl get node` shows it.
    pub async fn node_internal_ip(&self, node: &str) -> String {
        self.kubectl_ok(&[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
        ])
        .await
    }

    /// `kubectl get KIND NAME -n NAMESPACE -o jsonpath=PATH`.
    pub async fn jsonpath(&self, kind: &str, name: &str, namespace: &str, path: &str) -> String {
        let path = format!("jsonpath={path}");
        self.kubectl_ok(&["get", kind, name, "-n", namespace, "-o", &path])
            .await
    }

    /// Sends a raw HTTP/1.1 request; returns (status, JSON body).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let _ = stream.write_all(body).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let json = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// Stops the control plane.
    pub async fn shutdown(mut self) {
        if let Some(plane) = self.plane.take() {
            plane.shutdown().await;
        }
    }
}
