//! `kubectl explain`: kinds and fields documented from the schemas orch
//! serves in its OpenAPI v3 documents.

use orch_tests::api::TestApi;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
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
        env:
        - name: A
          value: one
        - name: B
          value: two
"#;

/// Panics unless every line of `expected` occurs in `text`.
fn assert_contains(text: &str, expected: &[&str]) {
    for line in expected {
        assert!(text.contains(line), "expected {line:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_explain_prints_kinds_and_fields_with_types_and_descriptions() {
    let api = TestApi::start().await;

    let deployment = api.kubectl_ok(&["explain", "deployment"]).await;
    assert_contains(
        &deployment,
        &[
            "GROUP:      apps",
            "KIND:       Deployment",
            "VERSION:    v1",
            "Deployment enables declarative updates for Pods and ReplicaSets.",
            "metadata\t<ObjectMeta>",
            "spec\t<DeploymentSpec>",
            "status\t<DeploymentStatus>",
        ],
    );

    let spec = api.kubectl_ok(&["explain", "deployment.spec"]).await;
    assert_contains(
        &spec,
        &[
            "FIELD: spec <DeploymentSpec>",
            "DeploymentSpec is the specification of the desired behavior of the",
            "replicas\t<integer>",
            "Number of desired pods.",
            "selector\t<LabelSelector> -required-",
            "template\t<PodTemplateSpec> -required-",
            "strategy\t<DeploymentStrategy>",
        ],
    );

    let containers = api.kubectl_ok(&["explain", "pod.spec.containers"]).await;
    assert_contains(
        &containers,
        &[
            "KIND:       Pod",
            "FIELD: containers <[]Container>",
            "image\t<string>",
            "name\t<string> -required-",
            "ports\t<[]ContainerPort>",
            "resources\t<ResourceRequirements>",
        ],
    );

    let ports = api
        .kubectl_ok(&["explain", "pod.spec.containers.ports"])
        .await;
    assert_contains(
        &ports,
        &[
            "FIELD: ports <[]ContainerPort>",
            "containerPort\t<integer> -required-",
            "protocol\t<string>",
        ],
    );

    let service_ports = api
        .kubectl_ok(&["explain", "svc.spec.ports", "--recursive"])
        .await;
    assert_contains(
        &service_ports,
        &[
            "KIND:       Service",
            "FIELD: ports <[]ServicePort>",
            "port\t<integer> -required-",
            "targetPort\t<IntOrString>",
        ],
    );

    // A kind of another group, and a quantity.
    let hpa = api.kubectl_ok(&["explain", "hpa.spec.maxReplicas"]).await;
    assert_contains(
        &hpa,
        &[
            "GROUP:      autoscaling",
            "VERSION:    v2",
            "FIELD: maxReplicas <integer>",
        ],
    );
    let limits = api
        .kubectl_ok(&["explain", "pod.spec.containers.resources.limits"])
        .await;
    assert_contains(&limits, &["FIELD: limits <map[string]Quantity>"]);

    let missing = api
        .kubectl(&["explain", "deployment.spec.nosuchfield"])
        .await;
    assert!(!missing.success, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("field \"nosuchfield\" does not exist"),
        "{}",
        missing.stderr
    );
    let unknown = api.kubectl(&["explain", "nosuchkind"]).await;
    assert!(!unknown.success, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("the server doesn't have a resource type \"nosuchkind\""),
        "{}",
        unknown.stderr
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_still_merges_lists_by_key_with_schemas_served() {
    let api = TestApi::start().await;
    let file = api.path("deployment.yaml");
    std::fs::write(&file, DEPLOYMENT).unwrap();
    let file = file.to_str().unwrap();
    let applied = api.kubectl_ok(&["apply", "-f", file]).await;
    assert!(applied.contains("deployment.apps/web created"), "{applied}");

    // Dropping an env var from the manifest removes it: the patch kubectl
    // computes still knows `env` is merged by name.
    let edited = DEPLOYMENT.replace("        - name: B\n          value: two\n", "");
    std::fs::write(file, edited).unwrap();
    let applied = api.kubectl_ok(&["apply", "-f", file]).await;
    assert!(
        applied.contains("deployment.apps/web configured"),
        "{applied}"
    );
    let env = api
        .jsonpath(
            "deploy",
            "web",
            "default",
            "{.spec.template.spec.containers[0].env[*].name}",
        )
        .await;
    assert_eq!(env, "A");
    api.shutdown().await;
}
