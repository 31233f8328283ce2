//! Leader failure: a new leader is elected, no acknowledged write is lost,
//! and writes are accepted again. Prints how long writes were unavailable.

use orch_raft_store::Kv;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_raft_store::Client;
use orch_tests::store::TestCluster;

/// Keys acknowledged by writers, with the time of each acknowledgement.
pub type Acked = Arc<Mutex<Vec<(String, Instant)>>>;

/// Writes unique keys until `stop`, recording acknowledged keys and the
/// time of every acknowledgement.
pub fn spawn_writers(
    client: Client,
    writers: usize,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Acked) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = client.clone();
        let stop = stop.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("fo/{w:02}/{i:08}");
                i += 1;
                if client.put(key.clone(), "v").await.is_ok() {
                    acked.lock().unwrap().push((key, Instant::now()));
                }
            }
        }));
    }
    let all = tokio::spawn(async move {
        for task in tasks {
            task.await.unwrap();
        }
    });
    (all, acked)
}

/// The longest gap between acknowledgements after `since`.
pub fn longest_gap_after(acked: &[(String, Instant)], since: Instant) -> Duration {
    let mut times: Vec<Instant> = acked.iter().map(|(_, t)| *t).collect();
    times.sort();
    let before = times
        .iter()
        .rev()
        .find(|t| **t <= since)
        .copied()
        .unwrap_or(since);
    let mut gap = Duration::ZERO;
    let mut last = before;
    for t in times.into_iter().filter(|t| *t > since) {
        gap = gap.max(t - last);
        last = t;
    }
    gap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut cluster = TestCluster::start(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (writers, acked) = spawn_writers(
        cluster.client().with_timeout(Duration::from_secs(10)),
        8,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;

    let old_leader = cluster.wait_for_leader().await;
    let killed_at = Instant::now();
    cluster.stop_member(old_leader).await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    writers.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let after: Vec<_> = acked.iter().filter(|(_, t)| *t > killed_at).collect();
    assert!(
        !after.is_empty(),
        "writes are accepted again after the failover"
    );
    let gap = longest_gap_after(&acked, killed_at);
    println!(
        "leader {old_leader} stopped (tasks aborted, sockets closed): writes unavailable for {:.0} ms; new leader {new_leader}; {} writes acknowledged",
        gap.as_secs_f64() * 1000.0,
        acked.len()
    );
    let client = cluster.client();
    for (key, _) in &acked {
        assert!(
            client.get(key.clone()).await.unwrap().is_some(),
            "acknowledged {key} lost"
        );
    }
    // The old leader comes back as a follower and catches up.
    cluster.start_member(old_leader).await;
    cluster.wait_converged().await;
    crate::assert_member_holds(
        &cluster,
        old_leader,
        acked.iter().map(|(key, _)| key.as_str()),
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_of_all_members_keeps_data_and_revision() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    for i in 0..300 {
        client
            .put(format!("r/{:04}", i % 200), format!("v{i}"))
            .await
            .unwrap();
    }
    client
        .delete(orch_raft_store::DeleteRequest {
            range: orch_raft_store::KeyRange::between("r/0000", "r/0050"),
            prev_kv: false,
        })
        .await
        .unwrap();
    cluster.wait_converged().await;
    let (before, revision) = crate::local_state(&cluster.member(1)).await;
    assert_eq!(before.len(), 150);
    cluster.shutdown().await;
    for id in 1..=3 {
        cluster.start_member(id).await;
    }
    cluster.wait_for_leader().await;
    cluster.wait_converged().await;
    for id in 1..=3 {
        let (after, after_revision) = crate::local_state(&cluster.member(id)).await;
        assert_eq!(after_revision, revision, "member {id} revision");
        assert_eq!(after, before, "member {id} data");
    }
    // And the cluster still takes writes, continuing the revision sequence.
    let next = cluster.client().put("r/new", "v").await.unwrap();
    assert_eq!(next.revision, revision + 1);
    cluster.shutdown().await;
}
