//! A transport wrapper that injects faults between members, for tests:
//! partitions (both directions of a link blocked), per-link delays and a drop
//! rate. Blocked or dropped messages fail as `Unreachable` without reaching
//! the peer; answers on a blocked link are lost too.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;

use super::{BoxFuture, Transport, TransportError};
use crate::types::NodeId;

#[derive(Default)]
struct Rules {
    blocked: HashSet<(NodeId, NodeId)>,
    delays: HashMap<(NodeId, NodeId), Duration>,
    drop_rate: f64,
}

/// Fault rules shared by the [`FaultyTransport`]s of every member of a test
/// cluster.
#[derive(Default, Clone)]
pub struct FaultRules {
    rules: Arc<Mutex<Rules>>,
}

impl FaultRules {
    /// No faults yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cuts every link between a member of `side_a` and a member of `side_b`.
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let mut rules = self.rules.lock().expect("fault rules lock");
        for a in side_a {
            for b in side_b {
                rules.blocked.insert((*a, *b));
                rules.blocked.insert((*b, *a));
            }
        }
    }

    /// Cuts `node` off from every member in `others`.
    pub fn isolate(&self, node: NodeId, others: &[NodeId]) {
        self.partition(&[node], others);
    }

    /// Delays every message from `from` to `to` by `delay`.
    pub fn delay(&self, from: NodeId, to: NodeId, delay: Duration) {
        self.rules
            .lock()
            .expect("fault rules lock")
            .delays
            .insert((from, to), delay);
    }

    /// Drops this fraction (0.0 to 1.0) of all messages at random.
    pub fn set_drop_rate(&self, rate: f64) {
        self.rules.lock().expect("fault rules lock").drop_rate = rate;
    }

    /// Removes every fault.
    pub fn heal(&self) {
        *self.rules.lock().expect("fault rules lock") = Rules::default();
    }

    fn verdict(&self, from: NodeId, to: NodeId) -> (bool, Duration) {
        let rules = self.rules.lock().expect("fault rules lock");
        let blocked = rules.blocked.contains(&(from, to))
            || (rules.drop_rate > 0.0 && rand::rng().random_bool(rules.drop_rate.min(1.0)));
        let delay = rules.delays.get(&(from, to)).copied().unwrap_or_default();
        (blocked, delay)
    }

    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.rules
            .lock()
            .expect("fault rules lock")
            .blocked
            .contains(&(from, to))
    }
}

/// The transport of member `from`, subject to shared [`FaultRules`].
pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    from: NodeId,
    rules: FaultRules,
}

impl FaultyTransport {
    /// Wraps `inner` for the member `from`.
    pub fn new(inner: Arc<dyn Transport>, from: NodeId, rules: FaultRules) -> Self {
        FaultyTransport { inner, from, rules }
    }
}

impl Transport for FaultyTransport {
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        path: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let (blocked, delay) = self.rules.verdict(self.from, target);
        let from = self.from;
        let rules = self.rules.clone();
        let call = self.inner.call(target, addr, path, body, timeout);
        Box::pin(async move {
            if blocked {
                return Err(TransportError::Unreachable(format!(
                    "link {from} -> {target} is cut by a fault rule"
                )));
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let answer = call.await;
            if rules.blocked(target, from) {
                return Err(TransportError::Timeout(timeout));
            }
            answer
        })
    }
}
