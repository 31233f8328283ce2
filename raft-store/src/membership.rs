//! Membership changes: add a learner (waiting until it has caught up),
//! promote learners to voters, remove members. Each runs on the leader
//! (forwarded from any member); joint consensus allows one change at a
//! time, so a change waits while another is in flight.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use crate::error::{Result, StoreError};
use crate::network::{MembershipChange, TransportError, PATH_MEMBERSHIP};
use crate::node::{Leader, StoreNode};
use crate::types::{MemberStatus, NodeId};

impl StoreNode {
    /// Applies a membership change on the leader (forwarding if needed) and
    /// returns the resulting status.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<MemberStatus> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            match self.wait_for_leader(deadline).await? {
                Leader::Local => {
                    self.change_membership_local(change).await?;
                    return Ok(self.status());
                }
                Leader::Remote(id, addr) => {
                    let timeout = self
                        .inner
                        .config
                        .request_timeout
                        .max(Duration::from_secs(60));
                    match self
                        .call_member(id, &addr, PATH_MEMBERSHIP, &change, timeout)
                        .await
                    {
                        Ok(answer) => return answer,
                        Err(TransportError::Unreachable(_)) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(e) => return Err(StoreError::Unavailable(format!("leader {id}: {e}"))),
                    }
                }
                Leader::Unknown => unreachable!("wait_for_leader returns a known leader"),
            }
        }
    }

    /// Applies a membership change on this member, which leads; waits while
    /// an earlier change is still in progress (joint consensus allows one at
    /// a time).
    async fn change_membership_local(&self, change: MembershipChange) -> Result<()> {
        let deadline = Instant::now()
            + self
                .inner
                .config
                .request_timeout
                .max(Duration::from_secs(30));
        loop {
            match self.change_membership_once(change.clone()).await {
                Err(StoreError::MembershipChangeInProgress) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until the leader has replicated up to `index` to `id`.
    async fn wait_caught_up(&self, id: NodeId, index: u64) -> Result<()> {
        let limit = self
            .inner
            .config
            .request_timeout
            .max(Duration::from_secs(30));
        let deadline = Instant::now() + limit;
        let mut metrics = self.inner.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|log| log.index);
                if matched.is_some_and(|matched| matched >= index) {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "learner {id} did not catch up within {limit:?} (is it reachable, with a certificate of the cluster's CA?)"
                )));
            }
            if let Ok(Err(_)) = tokio::time::timeout(left, metrics.changed()).await {
                return Err(StoreError::Stopped);
            }
        }
    }

    async fn change_membership_once(&self, change: MembershipChange) -> Result<()> {
        let raft = &self.inner.raft;
        let map_err = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
                leader_id: f.leader_id,
                leader_addr: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )) => StoreError::MembershipChangeInProgress,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                StoreError::Membership(e.to_string())
            }
            RaftError::Fatal(_) => StoreError::Stopped,
        };
        match change {
            MembershipChange::AddLearner { id, addr } => {
                tracing::info!(id, %addr, "adding learner");
                // openraft 0.9's blocking add_learner gives up waiting
                // after a moment and reports success anyway: wait here.
                let added = raft
                    .add_learner(id, BasicNode { addr }, false)
                    .await
                    .map_err(map_err)?;
                if let Err(e) = self.wait_caught_up(id, added.log_id.index).await {
                    tracing::warn!(id, error = %e, "the learner did not catch up; removing it");
                    let _ = raft
                        .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                        .await;
                    return Err(e);
                }
            }
            MembershipChange::Promote(ids) => {
                tracing::info!(?ids, "promoting to voters");
                let ids: BTreeSet<NodeId> = ids.into_iter().collect();
                raft.change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
                    .map_err(map_err)?;
            }
            MembershipChange::Remove(ids) => {
                tracing::info!(?ids, "removing members");
                let ids: BTreeSet<NodeId> = ids.into_iter().collect();
                let voters: BTreeSet<NodeId> = {
                    let metrics = raft.metrics();
                    let m = metrics.borrow();
                    m.membership_config.membership().voter_ids().collect()
                };
                let remove_voters: BTreeSet<NodeId> = ids.intersection(&voters).copied().collect();
                if !remove_voters.is_empty() {
                    if remove_voters.len() == voters.len() {
                        return Err(StoreError::Membership("cannot remove every voter".into()));
                    }
                    raft.change_membership(ChangeMembers::RemoveVoters(remove_voters), false)
                        .await
                        .map_err(map_err)?;
                }
                let remaining: BTreeSet<NodeId> = {
                    let metrics = raft.metrics();
                    let m = metrics.borrow();
                    m.membership_config
                        .membership()
                        .nodes()
                        .map(|(id, _)| *id)
                        .collect()
                };
                let remove_nodes: BTreeSet<NodeId> =
                    ids.intersection(&remaining).copied().collect();
                if !remove_nodes.is_empty() {
                    raft.change_membership(ChangeMembers::RemoveNodes(remove_nodes), false)
                        .await
                        .map_err(map_err)?;
                }
            }
        }
        Ok(())
    }

    /// Adds a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, addr: impl Into<String>) -> Result<MemberStatus> {
        self.change_membership(MembershipChange::AddLearner {
            id,
            addr: addr.into(),
        })
        .await
    }

    /// Makes learners voters.
    pub async fn promote(&self, ids: &[NodeId]) -> Result<MemberStatus> {
        self.change_membership(MembershipChange::Promote(ids.to_vec()))
            .await
    }

    /// Removes members.
    pub async fn remove(&self, ids: &[NodeId]) -> Result<MemberStatus> {
        self.change_membership(MembershipChange::Remove(ids.to_vec()))
            .await
    }
}
