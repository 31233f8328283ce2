//! Lease expiry. Leases and their keys are replicated state; their deadlines
//! are not: like etcd, only the leader keeps a deadline per lease, in memory,
//! renewed by keep-alives. A new leader gives every lease a full TTL from the
//! moment it takes over. When a deadline passes, the leader proposes a
//! revoke through Raft, which deletes the lease's keys on every member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::command::Command;
use crate::error::{Result, StoreError};
use crate::network::PATH_KEEPALIVE;
use crate::node::{Leader, StoreNode};
use crate::types::LeaseId;

/// Deadlines of the leases, kept only while this member leads.
#[derive(Default, Clone)]
pub(crate) struct LeaseDeadlines {
    deadlines: Arc<Mutex<HashMap<LeaseId, Instant>>>,
}

/// Checks deadlines every `lease_check_interval` while leading.
pub(crate) async fn run_keeper(node: StoreNode) {
    let mut ticker = tokio::time::interval(node.inner.config.lease_check_interval);
    let mut leading = false;
    loop {
        ticker.tick().await;
        if node.leader() != Leader::Local {
            if leading {
                node.inner
                    .leases
                    .deadlines
                    .lock()
                    .expect("lease lock")
                    .clear();
                leading = false;
            }
            continue;
        }
        leading = true;
        let now = Instant::now();
        let ttls: Vec<(LeaseId, i64)> = node
            .inner
            .mvcc
            .lock()
            .expect("mvcc lock")
            .leases
            .iter()
            .map(|(id, record)| (*id, record.ttl_secs))
            .collect();
        let expired: Vec<LeaseId> = {
            let mut deadlines = node.inner.leases.deadlines.lock().expect("lease lock");
            deadlines.retain(|id, _| ttls.iter().any(|(live, _)| live == id));
            let mut expired = Vec::new();
            for (id, ttl) in &ttls {
                let deadline = deadlines
                    .entry(*id)
                    .or_insert_with(|| now + Duration::from_secs(*ttl as u64));
                if *deadline <= now {
                    expired.push(*id);
                    // Retry later if the revoke does not go through.
                    *deadline = now + Duration::from_secs(1);
                }
            }
            expired
        };
        for id in expired {
            let node = node.clone();
            tokio::spawn(async move {
                tracing::info!(lease = id, "lease expired; revoking");
                match node.execute(Command::LeaseRevoke(id), false).await {
                    Ok(_) | Err(StoreError::LeaseNotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking expired lease failed")
                    }
                }
            });
        }
    }
}

/// Renews a lease on the leader (forwarding from a follower).
pub(crate) async fn keep_alive(node: &StoreNode, id: LeaseId) -> Result<i64> {
    let deadline = Instant::now() + node.inner.config.request_timeout;
    loop {
        match node.wait_for_leader(deadline).await? {
            Leader::Local => return keep_alive_local(node, id),
            Leader::Remote(leader, addr) => {
                let timeout = node.inner.config.rpc_timeout;
                match node
                    .call_member(leader, &addr, PATH_KEEPALIVE, &id, timeout)
                    .await
                {
                    Ok(answer) => match answer {
                        Err(StoreError::NotLeader { .. }) => {}
                        other => return other,
                    },
                    Err(e) if Instant::now() >= deadline => {
                        return Err(StoreError::Unavailable(format!(
                            "keep-alive to leader {leader}: {e}"
                        )))
                    }
                    Err(_) => {}
                }
            }
            Leader::Unknown => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Renews a lease; only valid on the leader.
pub(crate) fn keep_alive_local(node: &StoreNode, id: LeaseId) -> Result<i64> {
    if node.leader() != Leader::Local {
        return Err(StoreError::NotLeader {
            leader_id: None,
            leader_addr: None,
        });
    }
    let ttl = node
        .inner
        .mvcc
        .lock()
        .expect("mvcc lock")
        .leases
        .get(&id)
        .map(|r| r.ttl_secs)
        .ok_or(StoreError::LeaseNotFound(id))?;
    node.inner
        .leases
        .deadlines
        .lock()
        .expect("lease lock")
        .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
    Ok(ttl)
}
