//! The agent's own HTTP API, which the API server calls on behalf of
//! clients (the kubelet's port):
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log
//!   (`kubectl logs`), with the kubelet's query parameters `follow`,
//!   `tailLines`, `previous`, `limitBytes`; `timestamps=true`, `sinceSeconds`
//!   and `sinceTime` are refused (400), since the log files hold no times
//!   (see [`crate::pod::logs`]). See [`logs`].
//! - `GET /exec/{namespace}/{pod}/{container}?command=...&stdin=...`: a
//!   process in a running container (`kubectl exec`), its stdio streamed
//!   over a WebSocket in Kubernetes' channel protocol (`v5.channel.k8s.io`,
//!   `v4.channel.k8s.io`). See [`exec`] and [`channel`].
//! - `GET /metrics`: the agent's counters (Prometheus text).
//! - `/attach/...`, `/portForward/...`: not served (404).
//!
//! Every request needs `Authorization: Bearer <token>` when the server has
//! a token (401 otherwise). Errors are Kubernetes `Status` objects.
//!
//! The server reads the log files itself; what only the agent knows comes
//! through [`AgentPods`]: which uid a pod name stands for now, whether a
//! container run may still write, and how to start a process in one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use orch_core::ApiError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::pod::{ExecError, ExecProcess, ExecRequest};

pub mod channel;
pub mod exec;
pub mod logs;

pub use logs::{attempts, tail_offset, LogError, LogOptions, FOLLOW_POLL_INTERVAL};

/// The response body type of the agent's server.
pub type Body = BoxBody<Bytes, Infallible>;

/// What the agent's server asks of the agent.
pub trait AgentPods: Send + Sync + 'static {
    /// The uid of the pod `namespace/name` this node runs now (its log
    /// directory is `<log dir>/<namespace>_<name>_<uid>`), or `None` if the
    /// agent has no such pod.
    fn pod_uid(&self, namespace: &str, name: &str) -> Option<String>;

    /// Whether run `attempt` of `container` in pod `pod_uid` may still
    /// write to its log. A followed log ends once this is false (after a
    /// last read of the file).
    fn is_running<'a>(
        &'a self,
        pod_uid: &'a str,
        container: &'a str,
        attempt: u32,
    ) -> BoxFuture<'a, bool>;

    /// The agent's own metrics in Prometheus' text format (the server adds
    /// its own counters).
    fn metrics_text(&self) -> String {
        String::new()
    }

    /// The id of the current run of `container` in pod `pod_uid` if it
    /// runs ([`ExecError::NotRunning`] if it exists but does not run,
    /// [`ExecError::Invalid`] if the pod has no such container).
    fn running_container<'a>(
        &'a self,
        pod_uid: &'a str,
        container: &'a str,
    ) -> BoxFuture<'a, Result<String, ExecError>>;

    /// Starts `request` in the running container `container_id`.
    fn exec<'a>(
        &'a self,
        container_id: &'a str,
        request: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecProcess, ExecError>>;
}

/// Settings of the agent's server.
#[derive(Clone)]
pub struct AgentServerConfig {
    /// The directory of container logs (the layout of [`crate::pod::logs`]).
    pub log_dir: PathBuf,
    /// The bearer token every request must carry; `None` accepts any
    /// request (tests, or a node on a trusted network).
    pub token: Option<String>,
}

impl std::fmt::Debug for AgentServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServerConfig")
            .field("log_dir", &self.log_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The agent's server state.
pub(crate) struct AgentServer {
    pub(crate) config: AgentServerConfig,
    pub(crate) pods: Arc<dyn AgentPods>,
    /// Exec sessions upgraded so far.
    pub(crate) exec_sessions: std::sync::atomic::AtomicU64,
}

/// A running agent server.
pub struct AgentServerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AgentServerHandle {
    /// Stops accepting and closes every connection (ending follow streams).
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Serves the agent's API on `listener` until the handle is shut down.
pub fn serve(
    listener: TcpListener,
    config: AgentServerConfig,
    pods: Arc<dyn AgentPods>,
) -> std::io::Result<AgentServerHandle> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let server = Arc::new(AgentServer {
        config,
        pods,
        exec_sessions: Default::default(),
    });
    let task = tokio::spawn(orch_raft_store::network::serve_http(
        listener,
        stopped,
        move |req| handle(server.clone(), req),
    ));
    Ok(AgentServerHandle { addr, stop, task })
}

pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(error.to_status().to_string())).boxed())
        .expect("static response parts are valid")
}

/// An empty response body.
pub(crate) fn empty_body() -> Body {
    Full::new(Bytes::new()).boxed()
}

impl AgentServer {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.config.token else {
            return true;
        };
        req.headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| {
                orch_core::server::constant_time_eq(given.trim().as_bytes(), token.as_bytes())
            })
    }
}

async fn handle(server: Arc<AgentServer>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("agent_api", %method, %path);
    async move {
        let result = route(&server, req).await;
        match result {
            Ok(response) => response,
            Err(e) => {
                if e.code >= 500 {
                    tracing::warn!(code = e.code, message = %e.message, "request failed");
                } else {
                    tracing::debug!(code = e.code, message = %e.message, "request refused");
                }
                error_response(&e)
            }
        }
    }
    .instrument(span)
    .await
}

async fn route(server: &AgentServer, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if !server.authorized(&req) {
        return Err(LogError::Unauthorized.into());
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["containerLogs", namespace, pod, container] => {
            if req.method() != Method::GET {
                return Err(ApiError::method_not_allowed(format!(
                    "{} is not allowed on container logs",
                    req.method()
                )));
            }
            let options = LogOptions::parse(req.uri().query())?;
            Ok(logs::container_logs(server, namespace, pod, container, &options).await?)
        }
        ["exec", namespace, pod, container] => {
            exec::exec(server, req, namespace, pod, container).await
        }
        ["metrics"] => {
            let sessions = server
                .exec_sessions
                .load(std::sync::atomic::Ordering::Relaxed);
            let text = format!(
                "{}# HELP orch_agent_exec_sessions_total Exec sessions started.\n# TYPE orch_agent_exec_sessions_total counter\norch_agent_exec_sessions_total {sessions}\n",
                server.pods.metrics_text()
            );
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(text)).boxed())
                .expect("static response parts are valid"))
        }
        _ => Err(ApiError::no_route(&path)),
    }
}

/// The attempt numbers of a container's log files (`<attempt>.log`),
/// True for a name that can be a path segment of its own (no separators,
/// not `.` or `..`).
pub(crate) fn plain_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0', '%'])
}
