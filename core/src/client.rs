//! The typed client of the API, with two transports: in-process (requests
//! go straight to the API server's handlers, no socket: for embedding and
//! for control loops on the leader) and HTTP (for remote agents and tools).
//! Both run the same handler code, so they behave the same.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::Resource as K8sResource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::patch::PatchType;
use crate::registry::EventType;
use crate::resource;
use crate::server::ApiServer;

type Body = BoxBody<Bytes, ApiError>;

enum Transport {
    InProcess(Arc<ApiServer>),
    Http(HttpTransport),
}

/// The API over HTTP, at one or more masters' addresses.
struct HttpTransport {
    /// `http://host:port` of each master.
    bases: Vec<String>,
    /// The master asked first (the last one that answered).
    current: std::sync::atomic::AtomicUsize,
    /// Sent as `Authorization: Bearer <token>`.
    token: Option<String>,
    http: Box<
        hyper_util::client::legacy::Client<
            hyper_rustls::HttpsConnector<HttpConnector>,
            Full<Bytes>,
        >,
    >,
}

impl HttpTransport {
    /// Sends a request to the current master; on a connection that cannot
    /// be made (nothing was sent) the next masters are tried in turn, and
    /// the one that answers becomes the current one.
    async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        user_agent: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
        use std::sync::atomic::Ordering;
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for offset in 0..self.bases.len() {
            let index = (first + offset) % self.bases.len();
            let base = &self.bases[index];
            let mut request = hyper::Request::builder()
                .method(method.clone())
                .uri(format!("{base}{path}"))
                .header("content-type", content_type)
                .header("user-agent", user_agent);
            if let Some(token) = &self.token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let request = request
                .body(Full::new(Bytes::from(body.clone())))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            match self.http.request(request).await {
                Ok(response) => {
                    if index != first {
                        tracing::info!(server = %base, "API server changed");
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return Ok(response);
                }
                Err(e) if e.is_connect() && self.bases.len() > 1 => {
                    tracing::debug!(server = %base, error = %e, "API server unreachable; trying the next");
                    last_error = format!("{base}: {e}");
                }
                Err(e) => {
                    // Maybe sent: not repeated here, but the next request
                    // starts at the next master.
                    self.current
                        .store((index + 1) % self.bases.len(), Ordering::Relaxed);
                    return Err(ApiError::unavailable(format!(
                        "API server unreachable: {e}"
                    )));
                }
            }
        }
        Err(ApiError::unavailable(format!(
            "no API server reachable (last: {last_error})"
        )))
    }
}

/// A typed client of the Kubernetes API served by orch. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: Arc<Transport>,
    /// Sent as `User-Agent`; its product names this client as the field
    /// manager of its writes.
    user_agent: Arc<str>,
}

fn reason_of(reason: &str) -> &'static str {
    match reason {
        "BadRequest" => "BadRequest",
        "NotFound" => "NotFound",
        "AlreadyExists" => "AlreadyExists",
        "Conflict" => "Conflict",
        "Invalid" => "Invalid",
        "Forbidden" => "Forbidden",
        "Expired" | "Gone" => "Expired",
        "RequestEntityTooLarge" => "RequestEntityTooLarge",
        "MethodNotAllowed" => "MethodNotAllowed",
        "UnsupportedMediaType" => "UnsupportedMediaType",
        "ServiceUnavailable" => "ServiceUnavailable",
        _ => "InternalError",
    }
}

/// Turns a `Status` body back into an [`ApiError`].
fn error_from_status(code: u16, body: &[u8]) -> ApiError {
    let status: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ApiError {
        code,
        reason: reason_of(status["reason"].as_str().unwrap_or("")),
        message: status["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_string(),
        details: None,
        causes: Vec::new(),
    }
}

/// The path of every `K` in `namespace`, or in all namespaces when it is
/// `None` (for lists and watches).
fn list_path<K: K8sResource>(namespace: Option<&str>) -> Result<String, ApiError> {
    let served = resource::find(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
        .ok_or_else(|| ApiError::bad_request(format!("{} is not served by orch", K::KIND)))?;
    match (served.namespaced, namespace) {
        (true, None) => Ok(format!("{}/{}", api_base::<K>(), K::URL_PATH_SEGMENT)),
        _ => collection_path::<K>(namespace),
    }
}

fn api_base<K: K8sResource>() -> String {
    if K::GROUP.is_empty() {
        format!("/api/{}", K::VERSION)
    } else {
        format!("/apis/{}/{}", K::GROUP, K::VERSION)
    }
}

/// The collection path of kind `K` (in `namespace` when namespaced).
fn collection_path<K: K8sResource>(namespace: Option<&str>) -> Result<String, ApiError> {
    let served = resource::find(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
        .ok_or_else(|| ApiError::bad_request(format!("{} is not served by orch", K::KIND)))?;
    let base = api_base::<K>();
    Ok(match (served.namespaced, namespace) {
        (true, Some(ns)) => format!("{base}/namespaces/{ns}/{}", K::URL_PATH_SEGMENT),
        (true, None) => {
            return Err(ApiError::bad_request(format!(
                "{} is namespaced: a namespace is required",
                K::KIND
            )))
        }
        (false, _) => format!("{base}/{}", K::URL_PATH_SEGMENT),
    })
}

/// Label and field selectors of a list or watch, in the API's syntax
/// (`app=web,tier!=db`, `spec.nodeName=n1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    /// `labelSelector`.
    pub labels: Option<String>,
    /// `fieldSelector`.
    pub fields: Option<String>,
}

impl Selectors {
    /// Selects by field only.
    pub fn fields(selector: impl Into<String>) -> Self {
        Selectors {
            labels: None,
            fields: Some(selector.into()),
        }
    }

    /// The query parameters, led by `first` (`?` or `&`), or nothing.
    fn query(&self, first: char) -> String {
        let mut query = String::new();
        for (name, value) in [
            ("labelSelector", &self.labels),
            ("fieldSelector", &self.fields),
        ] {
            if let Some(value) = value {
                query.push(if query.is_empty() { first } else { '&' });
                query.push_str(&format!("{name}={}", percent_encode(value)));
            }
        }
        query
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// A client that calls the API server's handlers directly.
    pub fn in_process(server: Arc<ApiServer>) -> Self {
        Client {
            transport: Arc::new(Transport::InProcess(server)),
            user_agent: Arc::from("orch-control-plane"),
        }
    }

    /// The same client, sending `user_agent` (`product/version ...`): the
    /// product names it as the field manager of what it writes.
    pub fn with_user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = Arc::from(user_agent);
        self
    }

    /// A client of the API at `addr` (`host:port`, plain HTTP), without
    /// credentials.
    pub fn http(addr: impl Into<String>) -> Self {
        Client::http_servers(vec![addr.into()], None)
    }

    /// A client of the API served by the masters at `addrs` (`host:port`
    /// each, plain HTTP), sending `token` as a bearer token. It talks to
    /// one master at a time and moves on to the next when it cannot
    /// connect.
    pub fn http_servers(addrs: Vec<String>, token: Option<String>) -> Self {
        Client::over(
            &addrs,
            "http",
            token,
            crate::tls::client_config_without_roots(),
        )
    }

    /// [`Client::http_servers`] over HTTPS, trusting only the CA
    /// certificates of `ca_pem` (the cluster's CA).
    pub fn https_servers(
        addrs: Vec<String>,
        token: Option<String>,
        ca_pem: &str,
    ) -> Result<Self, ApiError> {
        Ok(Client::over(
            &addrs,
            "https",
            token,
            crate::tls::client_config(ca_pem)?,
        ))
    }

    fn over(
        addrs: &[String],
        scheme: &str,
        token: Option<String>,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = Box::new(
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector),
        );
        Client {
            transport: Arc::new(Transport::Http(HttpTransport {
                bases: addrs.iter().map(|a| format!("{scheme}://{a}")).collect(),
                current: std::sync::atomic::AtomicUsize::new(0),
                token,
                http,
            })),
            user_agent: Arc::from(concat!("orch/", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// The `host:port` of the API server an HTTP client talks to now
    /// (`None` in process).
    pub fn address(&self) -> Option<String> {
        match &*self.transport {
            Transport::Http(http) => {
                let index = http.current.load(std::sync::atomic::Ordering::Relaxed);
                http.bases
                    .get(index)
                    .and_then(|b| b.split_once("://"))
                    .map(|(_, addr)| addr.to_string())
            }
            Transport::InProcess(_) => None,
        }
    }

    /// Sends a request; an error status becomes an [`ApiError`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Body, ApiError> {
        match &*self.transport {
            Transport::InProcess(server) => {
                let (parts, ()) = hyper::Request::builder()
                    .method(method)
                    .uri(path)
                    .header("content-type", content_type)
                    .header("user-agent", &*self.user_agent)
                    .body(())
                    .map_err(|e| ApiError::bad_request(e.to_string()))?
                    .into_parts();
                let response = crate::server::dispatch(server, &parts, Bytes::from(body)).await?;
                let status = response.status().as_u16();
                let body = response.into_body().map_err(|never| match never {}).boxed();
                if status >= 400 {
                    let bytes = body.collect().await?.to_bytes();
                    return Err(error_from_status(status, &bytes));
                }
                Ok(body)
            }
            Transport::Http(http) => {
                let response = http
                    .request(method, path, content_type, body, &self.user_agent)
                    .await?;
                let status = response.status().as_u16();
                let body = response
                    .into_body()
                    .map_err(|e| ApiError::unavailable(format!("reading the answer: {e}")))
                    .boxed();
                if status >= 400 {
                    let bytes = body.collect().await?.to_bytes();
                    return Err(error_from_status(status, &bytes));
                }
                Ok(body)
            }
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<T, ApiError> {
        let bytes = self
            .send(method, path, content_type, body)
            .await?
            .collect()
            .await?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("undecodable answer: {e}")))
    }

    /// Sends a JSON request to one of orch's own paths (`/orch/v1/...`,
    /// see [`crate::server::members`]) and returns the JSON answer.
    pub async fn request_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ApiError> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.call(method, path, "application/json", body).await
    }

    /// Creates an object.
    pub async fn create<K: K8sResource + Serialize + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        object: &K,
    ) -> Result<K, ApiError> {
        let body = serde_json::to_vec(object).map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.call(
            Method::POST,
            &collection_path::<K>(namespace)?,
            "application/json",
            body,
        )
        .await
    }

    /// POSTs `body` to a subresource of an object (e.g. a Pod's `binding`
    /// or `eviction`); returns the answer.
    pub async fn create_subresource<K: K8sResource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let path = format!("{}/{name}/{subresource}", collection_path::<K>(namespace)?);
        self.call(
            Method::POST,
            &path,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// Reads an object.
    pub async fn get<K: K8sResource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<K, ApiError> {
        let path = format!("{}/{name}", collection_path::<K>(namespace)?);
        self.call(Method::GET, &path, "application/json", Vec::new())
            .await
    }

    /// Lists objects (of one namespace, or of all with `None`), optionally
    /// by label selector; returns them with the list's resourceVersion (to
    /// watch from).
    pub async fn list<K: K8sResource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        label_selector: Option<&str>,
    ) -> Result<(Vec<K>, String), ApiError> {
        let selectors = Selectors {
            labels: label_selector.map(str::to_string),
            fields: None,
        };
        self.list_selected(namespace, &selectors).await
    }

    /// Lists the objects that match `selectors` (of one namespace, or of
    /// all with `None`); returns them with the list's resourceVersion.
    pub async fn list_selected<K: K8sResource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        selectors: &Selectors,
    ) -> Result<(Vec<K>, String), ApiError> {
        let path = format!("{}{}", list_path::<K>(namespace)?, selectors.query('?'));
        let list: Value = self
            .call(Method::GET, &path, "application/json", Vec::new())
            .await?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let items = serde_json::from_value(list["items"].clone())
            .map_err(|e| ApiError::internal(format!("undecodable list: {e}")))?;
        Ok((items, rv))
    }

    /// Replaces an object (optimistic concurrency on its resourceVersion).
    pub async fn replace<K: K8sResource + Serialize + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        object: &K,
    ) -> Result<K, ApiError> {
        let path = format!("{}/{name}", collection_path::<K>(namespace)?);
        let body = serde_json::to_vec(object).map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.call(Method::PUT, &path, "application/json", body)
            .await
    }

    /// Patches an object (`subresource` e.g. `status`).
    pub async fn patch<K: K8sResource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        kind: PatchType,
        patch: &Value,
    ) -> Result<K, ApiError> {
        let mut path = format!("{}/{name}", collection_path::<K>(namespace)?);
        if let Some(sub) = subresource {
            path = format!("{path}/{sub}");
        }
        let content_type = match kind {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Strategic => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        };
        self.call(
            Method::PATCH,
            &path,
            content_type,
            patch.to_string().into_bytes(),
        )
        .await
    }

    /// Deletes an object; returns the store revision of the deletion (or
    /// of the update that marked the object for deletion, when finalizers
    /// or a grace period keep it for now).
    pub async fn delete<K: K8sResource>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<u64, ApiError> {
        self.delete_with::<K>(namespace, name, &Value::Null).await
    }

    /// Deletes an object with `DeleteOptions` (e.g.
    /// `{"propagationPolicy": "Foreground"}`, or `preconditions`).
    pub async fn delete_with<K: K8sResource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<u64, ApiError> {
        let path = format!("{}/{name}", collection_path::<K>(namespace)?);
        let body = if options.is_null() {
            Vec::new()
        } else {
            options.to_string().into_bytes()
        };
        let answer: Value = self
            .call(Method::DELETE, &path, "application/json", body)
            .await?;
        Ok(answer["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0))
    }

    /// Watches objects (of one namespace, or of all with `None`) after
    /// `resource_version` (empty: current objects first, as ADDED).
    /// Bookmarks are skipped.
    pub async fn watch<K: K8sResource + DeserializeOwned + Send + 'static>(
        &self,
        namespace: Option<&str>,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<(EventType, K), ApiError>> + Send + 'static, ApiError>
    {
        self.watch_selected(namespace, resource_version, &Selectors::default())
            .await
    }

    /// Watches the objects that match `selectors` after
    /// `resource_version`, as [`Client::watch`] does.
    pub async fn watch_selected<K: K8sResource + DeserializeOwned + Send + 'static>(
        &self,
        namespace: Option<&str>,
        resource_version: &str,
        selectors: &Selectors,
    ) -> Result<impl Stream<Item = Result<(EventType, K), ApiError>> + Send + 'static, ApiError>
    {
        let path = format!(
            "{}?watch=1&resourceVersion={}{}",
            list_path::<K>(namespace)?,
            percent_encode(resource_version),
            selectors.query('&')
        );
        let body = self
            .send(Method::GET, &path, "application/json", Vec::new())
            .await?;
        let lines = futures::stream::unfold(
            (body, Vec::<u8>::new()),
            |(mut body, mut buffer)| async move {
                loop {
                    if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        return Some((Ok(line), (body, buffer)));
                    }
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                buffer.extend_from_slice(&data);
                            }
                        }
                        Some(Err(e)) => return Some((Err(e), (body, buffer))),
                        None => return None,
                    }
                }
            },
        );
        Ok(lines.filter_map(|line| async move {
            let line = match line {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            let event: Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(e) => {
                    return Some(Err(ApiError::internal(format!(
                        "undecodable watch event: {e}"
                    ))))
                }
            };
            let kind = match event["type"].as_str() {
                Some("ADDED") => EventType::Added,
                Some("MODIFIED") => EventType::Modified,
                Some("DELETED") => EventType::Deleted,
                Some("ERROR") => {
                    let code = event["object"]["code"].as_u64().unwrap_or(500) as u16;
                    return Some(Err(error_from_status(
                        code,
                        event["object"].to_string().as_bytes(),
                    )));
                }
                _ => return None,
            };
            Some(
                serde_json::from_value::<K>(event["object"].clone())
                    .map(|object| (kind, object))
                    .map_err(|e| ApiError::internal(format!("undecodable watch object: {e}"))),
            )
        }))
    }
}
