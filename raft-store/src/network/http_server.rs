//! Serving HTTP/1.1 and HTTP/2 (cleartext) until told to stop: shared by
//! the members' server and by orch's API server.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts connections on `listener` and answers each request with
/// `handle`, until `stop` turns true; then every open connection is
/// dropped (its socket closed).
pub async fn serve_http<F, Fut>(listener: TcpListener, stop: watch::Receiver<bool>, handle: F)
where
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
        let mut conn_stopped = stop.clone();
        tokio::spawn(async move {
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
                _ = conn_stopped.wait_for(|stop| *stop) => {}
            }
        });
    }
}
