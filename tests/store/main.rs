//! Integration tests of orch's replicated store, against real RocksDB and
//! real Raft over HTTP/2 sockets on loopback.

mod bad_input;
mod catchup;
mod failover;
mod handover;
mod kv;
mod lease;
mod partition;
mod process;
mod snapshot;
mod tls;
mod txn;
mod watch;

use orch_raft_store::Kv;
use std::collections::BTreeMap;

use orch_raft_store::{KeyRange, RangeRequest, Revision, StoreNode};

/// Every key of a member's local state with its metadata, and the member's
/// revision (serializable read: what this member itself holds).
pub async fn local_state(
    node: &StoreNode,
) -> (BTreeMap<Vec<u8>, orch_raft_store::KeyValue>, Revision) {
    let mut req = RangeRequest::new(KeyRange::prefix(Vec::new()));
    req.serializable = true;
    let resp = node.range(req).await.expect("local range");
    (
        resp.kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect(),
        resp.revision,
    )
}

/// Asserts that member `id` holds every key of `keys` in its own local
/// state; returns that state for further checks.
pub async fn assert_member_holds<'a>(
    cluster: &orch_tests::store::TestCluster,
    id: orch_raft_store::NodeId,
    keys: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<Vec<u8>, orch_raft_store::KeyValue> {
    let (state, _) = local_state(&cluster.member(id)).await;
    for key in keys {
        assert!(
            state.contains_key(key.as_bytes()),
            "member {id} lacks acknowledged {key}"
        );
    }
    state
}
