//! Bad input gets a typed error, never a panic, and changes nothing.

use orch_raft_store::Kv;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use orch_raft_store::{
    Compare, CompareOp, DeleteRequest, KeyRange, NodeConfig, PutRequest, RangeRequest, StoreError,
    StoreNode, TxnOp, TxnRequest,
};
use orch_tests::store::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_get_typed_errors_and_write_nothing() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let node = cluster.member(1);
    client.put("k", "v").await.unwrap();
    let revision = node.status().revision;

    // Over the 1.5 MiB limit, in-process and over HTTP (also far over it).
    let big = vec![7u8; 1536 * 1024 + 1];
    let err = node.put("big", big.clone()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::RequestTooLarge { limit, .. } if limit == 1536 * 1024),
        "{err}"
    );
    let err = client.put("big", big).await.unwrap_err();
    assert!(matches!(err, StoreError::RequestTooLarge { .. }), "{err}");
    let err = client.put("huge", vec![1u8; 8 << 20]).await.unwrap_err();
    assert!(matches!(err, StoreError::RequestTooLarge { .. }), "{err}");

    // Empty keys, inverted ranges.
    assert_eq!(client.put("", "v").await.unwrap_err(), StoreError::EmptyKey);
    let txn = TxnRequest {
        compare: vec![Compare::value("", CompareOp::Equal, "v")],
        success: vec![TxnOp::Put(PutRequest::new("x", "y"))],
        failure: vec![],
    };
    assert_eq!(client.txn(txn).await.unwrap_err(), StoreError::EmptyKey);
    let inverted = KeyRange::between("z", "a");
    assert_eq!(
        client
            .range(RangeRequest::new(inverted.clone()))
            .await
            .unwrap_err(),
        StoreError::InvertedRange
    );
    assert_eq!(
        client
            .delete(DeleteRequest {
                range: inverted.clone(),
                prev_kv: false
            })
            .await
            .unwrap_err(),
        StoreError::InvertedRange
    );
    assert!(node
        .watch(orch_raft_store::WatchRequest::new(inverted))
        .await
        .is_err());

    // Compaction beyond the current revision; reads below the compacted one.
    let err = client.compact(revision + 100).await.unwrap_err();
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err}");
    client.put("k", "v2").await.unwrap();
    client.put("k", "v3").await.unwrap();
    let now = node.status().revision;
    client.compact(now - 1).await.unwrap();
    assert!(matches!(
        client.compact(now - 1).await.unwrap_err(),
        StoreError::Compacted { .. }
    ));
    let mut old = RangeRequest::new(KeyRange::key("k"));
    old.revision = now - 2;
    assert!(matches!(
        client.range(old).await.unwrap_err(),
        StoreError::Compacted { .. }
    ));
    let mut future = RangeRequest::new(KeyRange::key("k"));
    future.revision = now + 10;
    assert!(matches!(
        client.range(future).await.unwrap_err(),
        StoreError::FutureRevision { .. }
    ));
    let err = client.lease_grant(0).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");

    // Nothing of the refused requests was written.
    assert_eq!(node.status().revision, now);
    assert!(client.get("big").await.unwrap().is_none());
    assert!(client.get("x").await.unwrap().is_none());
    assert_eq!(client.get("k").await.unwrap().unwrap().value, b"v3");
    cluster.shutdown().await;
}

fn snapshot_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.insert(
                    entry.path().display().to_string(),
                    std::fs::read(entry.path()).unwrap(),
                );
            }
        }
    }
    files
}

fn config(dir: &Path) -> NodeConfig {
    NodeConfig::new(1, dir, "127.0.0.1:0".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_data_dirs_stop_the_member_with_a_clear_error_and_stay_untouched() {
    let root = tempfile::tempdir().unwrap();

    // Locked by a running member.
    let live = root.path().join("live");
    let node = StoreNode::start(config(&live)).await.unwrap();
    node.initialize().await.unwrap();
    node.put("k", "v").await.unwrap();
    match StoreNode::start(config(&live)).await {
        Err(StoreError::DataDirLocked { .. }) => {}
        Err(e) => panic!("expected DataDirLocked, got {e}"),
        Ok(_) => panic!("a second member opened a locked data dir"),
    }
    node.shutdown().await;
    drop(node);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Not an orch dir, and a future format version.
    let foreign = root.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "someone else's files").unwrap();
    let before = snapshot_dir(&foreign);
    assert!(matches!(
        StoreNode::start(config(&foreign)).await,
        Err(StoreError::UnknownFormat { .. })
    ));
    assert_eq!(snapshot_dir(&foreign), before);
    let future = root.path().join("future");
    std::fs::create_dir_all(&future).unwrap();
    std::fs::write(future.join("FORMAT"), "orch-raft-store 99\n").unwrap();
    let before = snapshot_dir(&future);
    let err = StoreNode::start(config(&future))
        .await
        .err()
        .expect("future format refused");
    assert!(matches!(err, StoreError::UnknownFormat { .. }), "{err}");
    assert!(
        err.to_string().contains("99"),
        "the message names the version: {err}"
    );
    assert_eq!(snapshot_dir(&future), before);

    // Corrupt RocksDB files.
    let current = live.join("db").join("CURRENT");
    std::fs::write(&current, b"garbage without newline").unwrap();
    let err = StoreNode::start(config(&live))
        .await
        .err()
        .expect("corrupt dir refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(&current).unwrap(), b"garbage without newline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_messages_from_non_members_are_rejected() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let target = cluster.member(leader).addr().to_string();
    // A vote request from node 99, which is not in the configuration.
    let vote = orch_raft_store::network::Envelope {
        from: 99u64,
        body: openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(1000, 99), None),
    };
    let transport = orch_raft_store::network::HttpTransport::new();
    let err = transport
        .post(
            &target,
            orch_raft_store::network::PATH_VOTE,
            bytes::Bytes::from(orch_raft_store::codec::encode(&vote)),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    match err {
        orch_raft_store::network::TransportError::Status { status, body } => {
            assert_eq!(status, 403);
            assert!(body.contains("not a member"), "{body}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    // The high-term vote did not disturb the leader.
    assert_eq!(cluster.wait_for_leader().await, leader);
    assert_eq!(
        cluster.member(leader).status().term,
        cluster.member(leader).status().term
    );
    // Malformed bodies are refused too.
    let err = transport
        .post(
            &target,
            orch_raft_store::network::PATH_APPEND,
            bytes::Bytes::from_static(b"\xff\xff"),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        orch_raft_store::network::TransportError::Status { status: 400, .. }
    ));
    cluster.client().put("still", "working").await.unwrap();
    cluster.shutdown().await;
}
