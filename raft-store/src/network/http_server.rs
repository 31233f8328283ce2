//! Serving HTTP/1.1 and HTTP/2, in cleartext or over TLS, until told to
//! stop: shared by the members' server, orch's API server and the agents'
//! server.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` and answers each request with
/// `handle`, until `stop` turns true; then every open connection is
/// dropped (its socket closed).
pub async fn serve_http<F, Fut>(listener: TcpListener, stop: watch::Receiver<bool>, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody<Bytes, Infallible>>> + Send + 'static,
{
    serve(listener, stop, None, handle).await
}

/// [`serve_http`] over TLS with `tls` (a client that fails the handshake
/// is dropped).
pub async fn serve_https<F, Fut>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    tls: Arc<rustls::ServerConfig>,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody<Bytes, Infallible>>> + Send + 'static,
{
    serve(
        listener,
        stop,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        handle,
    )
    .await
}

async fn serve<F, Fut>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody<Bytes, Infallible>>> + Send + 'static,
{
    let mut stopped = stop.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let stop = stop.clone();
        match &tls {
            None => {
                tokio::spawn(connection(stream, peer, stop, handle));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => connection(stream, peer, stop, handle).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Serves one connection until it ends or `stop` turns true.
async fn connection<S, F, Fut>(
    stream: S,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody<Bytes, Infallible>>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let response = handle(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // With upgrades: exec sessions switch their connection to a WebSocket.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        }
        _ = stop.wait_for(|stop| *stop) => {}
    }
}
