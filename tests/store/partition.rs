//! Network partitions injected between in-process members.

use orch_raft_store::Kv;
use std::time::Duration;

use orch_raft_store::StoreError;
use orch_tests::store::TestCluster;
use orch_tests::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_minority_cannot_commit_and_its_stale_leader_steps_down_after_healing() {
    let mut cluster = TestCluster::start_with(3, |config| {
        config.request_timeout = Duration::from_secs(2);
    })
    .await;
    cluster.client().put("before", "v").await.unwrap();
    let old_leader = cluster.wait_for_leader().await;
    let majority: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();
    cluster.faults.isolate(old_leader, &majority);

    // The isolated leader cannot commit.
    let stale = cluster.member(old_leader);
    let err = stale.put("minority/write", "lost").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_)),
        "minority write: {err}"
    );

    // The majority elects a leader and keeps committing.
    let new_leader = cluster.wait_for_leader_among(&majority).await;
    assert_ne!(new_leader, old_leader);
    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("majority/{i}");
        cluster
            .member(new_leader)
            .put(key.clone(), "v")
            .await
            .unwrap();
        acked.push(key);
    }

    // Healing: the stale leader learns the higher term and follows.
    cluster.faults.heal();
    wait_until(
        "the stale leader to step down",
        Duration::from_secs(10),
        || async {
            let status = stale.status();
            (!stale.is_leader() && status.leader == Some(new_leader)).then_some(())
        },
    )
    .await;
    cluster.wait_converged().await;
    for id in cluster.running() {
        let state =
            crate::assert_member_holds(&cluster, id, acked.iter().map(String::as_str)).await;
        assert!(state.contains_key(&b"before"[..]));
        assert!(
            !state.contains_key(&b"minority/write"[..]),
            "member {id} has the uncommitted minority write"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_commit_through_delays_and_dropped_messages() {
    let mut cluster = TestCluster::start(3).await;
    cluster.faults.delay(1, 2, Duration::from_millis(30));
    cluster.faults.delay(2, 3, Duration::from_millis(10));
    cluster.faults.set_drop_rate(0.05);
    let client = cluster.client();
    let mut acked = Vec::new();
    for i in 0..100 {
        let key = format!("lossy/{i}");
        if client.put(key.clone(), "v").await.is_ok() {
            acked.push(key);
        }
    }
    cluster.faults.heal();
    assert!(
        acked.len() >= 90,
        "most writes commit despite 5% loss: {}",
        acked.len()
    );
    cluster.wait_converged().await;
    for key in &acked {
        assert!(client.get(key.clone()).await.unwrap().is_some());
    }
    cluster.shutdown().await;
}
