//! Bad requests get a Kubernetes Status with the right code, and the
//! store is left unchanged.

use orch_tests::api::TestApi;

/// A bad request: what it is, method, path, body, expected code and reason.
struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: Vec<u8>,
    code: u16,
    reason: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: impl Into<Vec<u8>>,
    code: u16,
    reason: &'static str,
) -> Case {
    Case {
        what,
        method,
        path,
        body: body.into(),
        code,
        reason,
    }
}

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_invalid_requests_get_status_errors_and_change_nothing() {
    let api = TestApi::start().await;
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ok"},"data":{"a":"1"}}"#;
    let (status, created) = api
        .request("POST", CONFIGMAPS, "application/json", cm.as_bytes())
        .await;
    assert_eq!(status, 201);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let revision_before = api.plane.as_ref().unwrap().store.status().revision;
    let stale = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"ok","resourceVersion":"{}"}},"data":{{"a":"2"}}}}"#,
        rv.parse::<i64>().unwrap() - 1
    );

    let cases = vec![
        case(
            "malformed JSON",
            "POST",
            CONFIGMAPS,
            "{not json",
            400,
            "BadRequest",
        ),
        case(
            "unknown resource",
            "POST",
            "/api/v1/namespaces/default/widgets",
            cm,
            404,
            "NotFound",
        ),
        case(
            "unknown group",
            "GET",
            "/apis/nope.example/v1",
            "",
            404,
            "NotFound",
        ),
        case(
            "kind mismatch",
            "POST",
            CONFIGMAPS,
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
            400,
            "BadRequest",
        ),
        case(
            "name not DNS-1123",
            "POST",
            CONFIGMAPS,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#,
            422,
            "Invalid",
        ),
        case(
            "missing namespace",
            "POST",
            "/api/v1/namespaces/nowhere/configmaps",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
            404,
            "NotFound",
        ),
        case(
            "stale resourceVersion",
            "PUT",
            "/api/v1/namespaces/default/configmaps/ok",
            stale,
            409,
            "Conflict",
        ),
        case(
            "body over the limit",
            "POST",
            CONFIGMAPS,
            vec![b' '; 4 << 20],
            413,
            "RequestEntityTooLarge",
        ),
        case(
            "invalid JSON patch",
            "PATCH",
            "/api/v1/namespaces/default/configmaps/ok",
            r#"[{"op":"remove","path":"/data/missing"}]"#,
            422,
            "Invalid",
        ),
        case(
            "unsupported field selector",
            "GET",
            "/api/v1/namespaces/default/configmaps?fieldSelector=data.a%3D1",
            "",
            400,
            "BadRequest",
        ),
        case(
            "missing object",
            "GET",
            "/api/v1/namespaces/default/configmaps/nope",
            "",
            404,
            "NotFound",
        ),
    ];
    for c in cases {
        let content_type = if c.method == "PATCH" {
            "application/json-patch+json"
        } else {
            "application/json"
        };
        let (status, answer) = api.request(c.method, c.path, content_type, &c.body).await;
        assert_eq!(status, c.code, "{}: {answer}", c.what);
        assert_eq!(answer["kind"], "Status", "{}: {answer}", c.what);
        assert_eq!(answer["code"], c.code, "{}", c.what);
        assert_eq!(answer["reason"], c.reason, "{}: {answer}", c.what);
    }
    let (_, invalid) = api
        .request(
            "POST",
            CONFIGMAPS,
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#,
        )
        .await;
    assert_eq!(invalid["details"]["causes"][0]["field"], "metadata.name");

    // Nothing was written, and the server still serves.
    assert_eq!(
        api.plane.as_ref().unwrap().store.status().revision,
        revision_before
    );
    let (status, current) = api
        .request(
            "GET",
            "/api/v1/namespaces/default/configmaps/ok",
            "application/json",
            b"",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(current["data"]["a"], "1");
    assert_eq!(current["metadata"]["resourceVersion"], rv.as_str());
    api.shutdown().await;
}
