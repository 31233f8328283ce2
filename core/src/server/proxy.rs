//! Requests the API server passes on to a node's agent: a pod's `log`
//! subresource (`kubectl logs`) becomes `GET /containerLogs/{ns}/{pod}/{container}`
//! on the agent of the pod's node, and the agent's answer streams back
//! unchanged.
//!
//! Core knows nothing of containers or hosts here either: it checks the
//! container name against the Pod object, takes the agent's address from
//! the Node object (`status.addresses`, `status.daemonEndpoints`) and
//! proxies HTTP to it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tracing::Instrument;

use super::request::Query;
use super::Body;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::resource;

/// How long the agent may take to answer a request's headers (a follow
/// stream answers its headers at once and then streams).
const AGENT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting to an agent may take.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest error body read from an agent.
const MAX_AGENT_ERROR_BYTES: usize = 64 << 10;

/// Query parameters of a `log` request passed on to the agent (the
/// `PodLogOptions` fields but `container`, which goes into the path).
const LOG_PARAMETERS: &[&str] = &[
    "follow",
    "previous",
    "tailLines",
    "limitBytes",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "stream",
];

/// The API server's client of node agents: an HTTP client and the
/// credentials the agents require.
pub struct NodeProxy {
    client: hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>,
    agent_token: Option<String>,
}

impl std::fmt::Debug for NodeProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProxy")
            .field("agent_token", &self.agent_token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl NodeProxy {
    /// A proxy sending `Authorization: Bearer <agent_token>` to agents when
    /// a token is given.
    pub fn new(agent_token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(AGENT_CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        NodeProxy {
            client: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build(connector),
            agent_token: agent_token.filter(|t| !t.is_empty()),
        }
    }

    /// `GET` of `path_and_query` on the agent at `authority` (`host:port`),
    /// the answer streamed back; agent errors become API errors.
    async fn get(
        &self,
        node: &str,
        authority: &str,
        path_and_query: &str,
    ) -> Result<Response<Body>, ApiError> {
        let uri = format!("http://{authority}{path_and_query}");
        let mut request = Request::builder().method(Method::GET).uri(&uri);
        if let Some(token) = &self.agent_token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| ApiError::internal(format!("building the request to {uri}: {e}")))?;
        let unreachable = |detail: String| {
            ApiError::unavailable(format!(
                "the agent of node {node} at {authority} cannot be reached: {detail}"
            ))
        };
        let response = match tokio::time::timeout(
            AGENT_RESPONSE_TIMEOUT,
            self.client.request(request),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(unreachable(error_chain(&e))),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {}s",
                    AGENT_RESPONSE_TIMEOUT.as_secs()
                )))
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Err(agent_error(node, status, response.into_body()).await);
        }
        tracing::debug!(%status, "agent answered; streaming");
        let mut builder = Response::builder().status(StatusCode::OK);
        for name in ["content-type", "cache-control"] {
            if let Some(value) = response.headers().get(name) {
                builder = builder.header(name, value.clone());
            }
        }
        Ok(builder
            .body(stream_through(response.into_body()))
            .expect("headers copied from a valid response"))
    }
}

/// The text of an error and its sources (hyper's own message alone is
/// "client error (Connect)").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The agent's body as the API server's, chunk by chunk as it arrives; a
/// broken agent connection ends the stream (the client sees the end of
/// the logs, as with kube-apiserver).
fn stream_through(body: Incoming) -> Body {
    let chunks = body.into_data_stream().scan((), |_, chunk| {
        std::future::ready(match chunk {
            Ok(bytes) => Some(Ok::<_, Infallible>(Frame::data(bytes))),
            Err(e) => {
                tracing::debug!(error = %e, "agent stream ended");
                None
            }
        })
    });
    BodyExt::boxed(StreamBody::new(chunks))
}

/// An agent's error answer as an API error: its `Status` when it sent one,
/// else its text under its HTTP code. An agent refusing the API server's
/// credentials is a fault of the cluster's setup, not of the client's
/// request, so it is not passed on as 401/403.
async fn agent_error(node: &str, status: StatusCode, body: Incoming) -> ApiError {
    let bytes = http_body_util::Limited::new(body, MAX_AGENT_ERROR_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let code = status.as_u16();
    if code == 401 || code == 403 {
        return ApiError::internal(format!(
            "the agent of node {node} refused the API server's credentials ({status})"
        ));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) if value["kind"] == "Status" => ApiError::from_status(&value, code),
        _ => {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            let text = if text.is_empty() {
                format!("the agent of node {node} answered {status}")
            } else {
                text
            };
            ApiError::from_status(&serde_json::json!({"message": text}), code)
        }
    }
}

/// Percent-encodes a path segment (anything but RFC 3986 unreserved
/// characters).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The names of a pod's containers of one kind (`containers`,
/// `initContainers`, `ephemeralContainers`).
fn container_names<'a>(pod: &'a Value, field: &str) -> Vec<&'a str> {
    pod["spec"][field]
        .as_array()
        .map(|list| list.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// The container a log request is about, as kube-apiserver chooses it:
/// the one named (which must be in the pod), else the only one.
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let containers = container_names(pod, "containers");
    match asked.filter(|c| !c.is_empty()) {
        Some(asked) => {
            let known = containers
                .iter()
                .chain(container_names(pod, "initContainers").iter())
                .chain(container_names(pod, "ephemeralContainers").iter())
                .any(|c| *c == asked);
            if known {
                Ok(asked.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {asked} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [only] => Ok(only.to_string()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => {
                let mut message = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                );
                let init = container_names(pod, "initContainers");
                if !init.is_empty() {
                    message.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                Err(ApiError::bad_request(message))
            }
        },
    }
}

/// `host:port` of a node's agent: its InternalIP (else Hostname) address
/// and the port of `status.daemonEndpoints.kubeletEndpoint`.
pub(crate) fn agent_authority(node: &Value) -> Result<String, ApiError> {
    let name = node["metadata"]["name"].as_str().unwrap_or("");
    let addresses = node["status"]["addresses"].as_array();
    let address_of = |kind: &str| {
        addresses.and_then(|list| {
            list.iter()
                .find(|a| a["type"] == kind && a["address"].as_str().is_some_and(|s| !s.is_empty()))
                .and_then(|a| a["address"].as_str())
        })
    };
    let host = address_of("InternalIP")
        .or_else(|| address_of("Hostname"))
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {name} reports no InternalIP or Hostname address"
            ))
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {name} reports no agent port (status.daemonEndpoints.kubeletEndpoint.Port)"
            ))
        })?;
    if host.contains(':') && !host.starts_with('[') {
        Ok(format!("[{host}]:{port}"))
    } else {
        Ok(format!("{host}:{port}"))
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/log`: the container's log from
/// the agent of the pod's node.
pub(crate) async fn pod_log(
    proxy: &NodeProxy,
    registry: &Registry,
    namespace: &str,
    name: &str,
    raw_query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(raw_query);
    let target = agent_target(registry, namespace, name, query.get("container"), false).await?;
    let path = target.path("containerLogs", namespace, name, raw_query, LOG_PARAMETERS);
    let span = tracing::info_span!("pod_log", %namespace, pod = %name, container = %target.container, node = %target.node);
    async move {
        tracing::debug!(authority = %target.authority, %path, "proxying to the node agent");
        proxy.get(&target.node, &target.authority, &path).await
    }
    .instrument(span)
    .await
}

/// Where a request for a pod's container goes: the container (checked
/// against the pod) and the agent of the pod's node.
struct AgentTarget {
    container: String,
    node: String,
    authority: String,
}

impl AgentTarget {
    /// The agent's path for `kind` (`containerLogs`, `exec`) with the
    /// `kept` parameters of the client's raw query.
    fn path(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        raw_query: Option<&str>,
        kept: &[&str],
    ) -> String {
        format!(
            "/{kind}/{}/{}/{}{}",
            encode_segment(namespace),
            encode_segment(name),
            encode_segment(&self.container),
            kept_query(raw_query, kept)
        )
    }
}

/// Finds the container a request is about and the agent of its pod's
/// node, as kube-apiserver checks them; `refuse_completed` refuses pods
/// that have finished (exec).
async fn agent_target(
    registry: &Registry,
    namespace: &str,
    name: &str,
    container: Option<&str>,
    refuse_completed: bool,
) -> Result<AgentTarget, ApiError> {
    let pods = resource::find("", "v1", "pods").expect("pods are served");
    let nodes = resource::find("", "v1", "nodes").expect("nodes are served");
    let pod = registry.get(pods, Some(namespace), name).await?;
    let container = pick_container(&pod, name, container)?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if refuse_completed && matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let authority = agent_authority(&registry.get(nodes, None, &node).await?)?;
    Ok(AgentTarget {
        container,
        node,
        authority,
    })
}

/// Query parameters of an `exec` request passed on to the agent.
const EXEC_PARAMETERS: &[&str] = &["command", "stdin", "stdout", "stderr", "tty"];

/// Request headers of an upgrade passed on to the agent (the WebSocket
/// handshake, and SPDY's so that the agent can refuse it by name).
const UPGRADE_REQUEST_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Response headers of an agent's `101 Switching Protocols` passed back.
const UPGRADE_RESPONSE_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Whether a request asks to switch protocols (`Connection: Upgrade` with
/// an `Upgrade` header), as `kubectl exec` does.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    let connection = req
        .headers()
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection && req.headers().contains_key("upgrade")
}

/// The query passed on to the agent: `raw`'s pairs whose key is one of
/// `keep`, still encoded.
fn kept_query(raw: Option<&str>, keep: &[&str]) -> String {
    let kept: Vec<&str> = raw
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            keep.contains(&key)
        })
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

impl NodeProxy {
    /// Sends the upgrade request `req` to `path_and_query` on the agent at
    /// `authority` and, once the agent has switched protocols, splices the
    /// client's connection to the agent's: the API server relays bytes and
    /// reads none of them.
    async fn upgrade(
        &self,
        node: &str,
        authority: &str,
        path_and_query: &str,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let unreachable = |detail: String| {
            ApiError::unavailable(format!(
                "the agent of node {node} at {authority} cannot be reached: {detail}"
            ))
        };
        let stream = match tokio::time::timeout(
            AGENT_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(authority),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("connect timed out".to_string())),
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "agent connection ended");
            }
        });
        let mut request = Request::builder()
            .method(req.method().clone())
            .uri(path_and_query)
            .header("host", authority);
        for name in UPGRADE_REQUEST_HEADERS {
            for value in req.headers().get_all(*name) {
                request = request.header(*name, value.clone());
            }
        }
        if let Some(token) = &self.agent_token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(format!("building the upgrade request: {e}")))?;
        let mut response = match tokio::time::timeout(
            AGENT_RESPONSE_TIMEOUT,
            sender.send_request(request),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(unreachable(error_chain(&e))),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {}s",
                    AGENT_RESPONSE_TIMEOUT.as_secs()
                )))
            }
        };
        let status = response.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(agent_error(node, status, response.into_body()).await);
        }
        let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for name in UPGRADE_RESPONSE_HEADERS {
            for value in response.headers().get_all(*name) {
                answer = answer.header(*name, value.clone());
            }
        }
        let from_client = hyper::upgrade::on(&mut req);
        let to_agent = hyper::upgrade::on(&mut response);
        tokio::spawn(
            async move {
                match tokio::try_join!(from_client, to_agent) {
                    Ok((client, agent)) => {
                        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
                        match tokio::io::copy_bidirectional(&mut client, &mut agent).await {
                            Ok((up, down)) => tracing::debug!(up, down, "stream ended"),
                            Err(e) => tracing::debug!(error = %e, "stream broke"),
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "the upgrade did not complete"),
                }
            }
            .instrument(tracing::Span::current()),
        );
        Ok(answer
            .body(BodyExt::boxed(Empty::new().map_err(|never| match never {})))
            .expect("headers copied from a valid response"))
    }
}

/// `pods/{name}/exec` with an upgrade: checks the pod and container as
/// kube-apiserver does, then splices the stream to the agent of the pod's
/// node, which runs the command (see the agent's `server::exec`).
pub(crate) async fn pod_exec(
    proxy: &NodeProxy,
    registry: &Registry,
    namespace: &str,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let raw_query = req.uri().query().map(str::to_string);
    let query = Query::parse(raw_query.as_deref());
    let target = agent_target(registry, namespace, name, query.get("container"), true).await?;
    let path = target.path(
        "exec",
        namespace,
        name,
        raw_query.as_deref(),
        EXEC_PARAMETERS,
    );
    let span = tracing::info_span!("pod_exec", %namespace, pod = %name, container = %target.container, node = %target.node);
    async move {
        tracing::debug!(authority = %target.authority, %path, "upgrading through the node agent");
        proxy
            .upgrade(&target.node, &target.authority, &path, req)
            .await
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_checked_against_the_pod() {
        let pod = json!({"spec": {
            "containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "init"}],
        }});
        assert_eq!(pick_container(&pod, "p", Some("b")).unwrap(), "b");
        assert_eq!(pick_container(&pod, "p", Some("init")).unwrap(), "init");
        assert_eq!(
            pick_container(&pod, "p", Some("c")).unwrap_err().message,
            "container c is not valid for pod p"
        );
        assert_eq!(
            pick_container(&pod, "p", None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [init]"
        );
        let single = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(pick_container(&single, "p", Some("")).unwrap(), "only");
    }

    #[test]
    fn the_agent_address_comes_from_the_node_status() {
        let node = |addresses: Value, port: Value| {
            json!({"metadata": {"name": "n"}, "status": {
                "addresses": addresses,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            }})
        };
        let both = json!([{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}]);
        assert_eq!(
            agent_authority(&node(both, json!(10250))).unwrap(),
            "10.0.0.5:10250"
        );
        let host = json!([{"type": "Hostname", "address": "n1"}]);
        assert_eq!(
            agent_authority(&node(host.clone(), json!(1))).unwrap(),
            "n1:1"
        );
        let v6 = json!([{"type": "InternalIP", "address": "fd00::1"}]);
        assert_eq!(agent_authority(&node(v6, json!(2))).unwrap(), "[fd00::1]:2");
        assert_eq!(
            agent_authority(&node(host, json!(0))).unwrap_err().code,
            503
        );
        assert_eq!(
            agent_authority(&node(json!([]), json!(5)))
                .unwrap_err()
                .code,
            503
        );
    }

    #[test]
    fn only_log_parameters_reach_the_agent() {
        assert_eq!(
            kept_query(
                Some("container=a&follow=true&tailLines=2&pretty=1"),
                LOG_PARAMETERS
            ),
            "?follow=true&tailLines=2"
        );
        assert_eq!(kept_query(None, LOG_PARAMETERS), "");
        assert_eq!(
            kept_query(
                Some("command=ls&command=-l&container=c&stdout=1"),
                EXEC_PARAMETERS
            ),
            "?command=ls&command=-l&stdout=1"
        );
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
