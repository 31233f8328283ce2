//! Rotating the Secrets key, as an operator does it: Secrets stay
//! readable through kubectl, their stored values are sealed with the new
//! key afterwards (the store holds no plain text and no value of a
//! dropped key), and a master that still had the old keyring cannot seal
//! a Secret with a retired key.

use orch_core::encryption::{self, KEYRING_KEY};
use orch_core::Registry;
use orch_raft_store::{KeyRange, Kv, RangeRequest, StoreNode};
use orch_tests::api::TestApi;
use serde_json::Value;

/// The key ids the stored Secrets are sealed with (`None`: the
/// key-encryption key); panics on a plain value.
async fn sealed_with(store: &StoreNode) -> Vec<Option<String>> {
    let kvs = store
        .range(RangeRequest::new(KeyRange::prefix("/registry/secrets/")))
        .await
        .unwrap()
        .kvs;
    kvs.iter()
        .map(|kv| {
            assert!(encryption::is_sealed(&kv.value), "{:?} is plain", kv.key);
            encryption::key_id_of(&kv.value).map(str::to_string)
        })
        .collect()
}

async fn rotate(api: &TestApi) -> Value {
    let (code, report) = api
        .request(
            "POST",
            "/orch/v1/secrets/rotate-key",
            "application/json",
            b"",
        )
        .await;
    assert_eq!(code, 200, "{report}");
    report
}

#[tokio::test]
async fn rotation_reseals_every_secret_and_drops_the_old_key() {
    let api = TestApi::start_with(|c| c.secret_key = Some([42; 32])).await;
    let store = api.plane.as_ref().unwrap().store.clone();
    for i in 0..5 {
        api.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            &format!("s{i}"),
            &format!("--from-literal=password=hunter{i}"),
        ])
        .await;
    }
    assert_eq!(
        sealed_with(&store).await,
        vec![None; 5],
        "sealed with the token's key"
    );

    // A second master's registry over the same store, with the keyring as
    // it was before the rotation.
    let stale = Registry::new(store.clone()).with_secret_key([42; 32]);
    stale.load_keyring().await.unwrap();

    let first = rotate(&api).await;
    let primary = first["primary"].as_str().unwrap().to_string();
    assert_eq!(first["rewritten"], 5, "{first}");
    assert_eq!(
        sealed_with(&store).await,
        vec![Some(primary.clone()); 5],
        "every Secret sealed with the new key"
    );
    for i in 0..5 {
        let plain = api
            .kubectl_ok(&[
                "get",
                "secret",
                &format!("s{i}"),
                "-o",
                "go-template={{.data.password | base64decode}}",
            ])
            .await;
        assert_eq!(plain, format!("hunter{i}"));
    }

    // The stale master writes a Secret: its keyring moved, so the write is
    // sealed again with the current key.
    let secrets = orch_core::resource::find("", "v1", "secrets").unwrap();
    let object = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "late", "namespace": "default"}, "data": {"k": "dg=="}});
    stale
        .create(secrets, Some("default"), object)
        .await
        .expect("the stale master creates a Secret");
    let late = store
        .range(RangeRequest::new(KeyRange::key(
            "/registry/secrets/default/late",
        )))
        .await
        .unwrap()
        .kvs;
    assert_eq!(
        encryption::key_id_of(&late[0].value),
        Some(primary.as_str())
    );

    // Another rotation drops the first data key: nothing uses it.
    let second = rotate(&api).await;
    let newer = second["primary"].as_str().unwrap().to_string();
    assert_ne!(newer, primary);
    assert_eq!(second["rewritten"], 6, "{second}");
    assert_eq!(second["dropped"], serde_json::json!([primary]), "{second}");
    assert_eq!(second["keys"], serde_json::json!([newer]), "{second}");
    assert_eq!(sealed_with(&store).await, vec![Some(newer.clone()); 6]);
    let ring = store
        .range(RangeRequest::new(KeyRange::key(KEYRING_KEY)))
        .await
        .unwrap()
        .kvs;
    assert!(
        !ring[0]
            .value
            .windows(newer.len())
            .any(|w| w == newer.as_bytes()),
        "the keyring itself is sealed"
    );
    assert_eq!(
        api.jsonpath("secret", "late", "default", "{.data.k}").await,
        "dg=="
    );

    // Without a key, rotation is refused with a Status.
    let plain = TestApi::start().await;
    let (code, status) = plain
        .request(
            "POST",
            "/orch/v1/secrets/rotate-key",
            "application/json",
            b"",
        )
        .await;
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["kind"], "Status");
    plain.shutdown().await;
    api.shutdown().await;
}
