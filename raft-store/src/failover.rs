//! Campaigning as soon as a silent leader's lease has run out.
//!
//! In openraft 0.9 a follower refuses other candidates while the leader
//! lease (`election_timeout_max`) runs from the leader's last message, and
//! campaigns on its own only after the lease *plus* its random election
//! timeout. That second wait keeps survivors from splitting the vote; it
//! costs up to another `election_timeout_max` after a leader dies.
//!
//! This task replaces the random wait with a choice every survivor makes
//! alike: once the lease has passed with no word from the leader, each
//! voting follower asks the other followers for the last entry of their
//! log, and only the one with the most log (the lowest id among equals)
//! campaigns, at once. It wins in one round, since the others' leases have
//! run out too and its log is at least theirs. A follower that still hears
//! from the leader refuses it, so a live leader is never deposed by this.
//! openraft's own timer stays as the fallback when the chosen one cannot
//! win (it died as well, or its view was wrong).

use std::time::{Duration, Instant};

use futures::future::join_all;
use openraft::ServerState;

use crate::network::{Envelope, PATH_STATUS};
use crate::node::StoreNode;
use crate::types::{MemberStatus, NodeId};

/// Margin after the lease, for the other followers' leases (started by the
/// same heartbeat, a few milliseconds apart) to have run out too.
const LEASE_MARGIN: Duration = Duration::from_millis(40);

/// Watches for a silent leader and campaigns when this member is the
/// survivor to do it, until the member shuts down.
pub(crate) async fn campaign_when_leader_is_silent(node: StoreNode) {
    let config = &node.inner.config;
    let lease = config.election_timeout_max;
    let tick = (config.heartbeat_interval / 4).max(Duration::from_millis(10));
    let mut shutdown = node.inner.shutdown.subscribe();
    // The leader contact the last choice was made after.
    let mut decided_after: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let Some(contact) = node.last_leader_contact() else {
            continue;
        };
        if decided_after == Some(contact) || Instant::now() < contact + lease + LEASE_MARGIN {
            continue;
        }
        let Some(peers) = fellow_followers(&node) else {
            continue;
        };
        decided_after = Some(contact);
        let mine = node.status().last_log;
        let best_peer = peer_logs(&node, peers).await.into_iter().max();
        // Most log first; among equal logs, the lowest id.
        let chosen = match best_peer {
            Some((log, peer)) if log > mine || (log == mine && peer < node.id()) => Some(peer),
            _ => None,
        };
        if let Some(peer) = chosen {
            tracing::debug!(
                member = node.id(),
                peer,
                "the leader is silent; a peer with more log campaigns"
            );
            continue;
        }
        tracing::info!(
            member = node.id(),
            silent_ms = contact.elapsed().as_millis() as u64,
            "the leader is silent past its lease; campaigning"
        );
        if let Err(e) = node.inner.raft.trigger().elect().await {
            tracing::warn!(error = %e, "starting an election");
            return;
        }
    }
}

/// The other voters that may replace the leader this member follows, with
/// their addresses; `None` if this member is not a voting follower of a
/// known leader.
fn fellow_followers(node: &StoreNode) -> Option<Vec<(NodeId, String)>> {
    let metrics = node.inner.raft.metrics();
    let m = metrics.borrow();
    if m.state != ServerState::Follower {
        return None;
    }
    let leader = m.current_leader?;
    let membership = m.membership_config.membership();
    if !membership.voter_ids().any(|id| id == node.id()) {
        return None;
    }
    Some(
        membership
            .voter_ids()
            .filter(|id| *id != leader && *id != node.id())
            .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
            .collect(),
    )
}

/// The last log entry (term, index) of each peer that answers within a
/// heartbeat, with its id.
async fn peer_logs(
    node: &StoreNode,
    peers: Vec<(NodeId, String)>,
) -> Vec<(Option<(u64, u64)>, NodeId)> {
    let timeout = node.inner.config.heartbeat_interval;
    let asks = peers.into_iter().map(|(id, addr)| async move {
        let envelope = Envelope {
            from: node.id(),
            body: (),
        };
        match node
            .call_member::<_, MemberStatus>(id, &addr, PATH_STATUS, &envelope, timeout)
            .await
        {
            Ok(Ok(status)) => Some((status.last_log, id)),
            _ => None,
        }
    });
    join_all(asks).await.into_iter().flatten().collect()
}
