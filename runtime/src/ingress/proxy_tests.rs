//! The proxy through real sockets: two tiny HTTP backends on loopback
//! (the "pods"), an in-memory source whose EndpointSlices point at them,
//! the proxy on an ephemeral port, and real HTTP requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::proxy::{IngressProxy, ProxyConfig};
use super::source::{IngressSource, MemorySource};

/// Answers `"{name} {method} {uri}"` (and ` body={body}` when there is
/// one), with what it saw of the forwarding headers as `x-seen-*`; an
/// `Upgrade: echo` request is switched to a connection that echoes every
/// read back prefixed with the name.
pub(super) async fn backend(name: &'static str, stop: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap(),
            };
            let service = service_fn(move |req| answer(name, req));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().get(UPGRADE).is_some_and(|u| u == "echo") {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                let reply = [name.as_bytes(), b":", &buf[..n]].concat();
                if io.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        response
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("echo"));
        return Ok(response);
    }
    let mut seen = HeaderMap::new();
    for header in [
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-secret",
    ] {
        if let Some(value) = req.headers().get(header) {
            seen.insert(
                hyper::header::HeaderName::from_bytes(format!("x-seen-{header}").as_bytes())
                    .unwrap(),
                value.clone(),
            );
        }
    }
    let method = req.method().clone();
    let uri = req.uri().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut text = format!("{name} {method} {uri}");
    if !body.is_empty() {
        text.push_str(&format!(" body={}", String::from_utf8_lossy(&body)));
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().extend(seen);
    response
        .headers_mut()
        .insert("x-backend", HeaderValue::from_static(name));
    Ok(response)
}

/// A response as the client got it.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

/// Sends one request to the proxy over a connection of its own.
async fn send(proxy: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub(super) async fn get(proxy: SocketAddr, host: &str, path: &str) -> Answer {
    let req = Request::get(path)
        .header(HOST, host)
        .body(Full::default())
        .unwrap();
    send(proxy, req).await
}

pub(super) fn service(name: &str, ports: Value) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "ports": ports },
    }))
    .unwrap()
}

/// A slice of Service `service` with endpoints at 127.0.0.1 on `port`
/// (named `port_name`).
pub(super) fn slice(
    name: &str,
    service: &str,
    port_name: &str,
    port: u16,
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "default",
                      "labels": { "kubernetes.io/service-name": service } },
        "addressType": "IPv4",
        "ports": [{ "name": port_name, "port": port, "protocol": "TCP" }],
        "endpoints": [{ "addresses": ["127.0.0.1"], "conditions": { "ready": true } }],
    }))
    .unwrap()
}

pub(super) fn ingress(
    name: &str,
    generation: i64,
    spec: Value,
) -> k8s_openapi::api::networking::v1::Ingress {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "default", "generation": generation },
        "spec": spec,
    }))
    .unwrap()
}

pub(super) fn path(p: &str, service: &str, port: Value) -> Value {
    json!({ "path": p, "pathType": "Prefix",
            "backend": { "service": { "name": service, "port": port } } })
}

/// A free loopback port nothing listens on.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

struct Fixture {
    source: Arc<MemorySource>,
    proxy: IngressProxy,
    /// Backend B's address.
    b: SocketAddr,
    stop: CancellationToken,
    /// Stops the proxy and the backends when the test ends.
    _guard: tokio_util::sync::DropGuard,
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.proxy.local_addr()
    }
}

/// Backends A and B, Services `svc-a` (port 80 `http`) and `svc-b` (port
/// 8080 `web`), and Ingress `web`: `/a` → svc-a by number, `/b` → svc-b by
/// port name, and host `b.example.com` → svc-b.
async fn fixture() -> Fixture {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let stop = CancellationToken::new();
    let a = backend("A", stop.clone()).await;
    let b = backend("B", stop.clone()).await;
    let source = Arc::new(MemorySource::new());
    source.put_service(service(
        "svc-a",
        json!([{ "name": "http", "port": 80, "targetPort": 8080 }]),
    ));
    source.put_service(service("svc-b", json!([{ "name": "web", "port": 8080 }])));
    source.put_slice(slice("svc-a-1", "svc-a", "http", a.port()));
    source.put_slice(slice("svc-b-1", "svc-b", "web", b.port()));
    source.put_ingress(ingress(
        "web",
        1,
        json!({ "rules": [
            { "http": { "paths": [
                path("/a", "svc-a", json!({ "number": 80 })),
                path("/b", "svc-b", json!({ "name": "web" })),
            ]}},
            { "host": "b.example.com", "http": { "paths": [
                path("/", "svc-b", json!({ "number": 8080 })),
            ]}},
        ]}),
    ));
    let dyn_source: Arc<dyn IngressSource> = source.clone();
    let proxy = IngressProxy::start(
        ProxyConfig::new("127.0.0.1:0".parse().unwrap()),
        dyn_source,
        stop.clone(),
    )
    .await
    .unwrap();
    assert_ne!(proxy.local_addr().port(), 0);
    Fixture {
        source,
        proxy,
        b,
        _guard: stop.clone().drop_guard(),
        stop,
    }
}

#[tokio::test]
async fn paths_reach_their_backends() {
    let f = fixture().await;
    let a = get(f.addr(), "web.example.com", "/a").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "A GET /a");
    let a = get(f.addr(), "web.example.com", "/a/deeper?x=1&y=2").await;
    assert_eq!(a.body, "A GET /a/deeper?x=1&y=2");
    let b = get(f.addr(), "web.example.com", "/b/x").await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.body, "B GET /b/x");
    assert_eq!(b.headers["x-backend"], "B");
}

#[tokio::test]
async fn a_host_rule_takes_its_host() {
    let f = fixture().await;
    // The host's rule beats the host-less /a.
    let b = get(f.addr(), "B.example.com:8080", "/a").await;
    assert_eq!(b.body, "B GET /a");
    let a = get(f.addr(), "c.example.com", "/a").await;
    assert_eq!(a.body, "A GET /a");
}

#[tokio::test]
async fn forwarding_headers_are_set_and_host_kept() {
    let f = fixture().await;
    let req = Request::get("/a")
        .header(HOST, "web.example.com:8080")
        .header("x-forwarded-for", "203.0.113.7")
        .header(CONNECTION, "x-secret")
        .header("x-secret", "hop-by-hop")
        .body(Full::default())
        .unwrap();
    let a = send(f.addr(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-seen-host"], "web.example.com:8080");
    assert_eq!(
        a.headers["x-seen-x-forwarded-for"],
        "203.0.113.7, 127.0.0.1"
    );
    assert_eq!(a.headers["x-seen-x-forwarded-host"], "web.example.com:8080");
    assert_eq!(a.headers["x-seen-x-forwarded-proto"], "http");
    assert!(a.headers.get("x-seen-x-secret").is_none());
}

#[tokio::test]
async fn no_matching_rule_is_404() {
    let f = fixture().await;
    let answer = get(f.addr(), "web.example.com", "/c").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(
        answer.body.contains("no Ingress rule matches"),
        "{}",
        answer.body
    );
    assert_eq!(answer.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn a_missing_service_or_endpoints_is_503_saying_which() {
    let f = fixture().await;
    f.source.put_ingress(ingress(
        "broken",
        1,
        json!({ "rules": [{ "http": { "paths": [
            path("/missing", "nope", json!({ "number": 80 })),
            path("/empty", "empty", json!({ "number": 80 })),
        ]}}]}),
    ));
    f.source
        .put_service(service("empty", json!([{ "port": 80 }])));
    let missing = get(f.addr(), "h", "/missing").await;
    assert_eq!(missing.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        missing.body.contains("Service default/nope not found"),
        "{}",
        missing.body
    );
    let empty = get(f.addr(), "h", "/empty").await;
    assert_eq!(empty.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        empty
            .body
            .contains("Service default/empty has no ready endpoints"),
        "{}",
        empty.body
    );
}

#[tokio::test]
async fn request_bodies_pass_through() {
    let f = fixture().await;
    let req = Request::post("/a/items")
        .header(HOST, "web.example.com")
        .body(Full::new(Bytes::from_static(b"hello=world")))
        .unwrap();
    let answer = send(f.addr(), req).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "A POST /a/items body=hello=world");

    // A large body, streamed both ways.
    let big = "x".repeat(1 << 20);
    let req = Request::put("/b")
        .header(HOST, "web.example.com")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let answer = send(f.addr(), req).await;
    assert_eq!(answer.body, format!("B PUT /b body={big}"));
}

#[tokio::test]
async fn source_changes_take_effect_without_restart() {
    let f = fixture().await;
    assert_eq!(get(f.addr(), "h", "/c").await.status, StatusCode::NOT_FOUND);
    f.source.put_ingress(ingress(
        "more",
        1,
        json!({ "rules": [{ "http": { "paths": [path("/c", "svc-a", json!({ "number": 80 }))] }}]}),
    ));
    let answer = get(f.addr(), "h", "/c").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "A GET /c");
    // Repointed at B, then deleted.
    f.source.put_ingress(ingress(
        "more",
        2,
        json!({ "rules": [{ "http": { "paths": [path("/c", "svc-b", json!({ "number": 8080 }))] }}]}),
    ));
    assert_eq!(get(f.addr(), "h", "/c").await.body, "B GET /c");
    assert!(f.source.remove_ingress("default", "more"));
    assert_eq!(get(f.addr(), "h", "/c").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_are_balanced_round_robin() {
    let f = fixture().await;
    // svc-a gets B's address as a second endpoint.
    f.source
        .put_slice(slice("svc-a-2", "svc-a", "http", f.b.port()));
    let mut seen = Vec::new();
    for _ in 0..4 {
        let answer = get(f.addr(), "h", "/a").await;
        assert_eq!(answer.status, StatusCode::OK);
        seen.push(answer.headers["x-backend"].to_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, vec!["A", "A", "B", "B"]);
}

#[tokio::test]
async fn a_refusing_endpoint_is_skipped_and_all_refusing_is_502() {
    let f = fixture().await;
    let dead = dead_port().await;
    f.source
        .put_slice(slice("svc-a-dead", "svc-a", "http", dead));
    for _ in 0..4 {
        let answer = get(f.addr(), "h", "/a").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, "A GET /a");
    }
    assert!(f.source.remove_slice("default", "svc-a-1"));
    let answer = get(f.addr(), "h", "/a").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        answer
            .body
            .contains("could not connect to Service default/svc-a"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn upgrades_are_tunnelled() {
    let f = fixture().await;
    let stream = TcpStream::connect(f.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/b/socket")
        .header(HOST, "web.example.com")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "echo")
        .body(Full::<Bytes>::default())
        .unwrap();
    let mut response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()[UPGRADE], "echo");
    let mut io = TokioIo::new(hyper::upgrade::on(&mut response).await.unwrap());
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"B:ping");
}

#[tokio::test]
async fn the_proxy_stops_on_its_token() {
    let f = fixture().await;
    assert_eq!(get(f.addr(), "h", "/a").await.status, StatusCode::OK);
    let addr = f.addr();
    f.stop.cancel();
    let Fixture { proxy, .. } = f;
    tokio::time::timeout(Duration::from_secs(5), proxy.stopped())
        .await
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
