//! orch's own API for its masters, beside the Kubernetes one (callers
//! need a token like every other request):
//!
//! | request                        | answer                                             |
//! |--------------------------------|----------------------------------------------------|
//! | `GET /orch/v1/members`         | the store members, their roles, leader, revision   |
//! | `POST /orch/v1/members`        | adds `{"id", "peerAddress"}` as a learner, waits until it has caught up, makes it a voter |
//! | `DELETE /orch/v1/members/{id}` | removes a member (a leader hands leadership over first) |
//! | `POST /orch/v1/secrets/rotate-key` | a new Secrets data key: every Secret sealed again with it, unused keys dropped |
//! | `GET /orch/v1/join-bundle`     | what a joining master needs before it can talk to its peers (set by the embedder: orchd serves the cluster CA) |

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Response, StatusCode};
use orch_raft_store::{MemberStatus, NodeId};
use serde::Deserialize;
use serde_json::json;

use super::{json_response, ApiServer, Body};
use crate::error::ApiError;

/// The prefix of the paths served here.
pub const PREFIX: &str = "/orch/v1/";

/// A master asking to be added.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewMember {
    id: NodeId,
    peer_address: String,
}

/// The members as JSON.
pub fn status_json(status: &MemberStatus) -> serde_json::Value {
    let member = |(id, addr): &(NodeId, String), role: &str| {
        let role = if Some(*id) == status.leader {
            "leader"
        } else {
            role
        };
        json!({"id": id, "peerAddress": addr, "role": role})
    };
    let members: Vec<_> = status
        .voters
        .iter()
        .map(|m| member(m, "voter"))
        .chain(status.learners.iter().map(|m| member(m, "learner")))
        .collect();
    json!({
        "kind": "MemberList",
        "apiVersion": "orch/v1",
        "servedBy": status.id,
        "leader": status.leader,
        "term": status.term,
        "revision": status.revision,
        "compactedRevision": status.compacted,
        "members": members,
    })
}

/// Answers a request under [`PREFIX`].
pub async fn handle(
    server: &ApiServer,
    method: &Method,
    path: &str,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let store = server.registry().store();
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    match (method, rest.split('/').collect::<Vec<_>>().as_slice()) {
        (&Method::GET, ["members"]) => {
            Ok(json_response(StatusCode::OK, &status_json(&store.status())))
        }
        (&Method::POST, ["members"]) => {
            let new: NewMember = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!(
                    "a new member is {{\"id\": N, \"peerAddress\": \"host:port\"}}: {e}"
                ))
            })?;
            if new.id == 0 {
                return Err(ApiError::bad_request("member id 0 is not valid"));
            }
            let known = store.status();
            if known.voters.iter().any(|(id, _)| *id == new.id) {
                return Ok(json_response(StatusCode::OK, &status_json(&known)));
            }
            tracing::info!(id = new.id, peer = %new.peer_address, "adding a master");
            store.add_learner(new.id, new.peer_address.clone()).await?;
            let status = store.promote(&[new.id]).await?;
            Ok(json_response(StatusCode::CREATED, &status_json(&status)))
        }
        (&Method::POST, ["secrets", "rotate-key"]) => {
            let report = server.registry().rotate_secret_key().await?;
            let mut body = serde_json::to_value(&report)
                .map_err(|e| ApiError::internal(format!("encoding the rotation report: {e}")))?;
            body["kind"] = json!("KeyRotation");
            body["apiVersion"] = json!("orch/v1");
            Ok(json_response(StatusCode::OK, &body))
        }
        (&Method::DELETE, ["members", id]) => {
            let id: NodeId = id
                .parse()
                .map_err(|_| ApiError::bad_request(format!("{id} is not a member id")))?;
            let known = store.status();
            let member = known
                .voters
                .iter()
                .chain(&known.learners)
                .any(|(m, _)| *m == id);
            if !member {
                return Err(ApiError::not_found_message(format!(
                    "member {id} is not in the cluster"
                )));
            }
            if known.voters.len() == 1 && known.voters[0].0 == id {
                return Err(ApiError::bad_request(
                    "the last voting member cannot be removed",
                ));
            }
            if known.leader == Some(id) {
                if known.id != id {
                    return Err(ApiError::bad_request(format!(
                        "member {id} leads the cluster: ask its own API, so that it hands leadership over first"
                    )));
                }
                if store.hand_over_leadership().await?.is_none() {
                    return Err(ApiError::unavailable(
                        "this member leads and no other member took over; try again",
                    ));
                }
            }
            tracing::info!(id, "removing a master");
            let status = store.remove(&[id]).await?;
            if id == known.id {
                server.mark_removed();
            }
            Ok(json_response(StatusCode::OK, &status_json(&status)))
        }
        (&Method::GET, ["join-bundle"]) => match server.join_bundle() {
            Some(bundle) => Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Full::new(bundle.clone()).boxed())
                .expect("static response parts are valid")),
            None => Err(ApiError::not_found_message(
                "this master hands out no join bundle",
            )),
        },
        (_, ["members"] | ["members", _] | ["join-bundle"]) => Err(ApiError::method_not_allowed(
            format!("{method} is not served on {path}"),
        )),
        _ => Err(ApiError::no_route(path)),
    }
}
