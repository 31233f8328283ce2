//! kubectl's typed `create` commands send protobuf bodies: the objects they
//! create are what the flags say, and a malformed protobuf body gets a
//! 400 Status and stores nothing.

use k8s_openapi::api::core::v1::Secret;
use orch_tests::api::TestApi;
use serde_json::{json, Value};

/// `kubectl get ARGS -o json`, parsed.
async fn get_json(api: &TestApi, args: &[&str]) -> Value {
    let mut args = [&["get"], args].concat();
    args.extend(["-o", "json"]);
    let out = api.kubectl_ok(&args).await;
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kubectl {args:?} prints JSON: {e}\n{out}"))
}

/// Runs `kubectl ARGS -v=8` and checks it sent a protobuf body.
async fn create_sending_protobuf(api: &TestApi, args: &[&str]) {
    let verbose = [&["-v=8"], args].concat();
    let out = api.kubectl(&verbose).await;
    assert!(out.success, "kubectl {args:?} failed:\n{}", out.stderr);
    assert!(
        out.stderr
            .contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "kubectl {args:?} sends protobuf:\n{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protobuf_kubectl_creates_namespaces_configmaps_and_secrets() {
    let api = TestApi::start().await;
    create_sending_protobuf(&api, &["create", "namespace", "team-a"]).await;
    let again = api.kubectl(&["create", "namespace", "team-a"]).await;
    assert!(
        !again.success && again.stderr.contains("AlreadyExists"),
        "{}",
        again.stderr
    );
    let ns = get_json(&api, &["namespace", "team-a"]).await;
    assert_eq!(ns["status"]["phase"], "Active");
    assert!(ns["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));

    create_sending_protobuf(
        &api,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "team-a",
            "--from-literal=mode=fast",
            "--from-literal=empty=",
            "--from-literal=greeting=hello world",
        ],
    )
    .await;
    let cm = get_json(&api, &["configmap", "settings", "-n", "team-a"]).await;
    assert_eq!(
        cm["data"],
        json!({"mode": "fast", "empty": "", "greeting": "hello world"})
    );

    create_sending_protobuf(
        &api,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "-n",
            "team-a",
            "--from-literal=password=s3cr\u{e9}t!",
            "--from-literal=user=admin",
        ],
    )
    .await;
    let secret = get_json(&api, &["secret", "db", "-n", "team-a"]).await;
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["data"]["password"], "czNjcsOpdCE=",
        "data comes back base64"
    );
    let secret: Secret = serde_json::from_value(secret).unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["password"].0, "s3cr\u{e9}t!".as_bytes());
    assert_eq!(data["user"].0, b"admin");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protobuf_kubectl_creates_deployments_and_jobs() {
    let api = TestApi::start().await;
    create_sending_protobuf(
        &api,
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox",
            "--replicas=3",
            "--port=80",
        ],
    )
    .await;
    let deploy = get_json(&api, &["deployment", "web"]).await;
    let spec = &deploy["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["selector"]["matchLabels"], json!({"app": "web"}));
    assert_eq!(
        spec["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "busybox");
    assert_eq!(container["image"], "busybox");
    assert_eq!(container["ports"][0]["containerPort"], 80);
    assert_eq!(deploy["metadata"]["labels"], json!({"app": "web"}));

    // An explicit zero survives the trip (replicas is a pointer field).
    api.kubectl_ok(&[
        "create",
        "deployment",
        "idle",
        "--image=nginx",
        "--replicas=0",
    ])
    .await;
    let idle = get_json(&api, &["deployment", "idle"]).await;
    assert_eq!(idle["spec"]["replicas"], 0);

    create_sending_protobuf(
        &api,
        &[
            "create",
            "job",
            "once",
            "--image=busybox",
            "--",
            "sh",
            "-c",
            "echo hi",
        ],
    )
    .await;
    let job = get_json(&api, &["job", "once"]).await;
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["containers"][0]["image"], "busybox");
    assert_eq!(
        pod["containers"][0]["command"],
        json!(["sh", "-c", "echo hi"])
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protobuf_kubectl_creates_services_quotas_ingresses_and_autoscalers() {
    let api = TestApi::start().await;
    create_sending_protobuf(
        &api,
        &["create", "service", "clusterip", "api", "--tcp=80:8080"],
    )
    .await;
    let svc = get_json(&api, &["service", "api"]).await;
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["selector"], json!({"app": "api"}));
    let port = &svc["spec"]["ports"][0];
    assert_eq!(
        (&port["port"], &port["targetPort"]),
        (&json!(80), &json!(8080))
    );
    assert_eq!(port["protocol"], "TCP");

    api.kubectl_ok(&["create", "service", "nodeport", "edge", "--tcp=80:8080"])
        .await;
    let svc = get_json(&api, &["service", "edge"]).await;
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);

    create_sending_protobuf(&api, &["create", "quota", "small", "--hard=pods=3,cpu=1"]).await;
    let quota = get_json(&api, &["resourcequota", "small"]).await;
    assert_eq!(quota["spec"]["hard"], json!({"pods": "3", "cpu": "1"}));

    create_sending_protobuf(
        &api,
        &[
            "create",
            "ingress",
            "site",
            "--class=default",
            "--rule=foo.com/bar=api:80",
            "--rule=foo.com/docs*=docs:http,tls=foo-cert",
        ],
    )
    .await;
    let ing = get_json(&api, &["ingress", "site"]).await;
    let spec = &ing["spec"];
    assert_eq!(spec["ingressClassName"], "default");
    let rules = spec["rules"].as_array().unwrap();
    let paths: Vec<&Value> = rules
        .iter()
        .flat_map(|r| r["http"]["paths"].as_array().unwrap())
        .collect();
    assert!(rules.iter().all(|r| r["host"] == "foo.com"), "{rules:?}");
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert_eq!(paths[0]["path"], "/bar");
    assert_eq!(paths[0]["pathType"], "Exact");
    assert_eq!(
        paths[0]["backend"]["service"],
        json!({"name": "api", "port": {"number": 80}})
    );
    assert_eq!(paths[1]["path"], "/docs");
    assert_eq!(paths[1]["pathType"], "Prefix");
    assert_eq!(
        paths[1]["backend"]["service"],
        json!({"name": "docs", "port": {"name": "http"}})
    );
    assert_eq!(
        spec["tls"],
        json!([{"hosts": ["foo.com"], "secretName": "foo-cert"}])
    );

    // kubectl autoscale sends its HorizontalPodAutoscaler as protobuf too.
    api.kubectl_ok(&["create", "deployment", "web", "--image=busybox"])
        .await;
    create_sending_protobuf(
        &api,
        &[
            "autoscale",
            "deployment",
            "web",
            "--min=2",
            "--max=5",
            "--cpu-percent=60",
        ],
    )
    .await;
    let hpa = get_json(&api, &["hpa", "web"]).await;
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"],
        json!({"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}})
    );
    api.shutdown().await;
}

// A tiny protobuf encoder for raw requests.

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

/// A length-delimited field.
fn field(num: u64, data: &[u8]) -> Vec<u8> {
    [
        varint(num << 3 | 2),
        varint(data.len() as u64),
        data.to_vec(),
    ]
    .concat()
}

/// The `k8s\0` envelope around an object's fields.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
    [b"k8s\0".to_vec(), field(1, &type_meta), field(2, raw)].concat()
}

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protobuf_malformed_bodies_get_400_and_unknown_kinds_415() {
    let api = TestApi::start().await;
    // A well-formed body, built by hand, is created and answered in JSON.
    let metadata = field(1, b"by-hand");
    let entry = [field(1, b"k"), field(2, b"v")].concat();
    let good = envelope(
        "v1",
        "ConfigMap",
        &[field(1, &metadata), field(2, &entry)].concat(),
    );
    let (status, created) = api.request("POST", CONFIGMAPS, PROTOBUF, &good).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["data"], json!({"k": "v"}));
    assert_eq!(created["metadata"]["name"], "by-hand");

    let cut = &good[..good.len() - 3];
    let mut past_end = good.clone();
    past_end.extend([0x0a, 0x7f, 0x01]);
    let bad_wire = [good.clone(), vec![0x0f]].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "JSON sent as protobuf",
            br#"{"kind":"ConfigMap"}"#.to_vec(),
            "magic",
        ),
        ("truncated body", cut.to_vec(), "malformed protobuf"),
        ("length past the end", past_end, "runs past the end"),
        ("bad wire type", bad_wire, "bad wire type 7"),
        (
            "truncated varint",
            [b"k8s\0".to_vec(), vec![0x48, 0xff]].concat(),
            "truncated varint",
        ),
    ];
    for (what, body, message) in cases {
        let (status, answer) = api.request("POST", CONFIGMAPS, PROTOBUF, &body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["kind"], "Status", "{what}");
        assert_eq!(answer["reason"], "BadRequest", "{what}: {answer}");
        assert_eq!(answer["code"], 400, "{what}");
        let text = answer["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{what}: {text}");
    }

    let role = envelope("rbac.authorization.k8s.io/v1", "Role", &field(1, &metadata));
    let (status, answer) = api
        .request(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            PROTOBUF,
            &role,
        )
        .await;
    assert_eq!(status, 415, "{answer}");
    assert_eq!(answer["reason"], "UnsupportedMediaType");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"Role\""),
        "{answer}"
    );

    let names = api.kubectl_ok(&["get", "configmaps", "-o", "name"]).await;
    assert_eq!(names.trim(), "configmap/by-hand", "nothing else was stored");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protobuf_updates_and_delete_options_with_preconditions() {
    let api = TestApi::start().await;
    let metadata = field(1, b"guarded");
    let body = envelope("v1", "ConfigMap", &field(1, &metadata));
    let (status, created) = api.request("POST", CONFIGMAPS, PROTOBUF, &body).await;
    assert_eq!(status, 201, "{created}");
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // An update (PUT) with a protobuf body.
    let path = format!("{CONFIGMAPS}/guarded");
    let metadata = [field(1, b"guarded"), field(6, rv.as_bytes())].concat();
    let entry = [field(1, b"k"), field(2, b"v2")].concat();
    let body = envelope(
        "v1",
        "ConfigMap",
        &[field(1, &metadata), field(2, &entry)].concat(),
    );
    let (status, updated) = api.request("PUT", &path, PROTOBUF, &body).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["data"], json!({"k": "v2"}));
    let rv = updated["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let stale = (rv.parse::<u64>().unwrap() - 1).to_string();
    let options = |rv: &str| {
        let preconditions = field(2, rv.as_bytes());
        envelope(
            "meta.k8s.io/v1",
            "DeleteOptions",
            &[field(2, &preconditions), field(4, b"Background")].concat(),
        )
    };
    let (status, answer) = api
        .request("DELETE", &path, PROTOBUF, &options(&stale))
        .await;
    assert_eq!(status, 409, "a stale precondition refuses: {answer}");
    api.kubectl_ok(&["get", "configmap", "guarded"]).await;

    let (status, answer) = api.request("DELETE", &path, PROTOBUF, &options(&rv)).await;
    assert_eq!(status, 200, "{answer}");
    let gone = api.kubectl(&["get", "configmap", "guarded"]).await;
    assert!(
        !gone.success && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    api.shutdown().await;
}
