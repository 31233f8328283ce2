//! A client for remote members over HTTP/2, with the same operations as the
//! in-process [`StoreNode`](crate::StoreNode) API.
//!
//! The client talks to one member at a time and moves to the next endpoint
//! when a member cannot be reached. Reads and requests that were certainly
//! not delivered are retried on another member; a write whose fate is unknown
//! (connection lost after sending) returns `Unavailable` rather than risk
//! applying it twice. Watches resume from their last revision on another
//! member when the connection drops.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::codec::{decode, encode};
use crate::command::{Command, CommandResult};
use crate::error::{Result, StoreError};
use crate::kv::Kv;
use crate::network::{
    HttpTransport, MembershipChange, TransportError, PATH_COMMAND, PATH_KEEPALIVE, PATH_MEMBERSHIP,
    PATH_RANGE, PATH_SNAPSHOT_SAVE, PATH_STATUS, PATH_WATCH,
};
use crate::types::{
    KeyRange, LeaseId, MemberStatus, NodeId, RangeRequest, RangeResponse, WatchRequest,
    WatchResponse,
};
use crate::watch::WatchStream;

/// A client of a store cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    http: HttpTransport,
    timeout: Duration,
}

/// Whether a failed request may be sent again to another member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and other idempotent calls: retry on any failure.
    Always,
    /// Writes: retry only when the request certainly did not arrive.
    IfUnsent,
}

impl Client {
    /// A client of the members at `endpoints` (`host:port`).
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Client {
            endpoints: Arc::new(endpoints.into_iter().map(Into::into).collect()),
            current: Arc::new(AtomicUsize::new(0)),
            http: HttpTransport::new(),
            timeout: Duration::from_secs(15),
        }
    }

    /// Talks to the members over mutual TLS with `tls` (members that have
    /// peer TLS refuse clients without a certificate of their CA).
    pub fn with_tls(mut self, tls: &crate::network::PeerTls) -> Self {
        self.http = HttpTransport::with_tls(tls.client.clone());
        self
    }

    /// Sets the time limit of one request (default 15 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &'static str,
        req: &Req,
        retry: Retry,
    ) -> Result<Resp> {
        if self.endpoints.is_empty() {
            return Err(StoreError::InvalidArgument(
                "client has no endpoints".into(),
            ));
        }
        let body = Bytes::from(encode(req));
        let deadline = Instant::now() + self.timeout;
        let mut failures = 0usize;
        loop {
            let index = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = self
                .http
                .post(endpoint, path, body.clone(), remaining)
                .await;
            let error = match outcome {
                Ok(bytes) => {
                    let result: Result<Resp> = decode(&bytes, "server answer")?;
                    match result {
                        Err(StoreError::Stopped) => {
                            TransportError::Unreachable("member stopping".into())
                        }
                        other => return other,
                    }
                }
                Err(TransportError::Status { status: 413, .. }) => {
                    return Err(StoreError::RequestTooLarge {
                        size: body.len(),
                        limit: 0,
                    })
                }
                Err(TransportError::Status { status: 400, body }) => {
                    return Err(StoreError::InvalidArgument(body))
                }
                Err(TransportError::Status { status: 503, body }) => {
                    TransportError::Unreachable(body)
                }
                Err(e) => e,
            };
            let unsent = matches!(error, TransportError::Unreachable(_));
            if retry == Retry::IfUnsent && !unsent {
                return Err(StoreError::Unavailable(format!(
                    "{endpoint}: {error}; the write may or may not have been applied"
                )));
            }
            // Move on to the next member.
            let _ = self.current.compare_exchange(
                index,
                index + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            failures += 1;
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "no member answered: last error {error}"
                )));
            }
            if failures % self.endpoints.len() == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn run_command(&self, command: Command) -> Result<CommandResult> {
        match self
            .call::<_, CommandResult>(PATH_COMMAND, &command, Retry::IfUnsent)
            .await?
        {
            CommandResult::Failed(e) => Err(e),
            result => Ok(result),
        }
    }

    /// The status of whichever member answers.
    pub async fn status(&self) -> Result<MemberStatus> {
        self.call(PATH_STATUS, &(), Retry::Always).await
    }

    /// The status of the member at `endpoint`.
    pub async fn status_of(&self, endpoint: &str) -> Result<MemberStatus> {
        let bytes = self
            .http
            .post(
                endpoint,
                PATH_STATUS,
                Bytes::from(encode(&())),
                self.timeout,
            )
            .await
            .map_err(|e| StoreError::Transport {
                target: endpoint.to_string(),
                detail: e.to_string(),
            })?;
        decode::<Result<MemberStatus>>(&bytes, "status answer")?
    }

    /// Adds a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, addr: impl Into<String>) -> Result<MemberStatus> {
        let change = MembershipChange::AddLearner {
            id,
            addr: addr.into(),
        };
        self.call(PATH_MEMBERSHIP, &change, Retry::IfUnsent).await
    }

    /// Makes learners voters.
    pub async fn promote(&self, ids: &[NodeId]) -> Result<MemberStatus> {
        self.call(
            PATH_MEMBERSHIP,
            &MembershipChange::Promote(ids.to_vec()),
            Retry::IfUnsent,
        )
        .await
    }

    /// Removes members.
    pub async fn remove(&self, ids: &[NodeId]) -> Result<MemberStatus> {
        self.call(
            PATH_MEMBERSHIP,
            &MembershipChange::Remove(ids.to_vec()),
            Retry::IfUnsent,
        )
        .await
    }

    /// Saves a snapshot of the whole cluster state to `path`.
    pub async fn snapshot_save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.call(PATH_SNAPSHOT_SAVE, &(), Retry::Always).await?;
        crate::storage::snapshot::write_bytes(path, &bytes)
    }

    /// Watches a range. The stream resumes on another member from the last
    /// delivered revision when its connection drops; it ends with an error
    /// when no member can be reached for the client's timeout.
    async fn start_watch(&self, mut req: WatchRequest) -> Result<WatchStream> {
        req.range.validate()?;
        if req.start_revision == 0 {
            let mut probe = RangeRequest::new(KeyRange::key(b"\0".to_vec()));
            probe.count_only = true;
            probe.serializable = true;
            req.start_revision = self.range(probe).await?.revision + 1;
        }
        let (tx, rx) = mpsc::channel(256);
        let client = self.clone();
        tokio::spawn(async move { client.run_watch(req, tx).await });
        Ok(ReceiverStream::new(rx))
    }

    async fn run_watch(&self, mut req: WatchRequest, out: mpsc::Sender<Result<WatchResponse>>) {
        let mut last_contact = Instant::now();
        loop {
            let index = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let endpoint = self.endpoints[index].clone();
            match self
                .http
                .post_stream(&endpoint, PATH_WATCH, Bytes::from(encode(&req)))
                .await
            {
                Ok(mut body) => {
                    let mut buffer = BytesMut::new();
                    loop {
                        let frame = tokio::select! {
                            frame = body.frame() => frame,
                            _ = out.closed() => return,
                        };
                        let Some(Ok(frame)) = frame else { break };
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        buffer.extend_from_slice(&data);
                        while buffer.len() >= 4 {
                            let len = u32::from_be_bytes(buffer[..4].try_into().expect("4 bytes"))
                                as usize;
                            if buffer.len() < 4 + len {
                                break;
                            }
                            buffer.advance(4);
                            let payload = buffer.split_to(len);
                            let item: Result<WatchResponse> = match decode(&payload, "watch frame")
                            {
                                Ok(item) => item,
                                Err(e) => Err(e),
                            };
                            last_contact = Instant::now();
                            match item {
                                Ok(resp) => {
                                    req.start_revision = resp.revision + 1;
                                    if out.send(Ok(resp)).await.is_err() {
                                        return;
                                    }
                                }
                                Err(StoreError::Stopped) => break,
                                Err(e) => {
                                    let _ = out.send(Err(e)).await;
                                    return;
                                }
                            }
                        }
                    }
                }
                Err(TransportError::Status { status: 400, body }) => {
                    let _ = out.send(Err(StoreError::InvalidArgument(body))).await;
                    return;
                }
                Err(_) => {}
            }
            if out.is_closed() {
                return;
            }
            if last_contact.elapsed() > self.timeout {
                let _ = out
                    .send(Err(StoreError::Unavailable(
                        "watch: no member reachable".into(),
                    )))
                    .await;
                return;
            }
            let _ = self.current.compare_exchange(
                index,
                index + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Kv for Client {
    async fn command(&self, command: Command) -> Result<CommandResult> {
        self.run_command(command).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        req.range.validate()?;
        self.call(PATH_RANGE, &req, Retry::Always).await
    }

    /// Watches a range. The stream resumes on another member from the last
    /// delivered revision when its connection drops; it ends with an error
    /// when no member can be reached for the client's timeout.
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        self.start_watch(req).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64> {
        self.call(PATH_KEEPALIVE, &id, Retry::Always).await
    }
}
