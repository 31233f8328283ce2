//! Informers keep a cache of one kind current from list + watch, and
//! announce each changed key.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use orch_core::controller::informer::{key_of, Informer};
use orch_core::Client;
use orch_tests::api::TestApi;
use orch_tests::wait_until;
use tokio_util::sync::CancellationToken;

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn informer_cache_follows_creates_updates_and_deletes() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    let remote = Client::http(api.addr.clone());
    client
        .create(Some("default"), &config_map("a", "1"))
        .await
        .unwrap();
    client
        .create(Some("default"), &config_map("b", "1"))
        .await
        .unwrap();

    let (tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let mut cache = Informer::<ConfigMap>::new(client.clone())
        .namespace("default")
        .start(stop.clone(), move |cm: &ConfigMap| {
            let _ = tx.send(key_of(cm.metadata()));
        });
    cache.wait_until_ready().await;
    assert_eq!(cache.list().len(), 2);
    let mut announced = vec![keys.recv().await.unwrap(), keys.recv().await.unwrap()];
    announced.sort();
    assert_eq!(announced, vec!["default/a", "default/b"]);

    // Changes by another client reach the cache and are announced.
    remote
        .create(Some("default"), &config_map("c", "1"))
        .await
        .unwrap();
    let mut b = remote.get::<ConfigMap>(Some("default"), "b").await.unwrap();
    b.data = Some(BTreeMap::from([("v".to_string(), "2".to_string())]));
    remote.replace(Some("default"), "b", &b).await.unwrap();
    remote
        .delete::<ConfigMap>(Some("default"), "a")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            tokio::time::timeout(Duration::from_secs(5), keys.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(seen, vec!["default/c", "default/b", "default/a"]);
    wait_until(
        "the cache to reflect the changes",
        Duration::from_secs(5),
        || {
            let cache = cache.clone();
            async move {
                let b_value = cache
                    .get("default/b")
                    .and_then(|b| b.data.as_ref()?.get("v").cloned());
                (cache.get("default/a").is_none()
                    && cache.get("default/c").is_some()
                    && b_value.as_deref() == Some("2"))
                .then_some(())
            }
        },
    )
    .await;
    stop.cancel();
    api.shutdown().await;
}
