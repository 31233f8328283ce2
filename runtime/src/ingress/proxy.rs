//! The HTTP/1.1 reverse proxy: a hyper server whose every request is
//! routed ([`super::routes`]) from the source's current objects, then sent
//! to one ready endpoint of the backend over a connection of its own.
//!
//! The upstream connection is made before anything of the request is
//! consumed, so an endpoint that refuses (or does not answer the connect in
//! time) is skipped for the next one, up to [`MAX_TRIES`]; once connected,
//! the request is sent once and a failure is a 502. Bodies stream both
//! ways; protocol upgrades (WebSocket) become a byte tunnel.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use orch_core::Client;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::field::{display, Empty};
use tracing::{Instrument, Span};

use super::balance::RoundRobin;
use super::error::IngressError;
use super::events::EventRecorder;
use super::headers;
use super::routes::{self, ServiceRef, DEFAULT_CLASS};
use super::source::IngressSource;

/// The body of the proxy's answers: the backend's, streamed, or its own.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How many endpoints a request tries to connect to before a 502.
pub const MAX_TRIES: usize = 3;

/// How long a client has to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long requests in flight may go on once the proxy is stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The settings of an [`IngressProxy`].
#[derive(Clone)]
pub struct ProxyConfig {
    /// The address to serve on (port 0: any free port).
    pub listen: SocketAddr,
    /// The Ingress class served ([`DEFAULT_CLASS`] by default).
    pub class: String,
    /// The node the proxy runs on, as Events name their source host
    /// (empty: none).
    pub node_name: String,
    /// The API to record Events through (`None`: warnings are only logged).
    pub client: Option<Client>,
    /// How long to wait for an endpoint to accept a connection.
    pub connect_timeout: Duration,
}

impl ProxyConfig {
    /// Serves class [`DEFAULT_CLASS`] on `listen`, without an API, with a
    /// 5 s connect timeout.
    pub fn new(listen: SocketAddr) -> Self {
        ProxyConfig {
            listen,
            class: DEFAULT_CLASS.to_string(),
            node_name: String::new(),
            client: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What the connections of a proxy share.
struct Shared {
    source: Arc<dyn IngressSource>,
    class: String,
    events: EventRecorder,
    balancer: RoundRobin,
    connect_timeout: Duration,
    stop: CancellationToken,
}

/// A running ingress proxy.
pub struct IngressProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl IngressProxy {
    /// Binds `config.listen` and serves, routing from `source`, until
    /// `stop` is cancelled (then no new connection is accepted and those
    /// open are closed once their request in flight is answered).
    pub async fn start(
        config: ProxyConfig,
        source: Arc<dyn IngressSource>,
        stop: CancellationToken,
    ) -> Result<IngressProxy, IngressError> {
        let bind_error = |source| IngressError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        tracing::info!(%addr, class = %config.class, "ingress proxy listening");
        let shared = Arc::new(Shared {
            source,
            class: config.class,
            events: EventRecorder::new(config.client, config.node_name),
            balancer: RoundRobin::default(),
            connect_timeout: config.connect_timeout,
            stop,
        });
        let task = tokio::spawn(accept(listener, shared));
        Ok(IngressProxy { addr, task })
    }

    /// The address the proxy serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the proxy stopped accepting connections.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(shared.clone(), stream, peer));
            }
            Err(e) => {
                // E.g. out of file descriptors: do not spin.
                tracing::warn!(error = %e, "ingress proxy cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracing::info!("ingress proxy stopped");
}

/// Serves one client connection.
async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let stop = shared.stop.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req, peer).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "ingress connection failed");
    }
}

/// Answers one request, in a span of its own.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let host = routes::normalize_host(&headers::host_of(&req));
    let path = req.uri().path().to_string();
    let span = tracing::info_span!(
        "ingress",
        method = %req.method(),
        host = %host,
        path = %path,
        backend = Empty,
        endpoint = Empty,
        status = Empty,
    );
    async move {
        let response = match proxy(&shared, req, peer, &host, &path).await {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(error = %e, "request not proxied");
                text(e.status(), format!("{e}\n"))
            }
        };
        Span::current().record("status", response.status().as_u16());
        tracing::debug!("answered");
        response
    }
    .instrument(span)
    .await
}

/// Routes a request and sends it on.
async fn proxy(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
    host: &str,
    path: &str,
) -> Result<Response<ProxyBody>, IngressError> {
    let ingresses = shared.source.ingresses();
    let route = routes::route(&ingresses, &shared.class, host, path).ok_or_else(|| {
        IngressError::NoRoute {
            host: host.to_string(),
            path: path.to_string(),
        }
    })?;
    let resolved = route.service().and_then(|service| {
        Span::current().record("backend", display(format!("{service}:{}", service.port)));
        let endpoints = routes::endpoints(&*shared.source, &route.ingress_key(), &service)?;
        Ok((service, endpoints))
    });
    let (service, endpoints) = match resolved {
        Ok(resolved) => resolved,
        Err(e) => {
            if let Some(reason) = e.event_reason() {
                shared.events.warn(&route.ingress, reason, &e.to_string());
            }
            return Err(e);
        }
    };
    let endpoints = shared.balancer.order(&service, &endpoints);
    forward(shared, req, peer, &service, &endpoints).await
}

/// Connects to the first endpoint that accepts, of at most [`MAX_TRIES`].
async fn connect(
    service: &ServiceRef,
    endpoints: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), IngressError> {
    let mut last = std::io::Error::other("no endpoint");
    let tries = endpoints.len().min(MAX_TRIES);
    for endpoint in &endpoints[..tries] {
        match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, *endpoint));
            }
            Ok(Err(e)) => {
                tracing::debug!(%endpoint, error = %e, "endpoint refused; trying the next");
                last = e;
            }
            Err(_) => {
                tracing::debug!(%endpoint, "endpoint did not accept in time; trying the next");
                last = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {endpoint} timed out"),
                );
            }
        }
    }
    Err(IngressError::Connect {
        service: service.clone(),
        tried: tries,
        source: last,
    })
}

/// Sends the request to an endpoint and the answer back.
async fn forward(
    shared: &Shared,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    service: &ServiceRef,
    endpoints: &[SocketAddr],
) -> Result<Response<ProxyBody>, IngressError> {
    let (stream, endpoint) = connect(service, endpoints, shared.connect_timeout).await?;
    Span::current().record("endpoint", display(endpoint));
    let upgrade = headers::upgrade_of(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut head = parts.headers;
    let original_host = head.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut head, upgrade.as_ref());
    if let (false, Some(host)) = (head.contains_key(HOST), &original_host) {
        head.insert(HOST, host.clone());
    }
    headers::set_forwarded(&mut head, peer.ip(), original_host.as_ref(), "http");
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = target;
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = head;

    let upstream = |source| IngressError::Upstream {
        service: service.clone(),
        endpoint,
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(upstream)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "upstream connection failed");
        }
    });
    let mut response = sender.send_request(outgoing).await.map_err(upstream)?;

    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let response_upgrade = headers::upgrade_of(response.headers());
    match (switched, client_upgrade, &response_upgrade) {
        (true, Some(client), Some(_)) => {
            let backend = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client, backend, shared.stop.clone()).in_current_span());
            headers::strip_hop_by_hop(response.headers_mut(), response_upgrade.as_ref());
        }
        _ => headers::strip_hop_by_hop(response.headers_mut(), None),
    }
    Ok(response.map(BodyExt::boxed))
}

/// Copies bytes both ways between an upgraded client connection and the
/// upgraded backend connection, until either closes or the proxy stops.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    stop: CancellationToken,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = copied {
                tracing::debug!(error = %e, "upgraded connection failed");
            }
        }
        _ = stop.cancelled() => {}
    }
}

/// A plain-text answer of the proxy's own.
fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
