//! Node IPAM: gives each Node a pod address range of its own.
//!
//! The cluster range `settings.cluster_cidr` (IPv4) is cut into ranges of
//! prefix `settings.node_cidr_prefix`. A Node without `spec.podCIDR` gets
//! the lowest range no other node holds, written to `spec.podCIDR` and
//! `spec.podCIDRs`. The ranges in use are read from the node cache each
//! time (no separate allocation map to drift), and allocations are made
//! one at a time, each waiting until the cache has its write, so two nodes
//! never get the same range. When the cluster range is used up the node
//! gets an Event `CIDRNotAvailable` and waits until a node goes away.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use super::informer::revision_of;
use super::{util, Action, Cache, LoopContext, ReconcileError};
use crate::client::Client;
use crate::patch::PatchType;

/// How long a reconcile waits for its own write to reach the cache.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// An IPv4 range: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address as a number.
    pub base: u32,
    /// The prefix length (0-32).
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` (host bits are cleared).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.trim().split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        Some(Cidr {
            base: u32::from(addr) & mask(prefix),
            prefix,
        })
    }

    /// True if `other` lies inside this range.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && other.base & mask(self.prefix) == self.base
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// The lowest range of prefix `prefix` inside `cluster` that overlaps none
/// of `taken`.
pub fn next_free(cluster: Cidr, prefix: u8, taken: &BTreeSet<Cidr>) -> Option<Cidr> {
    if prefix < cluster.prefix || prefix > 32 {
        return None;
    }
    let count: u64 = 1u64 << (prefix - cluster.prefix);
    let step: u64 = 1u64 << (32 - prefix);
    (0..count)
        .map(|i| Cidr {
            base: (cluster.base as u64 + i * step) as u32,
            prefix,
        })
        .find(|candidate| {
            !taken
                .iter()
                .any(|t| t.contains(candidate) || candidate.contains(t))
        })
}

/// The ranges nodes hold now (both `podCIDR` and `podCIDRs`).
fn ranges_in_use(nodes: &Cache<Node>) -> BTreeSet<Cidr> {
    nodes
        .list()
        .iter()
        .filter_map(|n| n.spec.as_ref())
        .flat_map(|s| {
            s.pod_cidr
                .iter()
                .chain(s.pod_cidrs.iter().flatten())
                .filter_map(|c| Cidr::parse(c))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[derive(Clone)]
struct State {
    client: Client,
    nodes: Cache<Node>,
    cluster: Option<Cidr>,
    prefix: u8,
    /// Allocations are made one at a time.
    allocating: Arc<tokio::sync::Mutex<()>>,
    /// Nodes waiting for a range to become free.
    waiting: Arc<Mutex<BTreeSet<String>>>,
}

/// Runs node IPAM until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let waiting: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let q = queue.clone();
    let w = waiting.clone();
    let nodes = ctx
        .informer::<Node>()
        .start(ctx.stop.clone(), move |node: &Node| {
            q.add(node.metadata.name.clone().unwrap_or_default());
            // Any change (a deleted node in particular) may free a range.
            for name in w.lock().expect("ipam lock").iter() {
                q.add(name.clone());
            }
        });
    let cluster = Cidr::parse(&ctx.settings.cluster_cidr);
    if cluster.is_none() {
        tracing::error!(
            cluster_cidr = %ctx.settings.cluster_cidr,
            "cluster CIDR is not an IPv4 range: node IPAM allocates nothing"
        );
    }
    let state = State {
        client: ctx.client.clone(),
        nodes,
        cluster,
        prefix: ctx.settings.node_cidr_prefix,
        allocating: Arc::default(),
        waiting,
    };
    ctx.run("node-ipam", queue, move |key| {
        let state = state.clone();
        async move { reconcile(&state, &key).await }
    })
    .await;
}

async fn reconcile(state: &State, name: &str) -> Result<Action, ReconcileError> {
    let Some(cluster) = state.cluster else {
        return Ok(Action::Done);
    };
    let _one_at_a_time = state.allocating.lock().await;
    let Some(node) = state.nodes.get(name) else {
        state.waiting.lock().expect("ipam lock").remove(name);
        return Ok(Action::Done);
    };
    let has_range = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty());
    if has_range {
        state.waiting.lock().expect("ipam lock").remove(name);
        return Ok(Action::Done);
    }
    let taken = ranges_in_use(&state.nodes);
    let Some(range) = next_free(cluster, state.prefix, &taken) else {
        let newly = state
            .waiting
            .lock()
            .expect("ipam lock")
            .insert(name.to_string());
        if newly {
            let message = format!(
                "no /{} range left in cluster CIDR {cluster} for node {name}",
                state.prefix
            );
            tracing::warn!(node = name, "{message}");
            util::record_event(
                &state.client,
                &*node,
                "Warning",
                "CIDRNotAvailable",
                &message,
            )
            .await;
        }
        return Ok(Action::Done);
    };
    let range = range.to_string();
    let patch = json!({"spec": {"podCIDR": range, "podCIDRs": [range]}});
    let written: Node = state
        .client
        .patch(None, name, None, PatchType::Merge, &patch)
        .await?;
    state.waiting.lock().expect("ipam lock").remove(name);
    if !state
        .nodes
        .wait_for_revision(revision_of(&written.metadata), WRITE_WAIT)
        .await
    {
        return Err(ReconcileError::Stale(format!(
            "node {name}'s pod range {range} not yet in the cache"
        )));
    }
    tracing::info!(node = name, pod_cidr = %range, "allocated pod range");
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_out_lowest_first_without_overlap() {
        let cluster = Cidr::parse("10.244.0.0/16").unwrap();
        let mut taken = BTreeSet::new();
        let first = next_free(cluster, 24, &taken).unwrap();
        assert_eq!(first.to_string(), "10.244.0.0/24");
        taken.insert(first);
        taken.insert(Cidr::parse("10.244.2.0/24").unwrap());
        assert_eq!(
            next_free(cluster, 24, &taken).unwrap().to_string(),
            "10.244.1.0/24"
        );
        // A larger range taken elsewhere blocks everything inside it.
        taken.insert(Cidr::parse("10.244.0.0/22").unwrap());
        assert_eq!(
            next_free(cluster, 24, &taken).unwrap().to_string(),
            "10.244.4.0/24"
        );
    }

    #[test]
    fn a_full_cluster_range_has_nothing_left() {
        let cluster = Cidr::parse("10.0.0.0/30").unwrap();
        let taken: BTreeSet<Cidr> = ["10.0.0.0/31", "10.0.0.2/31"]
            .iter()
            .map(|c| Cidr::parse(c).unwrap())
            .collect();
        assert_eq!(next_free(cluster, 31, &taken), None);
        assert_eq!(
            Cidr::parse("10.0.0.7/24").unwrap().to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(Cidr::parse("nonsense"), None);
    }
}
