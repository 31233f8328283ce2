//! Leases: keep-alive keeps keys, expiry deletes them on every member.

use orch_raft_store::Kv;
use std::time::Duration;

use orch_raft_store::{KeyRange, PutRequest, RangeRequest, StoreError};
use orch_tests::store::TestCluster;
use orch_tests::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_lease_deletes_its_keys_on_every_member_and_keepalive_prevents_it() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    let lease = client.lease_grant(2).await.unwrap();
    for i in 0..3 {
        let mut put = PutRequest::new(format!("leased/{i}"), "alive");
        put.lease = lease.id;
        client.put_with(put).await.unwrap();
    }
    client.put("leased/unattached", "stays").await.unwrap();

    // Kept alive past its TTL, the keys stay.
    for _ in 0..8 {
        assert_eq!(client.lease_keep_alive(lease.id).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        client
            .range(RangeRequest::new(KeyRange::prefix("leased/")))
            .await
            .unwrap()
            .count,
        4
    );

    // Without keep-alives, the leader revokes it and every member deletes the keys.
    for id in cluster.running() {
        let node = cluster.member(id);
        wait_until(
            &format!("leased keys gone on member {id}"),
            Duration::from_secs(10),
            || {
                let node = node.clone();
                async move {
                    let mut req = RangeRequest::new(KeyRange::prefix("leased/"));
                    req.serializable = true;
                    let resp = node.range(req).await.unwrap();
                    (resp.count == 1).then_some(())
                }
            },
        )
        .await;
    }
    assert!(client.get("leased/unattached").await.unwrap().is_some());
    assert!(matches!(
        client.lease_keep_alive(lease.id).await,
        Err(StoreError::LeaseNotFound(_))
    ));

    // Revoke deletes at once; attaching to an unknown lease is refused.
    let lease = client.lease_grant(60).await.unwrap();
    let mut put = PutRequest::new("leased/r", "x");
    put.lease = lease.id;
    client.put_with(put).await.unwrap();
    client.lease_revoke(lease.id).await.unwrap();
    assert!(client.get("leased/r").await.unwrap().is_none());
    let mut put = PutRequest::new("leased/bad", "x");
    put.lease = lease.id;
    assert!(matches!(
        client.put_with(put).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    cluster.shutdown().await;
}
