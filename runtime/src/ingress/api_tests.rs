//! The proxy fed by informer caches of a real (in-process) API server, and
//! the Events it records there.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use orch_core::{Client, ControlPlane, ControlPlaneConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::proxy::{IngressProxy, ProxyConfig};
use super::proxy_tests::{backend, get, ingress, path, service, slice};
use super::source::CacheSource;

/// The Warning Events of reason `reason` on Ingress `default/name`.
async fn warnings(client: &Client, name: &str, reason: &str) -> Vec<Event> {
    let (events, _) = client.list::<Event>(Some("default"), None).await.unwrap();
    events
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_informer_caches_and_reports_missing_services_once_per_generation() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ControlPlaneConfig::local(1, dir.path().join("store"));
    config.loops = None;
    let plane = ControlPlane::start_single(config).await.unwrap();
    let client = plane.client();
    let stop = CancellationToken::new();

    let a = backend("A", stop.clone()).await;
    client
        .create(
            Some("default"),
            &service("svc-a", json!([{ "name": "http", "port": 80 }])),
        )
        .await
        .unwrap();
    client
        .create(
            Some("default"),
            &slice("svc-a-1", "svc-a", "http", a.port()),
        )
        .await
        .unwrap();
    let web: Ingress = client
        .create(
            Some("default"),
            &ingress(
                "web",
                1,
                json!({ "rules": [{ "http": { "paths": [
                    path("/a", "svc-a", json!({ "number": 80 })),
                    path("/missing", "nope", json!({ "number": 80 })),
                ]}}]}),
            ),
        )
        .await
        .unwrap();

    let mut source = CacheSource::start(
        &client,
        crate::agent::services::ServiceCaches::start(&client, &stop),
        &stop,
    );
    tokio::time::timeout(Duration::from_secs(10), source.wait_until_ready())
        .await
        .unwrap();
    assert!(source.is_ready());
    let mut proxy_config = ProxyConfig::new("127.0.0.1:0".parse().unwrap());
    proxy_config.client = Some(client.clone());
    proxy_config.node_name = "node-1".into();
    let proxy = IngressProxy::start(proxy_config, Arc::new(source), stop.clone())
        .await
        .unwrap();
    let addr = proxy.local_addr();

    let answer = get(addr, "web.example.com", "/a").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body, "A GET /a");

    // Three failing requests, one Event.
    for _ in 0..3 {
        let answer = get(addr, "web.example.com", "/missing").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.body.contains("default/nope"), "{}", answer.body);
    }
    eventually("a ServiceNotFound Event is recorded", || async {
        !warnings(&client, "web", "ServiceNotFound").await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = warnings(&client, "web", "ServiceNotFound").await;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.involved_object.kind.as_deref(), Some("Ingress"));
    assert_eq!(event.involved_object.uid, web.metadata.uid);
    assert!(event
        .message
        .as_deref()
        .unwrap()
        .contains("Service default/nope not found"));
    let source = event.source.as_ref().unwrap();
    assert_eq!(source.component.as_deref(), Some("orch-ingress"));
    assert_eq!(source.host.as_deref(), Some("node-1"));

    // A new path through the API takes effect without a restart; the spec
    // change is a new generation, so the still-missing Service is reported
    // again, once.
    let mut changed = web.clone();
    changed.spec.as_mut().unwrap().rules.as_mut().unwrap()[0]
        .http
        .as_mut()
        .unwrap()
        .paths
        .push(serde_json::from_value(path("/c", "svc-a", json!({ "name": "http" }))).unwrap());
    let changed = client
        .replace(Some("default"), "web", &changed)
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    eventually("the new path routes", || async {
        get(addr, "web.example.com", "/c").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(addr, "web.example.com", "/c").await.body, "A GET /c");
    for _ in 0..3 {
        assert_eq!(
            get(addr, "web.example.com", "/missing").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    eventually("a second ServiceNotFound Event is recorded", || async {
        warnings(&client, "web", "ServiceNotFound").await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(warnings(&client, "web", "ServiceNotFound").await.len(), 2);

    stop.cancel();
    proxy.stopped().await;
    plane.shutdown().await;
}
