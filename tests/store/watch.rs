//! Watches: history replay then live events, in order, without gaps or
//! duplicates, across leader changes and member restarts.

use orch_raft_store::Kv;
use std::time::Duration;

use futures::StreamExt;
use orch_raft_store::{Client, EventKind, KeyRange, StoreError, WatchRequest, WatchStream};
use orch_tests::store::TestCluster;

/// Collects events from `stream` until `count` have arrived; returns their
/// (revision, key, kind).
async fn collect(stream: &mut WatchStream, count: usize) -> Vec<(i64, Vec<u8>, EventKind)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let resp = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {} of {count} events", seen.len()))
            .expect("watch stream ended")
            .expect("watch error");
        for event in resp.events {
            assert!(event.kv.mod_revision <= resp.revision);
            seen.push((event.kv.mod_revision, event.kv.key.clone(), event.kind));
        }
    }
    seen
}

fn assert_contiguous(events: &[(i64, Vec<u8>, EventKind)], first: i64) {
    for (i, (rev, key, _)) in events.iter().enumerate() {
        assert_eq!(
            *rev,
            first + i as i64,
            "event {i} ({}) has revision {rev}: gap or duplicate",
            String::from_utf8_lossy(key)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_replays_history_from_a_revision_then_follows_live_with_prev_values() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let mut start = 0;
    for i in 0..100 {
        let resp = client
            .put(format!("w/{}", i % 10), format!("v{i}"))
            .await
            .unwrap();
        if i == 49 {
            start = resp.revision;
        }
    }
    client.put("other/x", "not watched").await.unwrap();
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| !cluster.member(*id).is_leader())
        .unwrap();
    let mut req = WatchRequest::new(KeyRange::prefix("w/"));
    req.start_revision = start;
    req.prev_kv = true;
    let mut stream = cluster.member(follower).watch(req).await.unwrap();
    let replayed = collect(&mut stream, 51).await;
    assert_contiguous(&replayed, start);
    for i in 100..150 {
        client
            .put(format!("w/{}", i % 10), format!("v{i}"))
            .await
            .unwrap();
    }
    let live = tokio::time::timeout(Duration::from_secs(20), async {
        let mut events = Vec::new();
        while events.len() < 50 {
            let resp = stream.next().await.unwrap().unwrap();
            for event in resp.events {
                assert_eq!(event.kind, EventKind::Put);
                let prev = event.prev_kv.expect("previous value requested and present");
                assert_eq!(prev.key, event.kv.key);
                assert!(prev.mod_revision < event.kv.mod_revision);
                events.push(event.kv.mod_revision);
            }
        }
        events
    })
    .await
    .expect("live events arrive");
    // Revisions continue after the unwatched key's revision, without gaps.
    let after_other = replayed.last().unwrap().0 + 2;
    assert_eq!(live, (after_other..after_other + 50).collect::<Vec<_>>());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_continues_exactly_across_leader_change_and_restart_of_its_member() {
    let mut cluster = TestCluster::start(3).await;
    let writer = cluster.client();
    let start = writer.put("unwatched", "x").await.unwrap().revision + 1;

    let leader = cluster.wait_for_leader().await;
    let watched = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    // The watching client talks to `watched` first and fails over to the others.
    let first = cluster.member(watched).addr().to_string();
    let mut endpoints = vec![first.clone()];
    endpoints.extend(cluster.endpoints().into_iter().filter(|e| e != &first));
    let watcher = Client::new(endpoints);
    let mut req = WatchRequest::new(KeyRange::prefix("ev/"));
    req.start_revision = start;
    let mut stream = watcher.watch(req).await.unwrap();

    let mut written = 0;
    let mut write = |count: usize| {
        let writer = writer.clone();
        let from = written;
        written += count;
        async move {
            for i in from..from + count {
                let key = format!("ev/{i:05}");
                // A write cut off by the failover has an unknown fate: a
                // linearizable read tells whether it was applied before
                // trying again, so every key is written exactly once.
                loop {
                    match writer.put(key.clone(), "v").await {
                        Ok(_) => break,
                        Err(StoreError::Unavailable(_)) => {
                            if writer.get(key.clone()).await.unwrap().is_some() {
                                break;
                            }
                        }
                        Err(e) => panic!("writing {key}: {e}"),
                    }
                }
            }
        }
    };
    write(100).await;
    // Leader change: stop the leader, write, bring it back.
    cluster.stop_member(leader).await;
    cluster.wait_for_leader().await;
    write(100).await;
    cluster.start_member(leader).await;
    cluster.wait_for_leader().await;
    // Restart of the member the watch is connected to.
    cluster.stop_member(watched).await;
    write(100).await;
    cluster.start_member(watched).await;
    write(100).await;

    let events = collect(&mut stream, 400).await;
    assert_contiguous(&events, start);
    let keys: Vec<String> = events
        .iter()
        .map(|(_, k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..400).map(|i| format!("ev/{i:05}")).collect();
    assert_eq!(keys, expected, "every write seen once, in order");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_watch_gets_progress_notifications_and_compacted_start_is_refused() {
    let mut cluster = TestCluster::start(1).await;
    let node = cluster.member(1);
    for i in 0..10 {
        node.put(format!("p/{i}"), "v").await.unwrap();
    }
    let current = node.status().revision;
    let mut req = WatchRequest::new(KeyRange::prefix("p/"));
    req.progress_notify_ms = 200;
    let mut stream = node.watch(req).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(resp.is_progress_notify());
    assert_eq!(
        resp.revision, current,
        "a bookmark carries the revision seen so far"
    );

    node.compact(current - 3).await.unwrap();
    let mut old = WatchRequest::new(KeyRange::prefix("p/"));
    old.start_revision = current - 5;
    match node.watch(old.clone()).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!((requested, compacted), (current - 5, current - 3))
        }
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("watch below the compacted revision must fail"),
    }
    // Through the HTTP client the error arrives on the stream.
    let mut remote = cluster.client().watch(old).await.unwrap();
    let err = remote.next().await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    // Starting exactly at the compacted revision still works.
    let mut at = WatchRequest::new(KeyRange::prefix("p/"));
    at.start_revision = current - 3;
    let mut stream = node.watch(at).await.unwrap();
    let resp = stream.next().await.unwrap().unwrap();
    assert_eq!(resp.events[0].kv.mod_revision, current - 3);
    cluster.shutdown().await;
}
