//! The typed client behaves the same over both transports: in-process
//! (straight to the handlers) and HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orch_core::patch::PatchType;
use orch_core::registry::EventType;
use orch_core::Client;
use orch_tests::api::TestApi;

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".to_string(), "typed".to_string())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some("busybox:1.36".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn exercise(client: &Client, ns: &str) {
    let created = client.create(Some(ns), &pod("one")).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        created.spec.as_ref().unwrap().restart_policy.as_deref(),
        Some("Always")
    );
    let got: Pod = client.get(Some(ns), "one").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );

    let (pods, rv) = client
        .list::<Pod>(Some(ns), Some("app=typed"))
        .await
        .unwrap();
    assert_eq!(pods.len(), 1);
    let mut events = Box::pin(client.watch::<Pod>(Some(ns), &rv).await.unwrap());
    client.create(Some(ns), &pod("two")).await.unwrap();
    client.delete::<Pod>(Some(ns), "one").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (kind, pod) = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push((kind, pod.metadata.name.unwrap()));
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Added, "two".to_string()),
            (EventType::Deleted, "one".to_string())
        ]
    );

    // Optimistic concurrency: a stale replace is a 409.
    let mut stale = got.clone();
    stale.metadata.resource_version = Some("1".into());
    let err = client.replace(Some(ns), "one", &stale).await.unwrap_err();
    assert_eq!(err.code, 404, "one is gone: {err}");
    let two: Pod = client.get(Some(ns), "two").await.unwrap();
    let mut stale = two.clone();
    stale.metadata.resource_version = Some("1".into());
    assert_eq!(
        client
            .replace(Some(ns), "two", &stale)
            .await
            .unwrap_err()
            .reason,
        "Conflict"
    );

    // Status through the subresource.
    let patched: Pod = client
        .patch(
            Some(ns),
            "two",
            Some("status"),
            PatchType::Merge,
            &serde_json::json!({"status": {"phase": "Running"}}),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("cfg".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    };
    client.create(Some(ns), &cm).await.unwrap();
    assert_eq!(
        client.create(Some(ns), &cm).await.unwrap_err().reason,
        "AlreadyExists"
    );
    assert_eq!(
        client
            .get::<ConfigMap>(Some(ns), "missing")
            .await
            .unwrap_err()
            .code,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_client_works_the_same_in_process_and_over_http() {
    let api = TestApi::start().await;
    let ns = |name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            .to_string()
    };
    for name in ["inproc", "remote"] {
        let (status, _) = api
            .request(
                "POST",
                "/api/v1/namespaces",
                "application/json",
                ns(name).as_bytes(),
            )
            .await;
        assert_eq!(status, 201);
    }
    exercise(&api.plane.as_ref().unwrap().client(), "inproc").await;
    exercise(&Client::http(api.addr.clone()), "remote").await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binding_a_pod_sets_its_node_and_scheduled_condition_once() {
    let api = TestApi::start().await;
    let client = api.plane.as_ref().unwrap().client();
    client.create(Some("default"), &pod("bound")).await.unwrap();
    let binding = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "bound"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}
    });
    let answer = client
        .create_subresource::<Pod>(Some("default"), "bound", "binding", &binding)
        .await
        .unwrap();
    let pod: Pod = client.get(Some("default"), "bound").await.unwrap();
    assert_eq!(
        answer["metadata"]["resourceVersion"].as_str(),
        pod.metadata.resource_version.as_deref(),
        "the answer names the revision of the bind"
    );
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-a"));
    let scheduled = pod
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .expect("PodScheduled is set with the bind");
    assert_eq!(scheduled.status, "True");
    let again = client
        .create_subresource::<Pod>(Some("default"), "bound", "binding", &binding)
        .await
        .unwrap_err();
    assert_eq!(again.code, 409, "a bound pod cannot be bound again");
    api.shutdown().await;
}
