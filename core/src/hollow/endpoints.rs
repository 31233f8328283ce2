//! The API endpoints a hollow cluster talks to: the client it was started
//! with, then any failover addresses. A call that fails with 503
//! (unreachable, no leader, stopped member) moves everyone to the next
//! endpoint and is tried there, once per endpoint.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::client::Client;
use crate::error::ApiError;

/// Clients of every known API endpoint, one of them current.
pub(crate) struct Endpoints {
    clients: Vec<Client>,
    current: AtomicUsize,
    /// Bumped whenever the current endpoint changes (informers restart).
    switched: watch::Sender<u64>,
}

impl Endpoints {
    /// `first`, then an HTTP client per address of `failover`.
    pub(crate) fn new(first: Client, failover: &[String]) -> Self {
        let mut clients = vec![first];
        clients.extend(failover.iter().map(Client::http));
        Endpoints {
            clients,
            current: AtomicUsize::new(0),
            switched: watch::channel(0).0,
        }
    }

    /// The current endpoint's client and its position.
    pub(crate) fn current(&self) -> (usize, Client) {
        let at = self.current.load(Ordering::Acquire) % self.clients.len();
        (at, self.clients[at].clone())
    }

    /// Notified whenever the current endpoint changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// Moves to the endpoint after `failed`, unless someone already moved.
    fn rotate(&self, failed: usize) {
        if self.clients.len() < 2 {
            return;
        }
        let next = (failed + 1) % self.clients.len();
        if self
            .current
            .compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(endpoint = next, "API endpoint unavailable; failing over");
            self.switched.send_modify(|n| *n += 1);
        }
    }

    /// Runs `call` on the current endpoint; on 503 fails over and tries
    /// the next one, at most once per endpoint. Only for idempotent calls.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, ApiError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut attempts = self.clients.len();
        loop {
            let (at, client) = self.current();
            match call(client).await {
                Err(e) if e.code == 503 && attempts > 1 => {
                    attempts -= 1;
                    self.rotate(at);
                }
                Err(e) => {
                    if e.code == 503 {
                        self.rotate(at);
                    }
                    return Err(e);
                }
                Ok(answer) => return Ok(answer),
            }
        }
    }
}
