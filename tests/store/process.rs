//! Members as separate processes, killed with SIGKILL.

use orch_raft_store::Kv;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_raft_store::Client;
use orch_tests::store::{free_addr, MemberProcess};
use orch_tests::wait_until;

use crate::failover::{longest_gap_after, spawn_writers};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_process_loses_no_acknowledged_write() {
    orch_tests::init_logging();
    let root = tempfile::tempdir().unwrap();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_store-member"));
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut members = vec![MemberProcess::spawn(
        binary,
        1,
        &addrs[0],
        &root.path().join("m1"),
        &["--bootstrap"],
    )];
    let client = Client::new(addrs.clone()).with_timeout(Duration::from_secs(10));
    wait_until("member 1 to lead", Duration::from_secs(20), || async {
        client
            .status_of(&addrs[0])
            .await
            .ok()
            .filter(|s| s.leader == Some(1))
            .map(|_| ())
    })
    .await;
    for id in 2..=3u64 {
        let i = id as usize - 1;
        members.push(MemberProcess::spawn(
            binary,
            id,
            &addrs[i],
            &root.path().join(format!("m{id}")),
            &["--join", &addrs[0]],
        ));
    }
    wait_until("three voters", Duration::from_secs(30), || async {
        client
            .status_of(&addrs[0])
            .await
            .ok()
            .filter(|s| s.voters.len() == 3)
            .map(|_| ())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (writers, acked) = spawn_writers(client.clone(), 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let leader = client.status().await.unwrap().leader.expect("a leader");
    let killed_at = Instant::now();
    members[leader as usize - 1].kill9();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    writers.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.iter().any(|(_, t)| *t > killed_at),
        "writes accepted again after kill -9"
    );
    println!(
        "leader process {leader} killed with SIGKILL: writes unavailable for {:.0} ms; {} writes acknowledged",
        longest_gap_after(&acked, killed_at).as_secs_f64() * 1000.0,
        acked.len()
    );
    for (key, _) in &acked {
        assert!(
            client.get(key.clone()).await.unwrap().is_some(),
            "acknowledged {key} lost"
        );
    }
    // The killed member restarts from its data dir and catches up.
    members[leader as usize - 1].restart();
    let killed_addr = addrs[leader as usize - 1].clone();
    let target = client.status().await.unwrap().revision;
    wait_until(
        "the restarted member to catch up",
        Duration::from_secs(30),
        || async {
            client
                .status_of(&killed_addr)
                .await
                .ok()
                .filter(|s| s.revision >= target)
                .map(|_| ())
        },
    )
    .await;
}
