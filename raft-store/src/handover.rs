//! Handing leadership over before a leader stops, so that the cluster does
//! not wait out an election timeout.
//!
//! openraft 0.9 has no leadership transfer. A follower that heard from a
//! leader refuses to vote for anyone else until the leader lease (the
//! maximum election timeout) has passed, but a leader that has led longer
//! than its lease grants a vote to an up-to-date candidate of a newer term.
//! So the leader picks the follower whose log matches its own and asks it
//! to campaign at once: with the leader's vote it wins in one round trip in
//! a cluster of three. Elsewhere (five voters, a lagging follower) the
//! campaign fails and the cluster elects a leader as after a crash.

use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::error::{Result, StoreError};
use crate::network::{Envelope, PATH_CAMPAIGN};
use crate::node::StoreNode;
use crate::types::NodeId;

impl StoreNode {
    /// If this member leads, asks its most up-to-date voting follower to
    /// take over and waits until another member leads (or a few election
    /// timeouts have passed). Returns the new leader, `None` if this
    /// member did not lead or nobody took over in time.
    pub async fn hand_over_leadership(&self) -> Result<Option<NodeId>> {
        let lease = self.inner.config.election_timeout_max;
        // The leader grants its successor's vote only once it has led
        // longer than the lease.
        let since = *self.inner.leading_since.lock().expect("leadership lock");
        if let Some((_, since)) = since {
            let ready = since + lease + Duration::from_millis(50);
            tokio::time::sleep_until(ready.into()).await;
        }
        let Some((target, addr)) = self.successor().await else {
            return Ok(None);
        };
        tracing::info!(
            member = self.id(),
            successor = target,
            "handing leadership over"
        );
        let timeout = self.inner.config.rpc_timeout;
        let envelope = Envelope {
            from: self.id(),
            body: (),
        };
        match self
            .call_member::<_, ()>(target, &addr, PATH_CAMPAIGN, &envelope, timeout)
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(successor = target, error = %e, "the successor refused to campaign");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(successor = target, error = %e, "the successor is unreachable");
                return Ok(None);
            }
        }
        let deadline = Instant::now() + self.inner.config.election_timeout_max * 3;
        let mut metrics = self.inner.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_leader.is_some_and(|l| l != self.id()) {
                    return Ok(m.current_leader);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(successor = target, "no other member took over in time");
                return Ok(None);
            }
            if tokio::time::timeout(left, metrics.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                return Err(StoreError::Stopped);
            }
        }
    }

    /// The voting follower with the most of the leader's log, if this
    /// member leads; waits a moment for it to have all of it (a candidate
    /// with less log than the leader loses).
    async fn successor(&self) -> Option<(NodeId, String)> {
        let deadline = Instant::now() + self.inner.config.election_timeout_min;
        loop {
            let (best, complete) = {
                let metrics = self.inner.raft.metrics();
                let m = metrics.borrow();
                if m.state != ServerState::Leader {
                    return None;
                }
                let membership = m.membership_config.membership();
                let replication = m.replication.as_ref()?;
                let best = membership
                    .voter_ids()
                    .filter(|id| *id != self.id())
                    .filter_map(|id| {
                        let matched = replication.get(&id)?.as_ref()?.index;
                        let addr = membership.get_node(&id)?.addr.clone();
                        Some((matched, id, addr))
                    })
                    .max_by_key(|(matched, _, _)| *matched)?;
                let complete = Some(best.0) >= m.last_log_index;
                (best, complete)
            };
            if complete || Instant::now() >= deadline {
                return Some((best.1, best.2));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Answers the leader's request to campaign: starts an election at
    /// once. Only the current leader may ask.
    pub(crate) async fn campaign(&self, from: NodeId) -> Result<()> {
        let leader = self.inner.raft.metrics().borrow().current_leader;
        if leader != Some(from) {
            return Err(StoreError::InvalidArgument(format!(
                "member {from} asked to hand leadership over but does not lead (leader: {leader:?})"
            )));
        }
        tracing::info!(
            member = self.id(),
            from,
            "campaigning at the leader's request"
        );
        self.inner
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| StoreError::Raft(format!("starting an election: {e}")))
    }
}

/// Records when this member starts to lead (the leader lease counts from
/// then), until it shuts down.
pub(crate) async fn track_leadership(node: StoreNode) {
    let mut metrics = node.inner.raft.metrics();
    loop {
        let leading = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader).then_some(m.current_term)
        };
        {
            let mut since = node.inner.leading_since.lock().expect("leadership lock");
            match (leading, *since) {
                (Some(term), Some((known, _))) if term == known => {}
                (Some(term), _) => *since = Some((term, Instant::now())),
                (None, _) => *since = None,
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
