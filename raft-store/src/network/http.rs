//! The real transport: one pooled HTTP/2 client over TCP, in cleartext or
//! over mutual TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{BoxFuture, Transport, TransportError};
use crate::types::NodeId;

/// HTTP/2 transport with connection reuse per peer.
#[derive(Clone)]
pub struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `http` or `https`.
    scheme: &'static str,
}

impl Default for HttpTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpTransport {
    /// A cleartext transport with its own connection pool.
    pub fn new() -> Self {
        // A connector that could speak TLS but is only given http:// URIs.
        let unused = rustls::ClientConfig::builder_with_provider(super::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Self::build(Arc::new(unused), "http")
    }

    /// A transport over TLS with `tls` (see [`PeerTls`](super::PeerTls)).
    pub fn with_tls(tls: Arc<rustls::ClientConfig>) -> Self {
        Self::build(tls, "https")
    }

    fn build(tls: Arc<rustls::ClientConfig>, scheme: &'static str) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(2)));
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http2()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .build(connector);
        HttpTransport { client, scheme }
    }

    /// Posts a body and returns the full answer body.
    pub async fn post(
        &self,
        addr: &str,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let uri = format!("{}://{addr}{path}", self.scheme);
        let request = hyper::Request::post(&uri)
            .header("content-type", "application/octet-stream")
            .body(Full::new(body))
            .map_err(|e| TransportError::Unreachable(format!("bad address {addr}: {e}")))?;
        let call = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    TransportError::Unreachable(format!("{addr}: {e}"))
                } else {
                    TransportError::Broken(format!("{addr}: {e}"))
                }
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| TransportError::Broken(format!("{addr}: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(TransportError::Status {
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
            Ok(body)
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }

    /// Posts a body and returns the streaming answer (for watches).
    pub async fn post_stream(
        &self,
        addr: &str,
        path: &str,
        body: Bytes,
    ) -> Result<hyper::body::Incoming, TransportError> {
        let uri = format!("{}://{addr}{path}", self.scheme);
        let request = hyper::Request::post(&uri)
            .body(Full::new(body))
            .map_err(|e| TransportError::Unreachable(format!("bad address {addr}: {e}")))?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| TransportError::Timeout(Duration::from_secs(10)))?
            .map_err(|e| TransportError::Unreachable(format!("{addr}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(TransportError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(response.into_body())
    }
}

impl Transport for HttpTransport {
    fn call(
        &self,
        _target: NodeId,
        addr: &str,
        path: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let this = self.clone();
        let addr = addr.to_string();
        Box::pin(async move { this.post(&addr, path, body, timeout).await })
    }
}
