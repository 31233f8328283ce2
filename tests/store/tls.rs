//! Members over mutual TLS: they replicate, and a client (or member)
//! without a certificate of the cluster's CA is refused in the handshake.

use std::net::IpAddr;
use std::time::Duration;

use orch_core::cluster_ca::ClusterCa;
use orch_raft_store::network::PeerTls;
use orch_raft_store::{Client, Kv, NodeConfig, StoreNode};

fn loopback() -> Vec<IpAddr> {
    vec![IpAddr::from([127, 0, 0, 1])]
}

async fn member(id: u64, dir: &std::path::Path, tls: &PeerTls) -> StoreNode {
    let mut config = NodeConfig::new(
        id,
        dir.join(format!("m{id}")),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.peer_tls = Some(tls.clone());
    StoreNode::start(config).await.expect("member starts")
}

#[tokio::test]
async fn members_talk_over_mutual_tls_and_refuse_strangers() {
    orch_tests::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let mut members = Vec::new();
    for id in 1..=3 {
        let tls = ca.peer_tls(&loopback(), &[]).unwrap();
        members.push(member(id, dir.path(), &tls).await);
    }
    members[0].initialize().await.unwrap();
    for m in &members[1..] {
        members[0].add_learner(m.id(), m.addr()).await.unwrap();
        members[0].promote(&[m.id()]).await.unwrap();
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.addr().to_string()).collect();

    // A client with a certificate of the cluster's CA reads and writes.
    let client = Client::new(endpoints.clone()).with_tls(&ca.peer_tls(&loopback(), &[]).unwrap());
    client.put("tls/key", "value").await.unwrap();
    assert_eq!(
        client.get("tls/key").await.unwrap().unwrap().value,
        b"value".to_vec()
    );
    for m in &members {
        orch_tests::wait_until(
            "the write reaches every member",
            Duration::from_secs(10),
            || async {
                let mut req =
                    orch_raft_store::RangeRequest::new(orch_raft_store::KeyRange::key("tls/key"));
                req.serializable = true;
                (m.range(req).await.ok()?.kvs.len() == 1).then_some(())
            },
        )
        .await;
    }

    // Cleartext, or a certificate of another CA: refused, nothing written.
    let plain = Client::new(endpoints.clone()).with_timeout(Duration::from_secs(2));
    assert!(plain.put("tls/plain", "x").await.is_err());
    let stranger = ClusterCa::generate()
        .unwrap()
        .peer_tls(&loopback(), &[])
        .unwrap();
    let foreign = Client::new(endpoints.clone())
        .with_tls(&stranger)
        .with_timeout(Duration::from_secs(2));
    assert!(foreign.put("tls/foreign", "x").await.is_err());
    assert!(foreign.status().await.is_err());
    assert!(client.get("tls/plain").await.unwrap().is_none());
    assert!(client.get("tls/foreign").await.unwrap().is_none());

    // A member of another CA cannot be reached by the cluster: adding it
    // never completes, and the cluster keeps serving.
    let outsider = member(9, dir.path(), &stranger).await;
    let add = tokio::time::timeout(
        Duration::from_secs(3),
        members[0].add_learner(9, outsider.addr()),
    )
    .await;
    assert!(
        !matches!(add, Ok(Ok(_))),
        "a member of another CA was added"
    );
    client.put("tls/after", "v").await.unwrap();
    outsider.shutdown().await;
    for m in members {
        m.shutdown().await;
    }
}
