//! The control loops run on exactly one master, the Raft leader, and move
//! with leadership; writes bound to an old leadership are refused.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orch_core::registry::Registry;
use orch_core::server::ApiServer;
use orch_core::Client;
use orch_raft_store::{Kv, StoreError};
use orch_tests::cluster::TestMasters;
use orch_tests::wait_until;

/// GETs `path` from `addr` over HTTP/1.1; returns the body.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loops_run_on_one_master_and_move_when_it_stops() {
    let mut masters = TestMasters::start(3).await;
    let first = masters.wait_for_loops().await;
    assert!(
        masters.master(first).store.is_leader(),
        "the loops run on the store leader"
    );
    for i in masters.running() {
        assert_eq!(
            masters.master(i).runs_loops(),
            i == first,
            "only the leader runs the loops"
        );
    }
    // The leader serves its loops' counters at /metrics.
    let metrics = wait_until(
        "every loop to report metrics",
        Duration::from_secs(10),
        || {
            let addr = masters.master(first).api.addr.to_string();
            async move {
                let text = http_get(&addr, "/metrics").await;
                [
                    "scheduler",
                    "replicaset",
                    "deployment",
                    "garbage-collector",
                    "node-lifecycle",
                ]
                .iter()
                .all(|name| {
                    text.contains(&format!(
                        "orch_controller_queue_depth{{controller=\"{name}\"}}"
                    ))
                })
                .then_some(text)
            }
        },
    )
    .await;
    assert!(
        metrics.contains("orch_controller_reconcile_seconds_bucket"),
        "{metrics}"
    );
    // And its store member's Raft state and the requests it answered.
    assert!(metrics.contains("\norch_raft_is_leader 1\n"), "{metrics}");
    assert!(metrics.contains("\norch_raft_voters "), "{metrics}");
    let again = http_get(&masters.master(first).api.addr.to_string(), "/metrics").await;
    assert!(
        again.contains("orch_apiserver_requests_total{method=\"GET\",code=\"200\"}"),
        "{again}"
    );
    masters.stop(first).await;
    let second = masters.wait_for_loops().await;
    assert_ne!(second, first);
    assert!(masters.master(second).store.is_leader());
    masters.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_writes_fenced_to_an_old_term_are_refused_and_change_nothing() {
    let masters = TestMasters::start(3).await;
    let leader = masters.wait_for_loops().await;
    let store = masters.master(leader).store.clone();
    let term = store.leader_term().expect("the loop master leads");

    // Bound to the current term: applied.
    store.fenced(term).put("/fence/now", "1").await.unwrap();
    // Bound to an earlier leadership: refused by the state machine.
    let refused = store.fenced(term - 1).put("/fence/old", "1").await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { fence, term: t }) if fence == term - 1 && t == term),
        "an old-term write is fenced out: {refused:?}"
    );
    assert!(store.get("/fence/old").await.unwrap().is_none());
    assert!(store.get("/fence/now").await.unwrap().is_some());

    // Through the API, as a deposed leader's controller would write.
    let stale = Client::in_process(ApiServer::new(Registry::new(store.fenced(term - 1))));
    let err = stale
        .create(Some("default"), &config_map("from-old-leader"))
        .await
        .unwrap_err();
    assert_eq!(err.code, 503, "{err:?}");
    let fresh = masters.client(leader);
    assert_eq!(
        fresh
            .get::<ConfigMap>(Some("default"), "from-old-leader")
            .await
            .unwrap_err()
            .code,
        404
    );
    // A follower's writes forwarded to the leader are fenced the same way.
    let follower = masters
        .running()
        .into_iter()
        .find(|i| *i != leader)
        .unwrap();
    let forwarded = masters
        .master(follower)
        .store
        .fenced(term - 1)
        .put("/fence/forwarded", "1")
        .await;
    assert!(matches!(forwarded, Err(StoreError::Fenced { .. })));
    wait_until("the follower to catch up", Duration::from_secs(5), || {
        let store = masters.master(follower).store.clone();
        async move {
            let mut req =
                orch_raft_store::RangeRequest::new(orch_raft_store::KeyRange::key("/fence/now"));
            req.serializable = true;
            (!store.range(req).await.ok()?.kvs.is_empty()).then_some(())
        }
    })
    .await;
    masters.shutdown().await;
}
