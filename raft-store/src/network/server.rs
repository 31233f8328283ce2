//! The member's HTTP server: Raft RPCs from peers and the client API.

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::{
    Envelope, MembershipChange, PATH_APPEND, PATH_CAMPAIGN, PATH_COMMAND, PATH_KEEPALIVE,
    PATH_MEMBERSHIP, PATH_PROPOSE, PATH_RANGE, PATH_READ_INDEX, PATH_SNAPSHOT, PATH_SNAPSHOT_SAVE,
    PATH_STATUS, PATH_VOTE, PATH_WATCH,
};
use crate::codec::{decode, encode};
use crate::command::{Command, CommandResult};
use crate::error::{Result, StoreError};
use crate::kv::Kv;
use crate::node::{Leader, StoreNode};
use crate::types::{LeaseId, MemberStatus, NodeId, RangeRequest, RangeResponse, WatchRequest};

type Body = BoxBody<Bytes, Infallible>;

/// Largest body accepted on a Raft path (append batches, snapshot chunks).
const MAX_RAFT_BODY: usize = 256 << 20;

/// Accepts connections (over mutual TLS when the member has peer TLS
/// settings) until the member shuts down; then every open
/// connection is dropped (its socket closed).
pub async fn serve(listener: TcpListener, node: StoreNode) {
    let stop = node.inner.shutdown.subscribe();
    match node.inner.config.peer_tls.clone() {
        Some(tls) => {
            super::serve_https(listener, stop, tls.server, move |req| {
                handle(node.clone(), req)
            })
            .await
        }
        None => super::serve_http(listener, stop, move |req| handle(node.clone(), req)).await,
    }
}

fn full(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .expect("static response parts are valid")
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(message.into())).boxed())
        .expect("static response parts are valid")
}

fn answer<T: Serialize>(value: &T) -> Response<Body> {
    full(StatusCode::OK, encode(value))
}

async fn handle(node: StoreNode, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let span = tracing::debug_span!("request", member = node.id(), %path);
    async move {
        if node.is_shut_down() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "member is shutting down");
        }
        let limit = if path.starts_with("/raft/") {
            MAX_RAFT_BODY
        } else {
            node.inner.config.max_request_bytes + (64 << 10)
        };
        let body = match Limited::new(req.into_body(), limit).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return if e.is::<http_body_util::LengthLimitError>() {
                    text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body over {limit} bytes"),
                    )
                } else {
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("reading request body: {e}"),
                    )
                };
            }
        };
        route(&node, &path, body).await
    }
    .instrument(span)
    .await
}

fn decode_request<T: DeserializeOwned>(body: &[u8]) -> std::result::Result<T, Box<Response<Body>>> {
    decode(body, "request").map_err(|e| {
        Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("malformed request: {e}"),
        ))
    })
}

/// Refuses Raft messages from members outside this member's configuration
/// (a member that is new and has no configuration yet accepts them).
fn check_sender(node: &StoreNode, from: NodeId) -> Result<()> {
    let metrics = node.inner.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    if membership.nodes().next().is_none() || membership.get_node(&from).is_some() {
        Ok(())
    } else {
        Err(StoreError::UnknownSender(from))
    }
}

macro_rules! raft_rpc {
    ($node:expr, $body:expr, $method:ident) => {{
        let envelope: Envelope<_> = match decode_request(&$body) {
            Ok(envelope) => envelope,
            Err(response) => return *response,
        };
        if let Err(e) = check_sender($node, envelope.from) {
            tracing::warn!(from = envelope.from, "{e}");
            return text(StatusCode::FORBIDDEN, e.to_string());
        }
        answer(&$node.inner.raft.$method(envelope.body).await)
    }};
}

async fn route(node: &StoreNode, path: &str, body: Bytes) -> Response<Body> {
    match path {
        PATH_APPEND => {
            let envelope: Envelope<_> = match decode_request(&body) {
                Ok(envelope) => envelope,
                Err(response) => return *response,
            };
            if let Err(e) = check_sender(node, envelope.from) {
                tracing::warn!(from = envelope.from, "{e}");
                return text(StatusCode::FORBIDDEN, e.to_string());
            }
            let result = node.inner.raft.append_entries(envelope.body).await;
            if result
                .as_ref()
                .is_ok_and(|r| !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
            {
                node.note_leader_contact();
            }
            answer(&result)
        }
        PATH_VOTE => raft_rpc!(node, body, vote),
        PATH_SNAPSHOT => raft_rpc!(node, body, install_snapshot),
        PATH_PROPOSE => {
            let commands: Vec<Command> = match decode_request(&body) {
                Ok(c) => c,
                Err(response) => return *response,
            };
            let result: Result<Vec<CommandResult>> = if node.leader() == Leader::Local {
                node.submit(commands, false).await
            } else {
                Err(StoreError::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                })
            };
            answer(&result)
        }
        PATH_COMMAND => {
            let command: Command = match decode_request(&body) {
                Ok(c) => c,
                Err(response) => return *response,
            };
            answer(&node.execute(command, true).await)
        }
        PATH_READ_INDEX => {
            let result: Result<u64> = if node.leader() == Leader::Local {
                node.read_index().await
            } else {
                Err(StoreError::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                })
            };
            answer(&result)
        }
        PATH_RANGE => {
            let req: RangeRequest = match decode_request(&body) {
                Ok(r) => r,
                Err(response) => return *response,
            };
            let result: Result<RangeResponse> = node.range(req).await;
            answer(&result)
        }
        PATH_KEEPALIVE => {
            let id: LeaseId = match decode_request(&body) {
                Ok(id) => id,
                Err(response) => return *response,
            };
            answer(&node.lease_keep_alive(id).await)
        }
        PATH_STATUS => answer(&Ok::<MemberStatus, StoreError>(node.status())),
        PATH_MEMBERSHIP => {
            let change: MembershipChange = match decode_request(&body) {
                Ok(c) => c,
                Err(response) => return *response,
            };
            answer(&node.change_membership(change).await)
        }
        PATH_SNAPSHOT_SAVE => answer(&node.snapshot_bytes().await),
        PATH_CAMPAIGN => {
            let envelope: Envelope<()> = match decode_request(&body) {
                Ok(envelope) => envelope,
                Err(response) => return *response,
            };
            answer(&node.campaign(envelope.from).await)
        }
        PATH_WATCH => {
            let req: WatchRequest = match decode_request(&body) {
                Ok(r) => r,
                Err(response) => return *response,
            };
            watch_response(node, req).await
        }
        _ => text(StatusCode::NOT_FOUND, format!("no such path {path}")),
    }
}

/// One frame of a watch stream: u32 BE length, then the bincode item.
pub fn watch_frame<T: Serialize>(item: &T) -> Bytes {
    let payload = encode(item);
    let mut frame = BytesMut::with_capacity(payload.len() + 4);
    frame.put_u32(payload.len() as u32);
    frame.put_slice(&payload);
    frame.freeze()
}

async fn watch_response(node: &StoreNode, req: WatchRequest) -> Response<Body> {
    let stream = match node.watch(req).await {
        Ok(stream) => stream,
        Err(e) => {
            let frame = watch_frame(&Err::<crate::types::WatchResponse, _>(e));
            return full(StatusCode::OK, frame.to_vec());
        }
    };
    let frames = stream.map(|item| Ok::<_, Infallible>(Frame::data(watch_frame(&item))));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("static response parts are valid")
}
