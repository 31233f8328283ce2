//! A member that was down while 10,000 writes happened catches up, from the
//! log or, once the log was purged, through a snapshot.

use orch_raft_store::Kv;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use orch_tests::store::TestCluster;

async fn write_many(client: &orch_raft_store::Client, count: usize, concurrency: usize) {
    stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                client
                    .put(format!("c/{i:06}"), vec![b'x'; 64])
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
}

async fn down_for_writes_then_rejoin(cluster: &mut TestCluster, concurrency: usize) -> (u64, u64) {
    let client = cluster.client().with_timeout(Duration::from_secs(30));
    client.put("seed", "v").await.unwrap();
    let leader = cluster.wait_for_leader().await;
    let lagging = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let last_index = cluster.member(lagging).status().applied_index;
    cluster.stop_member(lagging).await;
    write_many(&client, 10_000, concurrency).await;
    cluster.start_member(lagging).await;
    cluster.wait_converged().await;
    let (state, _) = crate::local_state(&cluster.member(lagging)).await;
    assert_eq!(
        state.keys().filter(|k| k.starts_with(b"c/")).count(),
        10_000
    );
    let (leader_state, _) = crate::local_state(&cluster.member(leader)).await;
    assert_eq!(
        state, leader_state,
        "the rejoined member holds exactly the leader's data"
    );
    (lagging, last_index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_down_for_10000_writes_catches_up_from_the_log() {
    let mut cluster = TestCluster::start(3).await;
    let (lagging, _) = down_for_writes_then_rejoin(&mut cluster, 32).await;
    let metrics = cluster.member(lagging).raft().metrics().borrow().clone();
    assert!(
        metrics.snapshot.is_none(),
        "caught up from the log, without a snapshot"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_down_for_10000_writes_catches_up_through_snapshot_after_log_purge() {
    let mut cluster = TestCluster::start_with(3, |config| {
        config.snapshot_after_logs = 100;
        config.logs_kept_after_snapshot = 10;
    })
    .await;
    let (lagging, last_index) = down_for_writes_then_rejoin(&mut cluster, 8).await;
    let leader = cluster.wait_for_leader().await;
    let leader_metrics = cluster.member(leader).raft().metrics().borrow().clone();
    let purged = leader_metrics
        .purged
        .expect("the leader purged its log")
        .index;
    assert!(
        purged > last_index,
        "the leader purged past the lagging member's log ({purged} > {last_index}), so only a snapshot could catch it up"
    );
    let metrics = cluster.member(lagging).raft().metrics().borrow().clone();
    assert!(
        metrics.snapshot.is_some(),
        "the lagging member installed a snapshot"
    );
    cluster.shutdown().await;
}
