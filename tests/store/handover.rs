//! A leader that stops hands leadership over: the follower it picks wins
//! at once, instead of the cluster waiting out the leader lease and an
//! election timeout.

use std::time::Instant;

use orch_raft_store::Kv;
use orch_tests::store::TestCluster;

#[tokio::test]
async fn a_leader_hands_over_to_an_up_to_date_follower() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    client.put("handover/before", "v").await.unwrap();
    let old = cluster.wait_for_leader().await;
    // (A leader that has led less than its lease waits it out first.)
    let started = Instant::now();
    let new = cluster
        .member(old)
        .hand_over_leadership()
        .await
        .unwrap()
        .expect("a follower took over");
    let took = started.elapsed();
    assert_ne!(new, old);
    println!("hand-over from {old} to {new} in {took:?}");
    // The old leader follows now and has nothing to hand over.
    assert_eq!(
        cluster.member(old).hand_over_leadership().await.unwrap(),
        None
    );
    cluster.stop_member(old).await;
    client.put("handover/after", "v").await.unwrap();
    assert!(client.get("handover/before").await.unwrap().is_some());
    cluster.shutdown().await;
}
