//! Creates racing for the last units of a ResourceQuota: exactly as many
//! pass as the quota allows, the others are refused with 403.

use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota};
use orch_tests::api::TestApi;
use serde_json::json;

#[tokio::test]
async fn concurrent_creates_never_exceed_a_quota() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "three", "namespace": "default"},
        "spec": {"hard": {"count/configmaps": "3"}}
    }))
    .unwrap();
    client.create(Some("default"), &quota).await.unwrap();

    let mut racers = Vec::new();
    for i in 0..24 {
        let client = client.clone();
        racers.push(tokio::spawn(async move {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": format!("racer-{i}"), "namespace": "default"},
                "data": {"i": i.to_string()}
            }))
            .unwrap();
            client
                .create(Some("default"), &cm)
                .await
                .map(|_| ())
                .map_err(|e| e.code)
        }));
    }
    let mut created = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => created += 1,
            Err(code) => assert_eq!(code, 403, "a refused create answers 403"),
        }
    }
    assert_eq!(created, 3, "the quota allows 3 configmaps");
    let (listed, _) = client
        .list::<ConfigMap>(Some("default"), None)
        .await
        .unwrap();
    let racers = listed
        .iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with("racer-")
        })
        .count();
    assert_eq!(racers, 3);
    api.shutdown().await;
}
