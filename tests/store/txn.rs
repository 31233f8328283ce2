//! Transactions: compare-and-swap under contention, atomic branches.

use orch_raft_store::Kv;
use std::sync::Arc;

use orch_raft_store::{
    Compare, CompareOp, DeleteRequest, KeyRange, PutRequest, RangeRequest, TxnOp, TxnOpResponse,
    TxnRequest,
};
use orch_tests::store::TestCluster;
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_swap_has_exactly_one_winner_per_round_among_16_writers() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    client.put("counter", "0").await.unwrap();
    const ROUNDS: usize = 20;
    const WRITERS: usize = 16;
    for round in 0..ROUNDS {
        let current = client.get("counter").await.unwrap().unwrap();
        let value: u64 = String::from_utf8(current.value.clone())
            .unwrap()
            .parse()
            .unwrap();
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            // Spread writers over the in-process members and the HTTP client.
            let member = cluster.member((writer % 3) as u64 + 1);
            let client = client.clone();
            let barrier = barrier.clone();
            let mod_revision = current.mod_revision;
            tasks.push(tokio::spawn(async move {
                let txn = TxnRequest {
                    compare: vec![Compare::mod_revision(
                        "counter",
                        CompareOp::Equal,
                        mod_revision,
                    )],
                    success: vec![TxnOp::Put(PutRequest::new(
                        "counter",
                        (value + 1).to_string(),
                    ))],
                    failure: vec![],
                };
                barrier.wait().await;
                if writer % 2 == 0 {
                    member.txn(txn).await.unwrap().succeeded
                } else {
                    client.txn(txn).await.unwrap().succeeded
                }
            }));
        }
        let mut winners = 0;
        for task in tasks {
            winners += task.await.unwrap() as usize;
        }
        assert_eq!(winners, 1, "round {round}: exactly one writer wins");
    }
    let last = client.get("counter").await.unwrap().unwrap();
    assert_eq!(last.value, ROUNDS.to_string().as_bytes());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn txn_branches_apply_atomically_under_one_revision() {
    let mut cluster = TestCluster::start(1).await;
    let node = cluster.member(1);
    node.put("t/a", "1").await.unwrap();
    node.put("t/b", "2").await.unwrap();
    let before = node.status().revision;

    // Failing compare runs the failure branch: a read, a put and a delete.
    let resp = node
        .txn(TxnRequest {
            compare: vec![Compare::value("t/a", CompareOp::Equal, "nope")],
            success: vec![TxnOp::Put(PutRequest::new("t/never", "x"))],
            failure: vec![
                TxnOp::Range(RangeRequest::new(KeyRange::prefix("t/"))),
                TxnOp::Put(PutRequest::new("t/c", "3")),
                TxnOp::Delete(DeleteRequest {
                    range: KeyRange::key("t/a"),
                    prev_kv: true,
                }),
            ],
        })
        .await
        .unwrap();
    assert!(!resp.succeeded);
    assert_eq!(
        resp.revision,
        before + 1,
        "all writes of a txn share one revision"
    );
    match &resp.responses[0] {
        TxnOpResponse::Range(range) => assert_eq!(range.count, 2),
        other => panic!("expected a range response, got {other:?}"),
    }
    let c = node.get("t/c").await.unwrap().unwrap();
    assert_eq!(c.mod_revision, before + 1);
    assert!(node.get("t/a").await.unwrap().is_none());
    assert!(node.get("t/never").await.unwrap().is_none());

    // Compare on a missing key: version 0 and create_revision 0.
    let resp = node
        .txn(TxnRequest {
            compare: vec![
                Compare::version("t/missing", CompareOp::Equal, 0),
                Compare::create_revision("t/c", CompareOp::Equal, before + 1),
            ],
            success: vec![TxnOp::Put(PutRequest::new("t/missing", "now"))],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(resp.succeeded);

    // A txn refused by the state machine (unknown lease) changes nothing.
    let mut leased = PutRequest::new("t/leased", "x");
    leased.lease = 424242;
    let revision = node.status().revision;
    let err = node
        .txn(TxnRequest {
            compare: vec![],
            success: vec![
                TxnOp::Put(PutRequest::new("t/first", "x")),
                TxnOp::Put(leased),
            ],
            failure: vec![],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, orch_raft_store::StoreError::LeaseNotFound(424242)),
        "{err}"
    );
    assert!(node.get("t/first").await.unwrap().is_none());
    assert_eq!(node.status().revision, revision);
    cluster.shutdown().await;
}
