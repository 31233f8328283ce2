//! Puts, gets, ranges and deletes through leader, followers and the HTTP client.

use orch_raft_store::Kv;
use std::time::Duration;

use orch_raft_store::{DeleteRequest, KeyRange, PutRequest, RangeRequest};
use orch_tests::store::TestCluster;
use orch_tests::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_any_member_read_back_with_etcd_semantics() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let client = cluster.client();

    // A follower forwards writes; each write gets the next revision.
    let first = cluster.member(follower).put("a/1", "one").await.unwrap();
    let second = cluster.member(leader).put("a/2", "two").await.unwrap();
    assert_eq!(second.revision, first.revision + 1);
    client.put("a/3", "three").await.unwrap();
    client.put("b/1", "other").await.unwrap();

    let kv = client.get("a/1").await.unwrap().expect("a/1 exists");
    assert_eq!(kv.value, b"one");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (first.revision, first.revision, 1)
    );

    // An update keeps create_revision, bumps version, returns the previous value.
    let mut update = PutRequest::new("a/1", "uno");
    update.prev_kv = true;
    let updated = client.put_with(update).await.unwrap();
    assert_eq!(updated.prev_kv.unwrap().value, b"one");
    let kv = client.get("a/1").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (first.revision, updated.revision, 2)
    );

    // Prefix range, in key order.
    let all = client
        .range(RangeRequest::new(KeyRange::prefix("a/")))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"a/1"[..], b"a/2", b"a/3"]);
    assert_eq!((all.count, all.more), (3, false));

    // Limit, count-only, keys-only, [start, end).
    let mut limited = RangeRequest::new(KeyRange::prefix("a/"));
    limited.limit = 2;
    let limited = client.range(limited).await.unwrap();
    assert_eq!(
        (limited.kvs.len(), limited.count, limited.more),
        (2, 3, true)
    );
    let mut count_only = RangeRequest::new(KeyRange::prefix("a/"));
    count_only.count_only = true;
    let counted = client.range(count_only).await.unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 3));
    let mut keys_only = RangeRequest::new(KeyRange::prefix("a/"));
    keys_only.keys_only = true;
    assert!(client
        .range(keys_only)
        .await
        .unwrap()
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && !kv.key.is_empty()));
    let between = client
        .range(RangeRequest::new(KeyRange::between("a/2", "b/1")))
        .await
        .unwrap();
    assert_eq!(
        between
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        vec![b"a/2".to_vec(), b"a/3".to_vec()]
    );

    // A read at an earlier revision sees the state of that revision.
    let mut old = RangeRequest::new(KeyRange::prefix("a/"));
    old.revision = first.revision;
    let old = client.range(old).await.unwrap();
    assert_eq!(old.kvs.len(), 1);
    assert_eq!(old.kvs[0].value, b"one");

    // Single and range deletes, with previous values.
    let deleted = client
        .delete(DeleteRequest {
            range: KeyRange::key("a/2"),
            prev_kv: true,
        })
        .await
        .unwrap();
    assert_eq!(
        (deleted.deleted, deleted.prev_kvs[0].value.as_slice()),
        (1, &b"two"[..])
    );
    let deleted = client
        .delete(DeleteRequest {
            range: KeyRange::prefix("a/"),
            prev_kv: false,
        })
        .await
        .unwrap();
    assert_eq!(deleted.deleted, 2);
    assert!(client.get("a/1").await.unwrap().is_none());
    let nothing = client
        .delete(DeleteRequest {
            range: KeyRange::prefix("zzz/"),
            prev_kv: false,
        })
        .await
        .unwrap();
    assert_eq!(nothing.deleted, 0);
    assert_eq!(
        nothing.revision, deleted.revision,
        "deleting nothing does not bump the revision"
    );

    // A serializable read on a follower converges to the same data.
    let follower_node = cluster.member(follower);
    wait_until(
        "follower to apply the deletes",
        Duration::from_secs(5),
        || {
            let node = follower_node.clone();
            async move {
                let mut req = RangeRequest::new(KeyRange::prefix(Vec::new()));
                req.serializable = true;
                let resp = node.range(req).await.unwrap();
                (resp.count == 1 && resp.kvs[0].key == b"b/1").then_some(())
            }
        },
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_join_and_leave_while_writes_continue() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..400u32 {
                let key = format!("w/{i:05}");
                if client.put(key.clone(), "v").await.is_ok() {
                    acked.push(key);
                }
            }
            acked
        })
    };
    // Grow to 4: start a member, add it as learner (waits for catch-up), promote.
    let new = cluster.start_member(4).await;
    let leader = cluster.wait_for_leader_among(&[1, 2, 3]).await;
    cluster
        .member(leader)
        .add_learner(4, new.addr())
        .await
        .unwrap();
    let status = cluster.member(leader).promote(&[4]).await.unwrap();
    assert!(
        status.voters.iter().any(|(id, _)| *id == 4),
        "member 4 is a voter: {status:?}"
    );
    // Shrink: remove a member that is not the leader.
    let leader = cluster.wait_for_leader().await;
    let victim = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader && *id != 4)
        .unwrap();
    let status = cluster.member(leader).remove(&[victim]).await.unwrap();
    assert!(!status.voters.iter().any(|(id, _)| *id == victim));
    assert!(!status.learners.iter().any(|(id, _)| *id == victim));
    cluster.stop_member(victim).await;

    let acked = writer.await.unwrap();
    assert!(
        acked.len() >= 390,
        "writes kept being accepted: {} of 400",
        acked.len()
    );
    cluster.wait_converged().await;
    for id in cluster.running() {
        crate::assert_member_holds(&cluster, id, acked.iter().map(String::as_str)).await;
    }
    cluster.shutdown().await;
}
