//! Server-side apply's field ownership as kubectl users meet it: conflicts
//! between managers, `--force-conflicts`, fields an applier stops applying,
//! updates taking fields over, and the move from client-side apply.

use orch_tests::api::TestApi;
use serde_json::Value;

/// The fields `manager` owns with `operation`, as kubectl shows them.
async fn owned_by(api: &TestApi, kind: &str, name: &str, manager: &str, operation: &str) -> Value {
    let json = api
        .kubectl_ok(&[
            "get",
            kind,
            name,
            "-n",
            "ssa",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .await;
    let object: Value = serde_json::from_str(&json).unwrap();
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or(Value::Null)
}

fn write(api: &TestApi, name: &str, yaml: &str) -> String {
    let path = api.path(name);
    std::fs::write(&path, yaml).unwrap();
    path.to_str().unwrap().to_string()
}

const SETTINGS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: ssa
  labels:
    app: shop
data:
  a: "1"
  b: "2"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appliers_own_fields_conflict_and_force() {
    let api = TestApi::start().await;
    api.kubectl_ok(&["create", "namespace", "ssa"]).await;

    let first = write(&api, "settings.yaml", SETTINGS);
    let out = api
        .kubectl_ok(&["apply", "--server-side", "-f", &first])
        .await;
    assert!(
        out.contains("configmap/settings serverside-applied"),
        "{out}"
    );
    let fields = owned_by(&api, "cm", "settings", "kubectl", "Apply").await;
    assert!(
        fields["f:data"]["f:a"].is_object() && fields["f:data"]["f:b"].is_object(),
        "kubectl owns what it applied: {fields}"
    );
    assert!(
        fields["f:metadata"]["f:labels"]["f:app"].is_object(),
        "{fields}"
    );
    // `kubectl get -o yaml` hides managedFields, as with Kubernetes.
    let yaml = api
        .kubectl_ok(&["get", "cm", "settings", "-n", "ssa", "-o", "yaml"])
        .await;
    assert!(!yaml.contains("managedFields"), "{yaml}");

    // Another manager applying a different value: a conflict, nothing written.
    let ops = write(
        &api,
        "ops.yaml",
        &SETTINGS
            .replace("  a: \"1\"\n  b: \"2\"\n", "  a: \"9\"\n")
            .replace("  labels:\n    app: shop\n", ""),
    );
    let refused = api
        .kubectl(&["apply", "--server-side", "--field-manager=ops", "-f", &ops])
        .await;
    assert!(!refused.success, "a conflicting apply fails");
    assert!(
        refused
            .stderr
            .contains("conflict with \"kubectl\" using v1: .data.a"),
        "{}",
        refused.stderr
    );
    let a = api.jsonpath("cm", "settings", "ssa", "{.data.a}").await;
    assert_eq!(a, "1", "the refused apply changed nothing");

    // Forced, the field changes hands.
    api.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=ops",
        "--force-conflicts",
        "-f",
        &ops,
    ])
    .await;
    let a = api.jsonpath("cm", "settings", "ssa", "{.data.a}").await;
    assert_eq!(a, "9");
    let ops_fields = owned_by(&api, "cm", "settings", "ops", "Apply").await;
    assert!(ops_fields["f:data"]["f:a"].is_object(), "{ops_fields}");
    let kubectl_fields = owned_by(&api, "cm", "settings", "kubectl", "Apply").await;
    assert!(
        kubectl_fields["f:data"].get("f:a").is_none(),
        "{kubectl_fields}"
    );

    // kubectl stops applying the label and `a`, and adds `c`: the label goes
    // (nobody else owns it), `a` stays (ops owns it).
    let second = write(
        &api,
        "settings-2.yaml",
        &SETTINGS
            .replace("  labels:\n    app: shop\n", "")
            .replace("  a: \"1\"\n", "  c: \"3\"\n"),
    );
    api.kubectl_ok(&["apply", "--server-side", "-f", &second])
        .await;
    let data = api.jsonpath("cm", "settings", "ssa", "{.data}").await;
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data, serde_json::json!({"a": "9", "b": "2", "c": "3"}));
    let labels = api
        .jsonpath("cm", "settings", "ssa", "{.metadata.labels}")
        .await;
    assert!(!labels.contains("app"), "{labels}");

    // An update (kubectl label) takes the field it sets; applying another
    // value for it then conflicts with kubectl-label.
    api.kubectl_ok(&["label", "cm", "settings", "-n", "ssa", "tier=db"])
        .await;
    let label_fields = owned_by(&api, "cm", "settings", "kubectl-label", "Update").await;
    assert!(
        label_fields["f:metadata"]["f:labels"]["f:tier"].is_object(),
        "{label_fields}"
    );
    let relabel = write(
        &api,
        "settings-3.yaml",
        &SETTINGS
            .replace("    app: shop\n", "    tier: web\n")
            .replace("  a: \"1\"\n", "  c: \"3\"\n"),
    );
    let refused = api
        .kubectl(&["apply", "--server-side", "-f", &relabel])
        .await;
    assert!(
        !refused.success
            && refused.stderr.contains("conflict with \"kubectl-label\"")
            && refused.stderr.contains(".metadata.labels.tier"),
        "{}",
        refused.stderr
    );
    api.shutdown().await;
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: ssa
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: busybox:1
      - name: sidecar
        image: busybox:1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_takes_replicas_from_the_applier_and_lists_merge_by_key() {
    let api = TestApi::start().await;
    api.kubectl_ok(&["create", "namespace", "ssa"]).await;
    let file = write(&api, "web.yaml", DEPLOYMENT);
    api.kubectl_ok(&["apply", "--server-side", "-f", &file])
        .await;

    // kubectl scale takes spec.replicas; applying the manifest again
    // would set it back, so it conflicts, and the scale holds.
    api.kubectl_ok(&["scale", "deploy", "web", "-n", "ssa", "--replicas=5"])
        .await;
    let refused = api.kubectl(&["apply", "--server-side", "-f", &file]).await;
    assert!(
        !refused.success && refused.stderr.contains(".spec.replicas"),
        "{}",
        refused.stderr
    );
    let replicas = api
        .jsonpath("deploy", "web", "ssa", "{.spec.replicas}")
        .await;
    assert_eq!(replicas, "5");

    // The manifest without replicas applies cleanly and leaves them to the
    // scaler; dropping the sidecar removes that container only.
    let trimmed = write(
        &api,
        "web-2.yaml",
        &DEPLOYMENT
            .replace("  replicas: 2\n", "")
            .replace("      - name: sidecar\n        image: busybox:1\n", "")
            .replace("image: busybox:1", "image: busybox:2"),
    );
    api.kubectl_ok(&["apply", "--server-side", "-f", &trimmed])
        .await;
    let replicas = api
        .jsonpath("deploy", "web", "ssa", "{.spec.replicas}")
        .await;
    assert_eq!(replicas, "5");
    let containers = api
        .jsonpath(
            "deploy",
            "web",
            "ssa",
            "{range .spec.template.spec.containers[*]}{.name}={.image} {end}",
        )
        .await;
    assert_eq!(containers.trim(), "web=busybox:2");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_side_apply_moves_to_server_side_apply_without_conflicts() {
    let api = TestApi::start().await;
    api.kubectl_ok(&["create", "namespace", "ssa"]).await;
    let file = write(&api, "settings.yaml", SETTINGS);
    api.kubectl_ok(&["apply", "-f", &file]).await;
    let csa = owned_by(
        &api,
        "cm",
        "settings",
        "kubectl-client-side-apply",
        "Update",
    )
    .await;
    assert!(csa["f:data"]["f:a"].is_object(), "{csa}");

    // The same user now applies server-side an edit of the same fields:
    // kubectl hands the client-side apply fields over to its applier, so
    // there is nothing to force.
    let edited = write(
        &api,
        "settings-edited.yaml",
        &SETTINGS.replace("  a: \"1\"\n", "  a: \"7\"\n"),
    );
    let out = api
        .kubectl_ok(&["apply", "--server-side", "-f", &edited])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let a = api.jsonpath("cm", "settings", "ssa", "{.data.a}").await;
    assert_eq!(a, "7");
    let applied = owned_by(&api, "cm", "settings", "kubectl", "Apply").await;
    assert!(applied["f:data"]["f:a"].is_object(), "{applied}");
    let csa = owned_by(
        &api,
        "cm",
        "settings",
        "kubectl-client-side-apply",
        "Update",
    )
    .await;
    assert!(csa.is_null(), "client-side apply owns nothing now: {csa}");
    api.shutdown().await;
}
