//! The Kubernetes API server: hyper over TCP, routing by path, JSON bodies,
//! `Status` objects for every error.

mod discovery;
mod handlers;
pub mod members;
mod openapi;
mod protobuf;
mod proxy;
mod request;
mod route;
mod schemas;
mod table;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::controller::MetricsRegistry;
use crate::error::ApiError;
use crate::registry::Registry;

pub use proxy::NodeProxy;
pub use request::Query;
pub use route::{parse as parse_route, Route};

/// Answers a request whose body has been read: orch's own paths
/// ([`members`]) or the Kubernetes API.
pub(crate) async fn dispatch(
    server: &ApiServer,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    if parts.uri.path().starts_with(members::PREFIX) {
        members::handle(server, &parts.method, parts.uri.path(), body).await
    } else {
        handlers::dispatch(server, parts, body).await
    }
}

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted (etcd's value limit plus room for the
/// envelope, as kube-apiserver allows 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 << 20;

/// The API server's shared state.
pub struct ApiServer {
    registry: Registry,
    node_proxy: NodeProxy,
    loop_metrics: std::sync::OnceLock<MetricsRegistry>,
    /// Bearer tokens a request must carry one of; empty: no authentication
    /// (tests, embedding on a trusted host).
    tokens: std::sync::OnceLock<Vec<String>>,
    /// Bearer tokens accepted for the Kubernetes API but not for the
    /// cluster's administration under `/orch/v1/` (the node agents').
    restricted_tokens: std::sync::OnceLock<Vec<String>>,
    /// The cluster's CA bundle, served at `/cacerts` to nodes that hold a
    /// join token only (they check its hash).
    ca_pem: std::sync::OnceLock<String>,
    /// What a joining master fetches at `/orch/v1/join-bundle`.
    join_bundle: std::sync::OnceLock<Bytes>,
    /// Turns true once this master's own member was removed through
    /// `DELETE /orch/v1/members/{id}`.
    removed: watch::Sender<bool>,
    /// Requests answered, by method and status code.
    requests: std::sync::Mutex<std::collections::BTreeMap<(String, u16), u64>>,
}

/// Paths anyone may read: health and version, as kube-apiserver serves
/// them to anonymous clients.
const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz", "/livez", "/version", "/cacerts"];

impl ApiServer {
    /// An API server over a registry, reaching node agents without
    /// credentials.
    pub fn new(registry: Registry) -> Arc<Self> {
        Self::with_node_proxy(registry, NodeProxy::new(None))
    }

    /// An API server over a registry, reaching node agents (`kubectl
    /// logs`) through `node_proxy`.
    pub fn with_node_proxy(registry: Registry, node_proxy: NodeProxy) -> Arc<Self> {
        Arc::new(ApiServer {
            registry,
            node_proxy,
            loop_metrics: std::sync::OnceLock::new(),
            tokens: std::sync::OnceLock::new(),
            restricted_tokens: std::sync::OnceLock::new(),
            ca_pem: std::sync::OnceLock::new(),
            join_bundle: std::sync::OnceLock::new(),
            removed: watch::channel(false).0,
            requests: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// Serves the cluster's CA bundle at `/cacerts` (set once).
    pub fn serve_ca(&self, pem: String) {
        let _ = self.ca_pem.set(pem);
    }

    /// Hands `bundle` to authenticated callers of `/orch/v1/join-bundle`
    /// (set once): what a master joining the cluster needs before it can
    /// talk to its peers (orchd: the cluster CA).
    pub fn serve_join_bundle(&self, bundle: Bytes) {
        let _ = self.join_bundle.set(bundle);
    }

    /// Returns once this master's own store member has been removed from
    /// the cluster through its API (`orchd leave`).
    pub async fn removed_from_cluster(&self) {
        let mut removed = self.removed.subscribe();
        let _ = removed.wait_for(|removed| *removed).await;
    }

    /// Records that this master's own member was removed.
    fn mark_removed(&self) {
        self.removed.send_replace(true);
    }

    /// The join bundle, if one is served.
    fn join_bundle(&self) -> Option<&Bytes> {
        self.join_bundle.get()
    }

    /// From now on every request but [`PUBLIC_PATHS`] must carry
    /// `Authorization: Bearer <one of tokens>` (set once; 401 otherwise).
    pub fn require_tokens(&self, tokens: Vec<String>) {
        let tokens: Vec<String> = tokens.into_iter().filter(|t| !t.is_empty()).collect();
        if !tokens.is_empty() {
            let _ = self.tokens.set(tokens);
        }
    }

    /// Also accepts `tokens`, but not under `/orch/v1/` (members, the
    /// join bundle, key rotation): 403 there (set once). Takes effect with
    /// [`require_tokens`](Self::require_tokens).
    pub fn allow_restricted_tokens(&self, tokens: Vec<String>) {
        let tokens: Vec<String> = tokens.into_iter().filter(|t| !t.is_empty()).collect();
        let _ = self.restricted_tokens.set(tokens);
    }

    /// Whether `req` may be served: `Err` is the refusal (401 without a
    /// known token, 403 for a restricted token on an administration path).
    fn authorize<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        let Some(tokens) = self.tokens.get() else {
            return Ok(());
        };
        if PUBLIC_PATHS.contains(&req.uri().path()) {
            return Ok(());
        }
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let known = |list: &[String]| {
            list.iter()
                .any(|t| constant_time_eq(t.as_bytes(), given.as_bytes()))
        };
        if known(tokens) {
            return Ok(());
        }
        if self.restricted_tokens.get().is_some_and(|r| known(r)) {
            if req.uri().path().starts_with(members::PREFIX) {
                return Err(ApiError::forbidden(format!(
                    "{} is not open to the agents' token",
                    req.uri().path()
                )));
            }
            return Ok(());
        }
        Err(ApiError::unauthorized("Unauthorized"))
    }

    /// Serves these control-loop metrics at `/metrics` (set once).
    pub fn serve_loop_metrics(&self, metrics: MetricsRegistry) {
        let _ = self.loop_metrics.set(metrics);
    }

    /// The `/metrics` page in Prometheus' text format: this master's
    /// store member and Raft state, the API requests served, and the
    /// control loops' counters (none on a master that never led).
    pub fn metrics_text(&self) -> String {
        let status = self.registry.store().status();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        };
        gauge(
            "orch_store_revision",
            "The store revision applied on this member.",
            status.revision.max(0) as u64,
        );
        gauge(
            "orch_store_compacted_revision",
            "The store's compacted revision.",
            status.compacted.max(0) as u64,
        );
        gauge("orch_raft_term", "The current Raft term.", status.term);
        gauge(
            "orch_raft_applied_index",
            "The last applied Raft log index.",
            status.applied_index,
        );
        gauge(
            "orch_raft_is_leader",
            "1 if this member leads.",
            u64::from(status.leader == Some(status.id)),
        );
        gauge(
            "orch_raft_has_leader",
            "1 if this member knows a leader.",
            u64::from(status.leader.is_some()),
        );
        gauge(
            "orch_raft_voters",
            "Voting members.",
            status.voters.len() as u64,
        );
        gauge(
            "orch_raft_learners",
            "Learners.",
            status.learners.len() as u64,
        );
        out.push_str("# HELP orch_apiserver_requests_total API requests answered, by method and code.\n# TYPE orch_apiserver_requests_total counter\n");
        for ((method, code), count) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push_str(&format!(
                "orch_apiserver_requests_total{{method=\"{method}\",code=\"{code}\"}} {count}\n"
            ));
        }
        if let Some(loops) = self.loop_metrics.get() {
            out.push_str(&loops.prometheus_text());
        }
        out
    }

    /// Counts an answered request.
    fn count_request(&self, method: &hyper::Method, code: StatusCode) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method.to_string(), code.as_u16()))
            .or_default() += 1;
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The client of node agents.
    pub fn node_proxy(&self) -> &NodeProxy {
        &self.node_proxy
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A running API server.
pub struct ServerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Serves the API on `listener` (plain HTTP) until the handle is shut
/// down.
pub fn serve(listener: TcpListener, server: Arc<ApiServer>) -> std::io::Result<ServerHandle> {
    serve_with(listener, server, None)
}

/// Serves the API on `listener`, over TLS when `tls` is given, until the
/// handle is shut down.
pub fn serve_with(
    listener: TcpListener,
    server: Arc<ApiServer>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let handler = move |req| handle(server.clone(), req);
    let task = match tls {
        None => tokio::spawn(orch_raft_store::network::serve_http(
            listener, stopped, handler,
        )),
        Some(tls) => tokio::spawn(orch_raft_store::network::serve_https(
            listener, stopped, tls, handler,
        )),
    };
    Ok(ServerHandle { addr, stop, task })
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("static response parts are valid")
}

pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &error.to_status())
}

/// A request to switch protocols: only `pods/{name}/exec` takes one (the
/// stream is relayed to the pod's agent); anything else is refused.
async fn upgrade(server: &ApiServer, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    match parse_route(req.uri().path())? {
        Route::Object {
            resource,
            namespace,
            name,
            subresource: Some(sub),
        } if resource.plural == "pods" && sub == "exec" => {
            let namespace = namespace.unwrap_or_else(|| "default".to_string());
            proxy::pod_exec(server.node_proxy(), server.registry(), &namespace, &name, req).await
        }
        Route::Object {
            resource,
            subresource: Some(sub),
            ..
        } if resource.plural == "pods" && (sub == "attach" || sub == "portforward") => {
            Err(ApiError::bad_request(format!(
                "orch does not serve pods/{sub}: a container's output is in its log (kubectl logs -f)"
            )))
        }
        _ => Err(ApiError::bad_request(format!(
            "{} does not switch protocols",
            req.uri().path()
        ))),
    }
}

async fn handle(server: Arc<ApiServer>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let response = answer(server.clone(), req).await;
    server.count_request(&method, response.status());
    response
}

async fn answer(server: Arc<ApiServer>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("api", %method, %path);
    async move {
        if let Err(refusal) = server.authorize(&req) {
            tracing::debug!(code = refusal.code, "request refused");
            return error_response(&refusal);
        }
        if req.uri().path() == "/cacerts" {
            if let Some(pem) = server.ca_pem.get() {
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/x-pem-file")
                    .body(Full::new(Bytes::from(pem.clone())).boxed())
                    .expect("static response parts are valid");
            }
        }
        if proxy::is_upgrade(&req) {
            return match upgrade(&server, req).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::debug!(code = e.code, message = %e.message, "upgrade refused");
                    error_response(&e)
                }
            };
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return error_response(&ApiError::too_large(format!(
                    "the request body is larger than {MAX_BODY_BYTES} bytes"
                )))
            }
            Err(e) => return error_response(&ApiError::bad_request(format!("reading the request body: {e}"))),
        };
        let response = dispatch(&server, &parts, body).await;
        match response {
            Ok(response) => response,
            Err(e) => {
                if e.code >= 500 {
                    tracing::warn!(code = e.code, reason = e.reason, message = %e.message, "request failed");
                } else {
                    tracing::debug!(code = e.code, reason = e.reason, message = %e.message, "request refused");
                }
                error_response(&e)
            }
        }
    }
    .instrument(span)
    .await
}
