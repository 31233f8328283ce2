//! Snapshot save on a live cluster and restore into a new cluster.

use futures::StreamExt;
use orch_raft_store::Kv;
use orch_raft_store::{restore_snapshot, KeyRange, NodeConfig, StoreNode, WatchRequest};
use orch_tests::store::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_of_a_live_cluster_restores_with_identical_keys_and_revisions() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    for i in 0..500 {
        client
            .put(format!("s/{:04}", i % 300), format!("v{i}"))
            .await
            .unwrap();
    }
    client
        .delete(orch_raft_store::DeleteRequest {
            range: KeyRange::between("s/0100", "s/0120"),
            prev_kv: false,
        })
        .await
        .unwrap();
    let lease = client.lease_grant(3600).await.unwrap();
    let mut leased = orch_raft_store::PutRequest::new("s/leased", "v");
    leased.lease = lease.id;
    client.put_with(leased).await.unwrap();
    // Writes keep going while the snapshot is taken.
    let background = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                client.put(format!("bg/{i}"), "v").await.unwrap();
            }
        })
    };
    let file = cluster.root().join("snap.db");
    client.snapshot_save(&file).await.unwrap();
    background.await.unwrap();

    // What the snapshot must hold: the cluster's state at the revision it records.
    let restored_dir = cluster.root().join("restored");
    restore_snapshot(&file, &restored_dir).unwrap();
    let restored = StoreNode::start(NodeConfig::new(
        9,
        &restored_dir,
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let (restored_state, restored_revision) = crate::local_state(&restored).await;
    let mut at = orch_raft_store::RangeRequest::new(KeyRange::prefix(Vec::new()));
    at.revision = restored_revision;
    let original = client.range(at).await.unwrap();
    let original: std::collections::BTreeMap<_, _> = original
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    assert!(
        restored_revision >= 500,
        "snapshot taken after the acknowledged writes"
    );
    assert_eq!(
        restored_state, original,
        "same keys, values, revisions and versions"
    );
    assert_eq!(
        restored.status().voters.len(),
        1,
        "restored as a single-member cluster"
    );

    // History survives: a watch from revision 1 replays every revision.
    let mut req = WatchRequest::new(KeyRange::prefix("s/"));
    req.start_revision = 1;
    let mut stream = restored.watch(req).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.events[0].kv.mod_revision, 1);
    // The lease came along and the restored cluster takes writes after the old revision.
    assert!(restored.lease_keep_alive(lease.id).await.is_ok());
    let next = restored.put("after", "restore").await.unwrap();
    assert_eq!(next.revision, restored_revision + 1);
    restored.shutdown().await;

    // Restore refuses a non-empty dir and a damaged file.
    assert!(restore_snapshot(&file, &restored_dir).is_err());
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let damaged = cluster.root().join("damaged.db");
    std::fs::write(&damaged, bytes).unwrap();
    let err = restore_snapshot(&damaged, &cluster.root().join("never")).unwrap_err();
    assert!(
        matches!(err, orch_raft_store::StoreError::Corrupt { .. }),
        "{err}"
    );
    assert!(
        !cluster.root().join("never").exists(),
        "nothing written for a damaged snapshot"
    );
    cluster.shutdown().await;
}
