//! What kubectl users do, checked on what kubectl prints.

use orch_core::controller::{namespace, LoopContext, LoopSettings};
use orch_tests::api::TestApi;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: shop
stringData:
  password: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
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
        command: ["httpd", "-f"]
        env:
        - name: MODE
          value: one
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - port: 80
    protocol: TCP
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_discovers_the_api_and_manages_namespaces() {
    let api = TestApi::start().await;
    let version = api.kubectl_ok(&["version", "-o", "json"]).await;
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["serverVersion"]["major"], "1");

    let resources = api.kubectl_ok(&["api-resources"]).await;
    for expected in [
        "pods",
        "deployments",
        "services",
        "configmaps",
        "namespaces",
        "horizontalpodautoscalers",
        "endpointslices",
    ] {
        assert!(
            resources.contains(expected),
            "api-resources lists {expected}:\n{resources}"
        );
    }

    let namespaces = api.kubectl_ok(&["get", "namespaces"]).await;
    for line in ["NAME", "STATUS", "default", "kube-system", "Active"] {
        assert!(namespaces.contains(line), "{namespaces}");
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_create_namespace_and_configmap() {
    let api = TestApi::start().await;
    api.kubectl_ok(&["create", "namespace", "team-a"]).await;
    let again = api.kubectl(&["create", "namespace", "team-a"]).await;
    assert!(
        !again.success && again.stderr.contains("AlreadyExists"),
        "{}",
        again.stderr
    );
    let got = api
        .kubectl_ok(&[
            "get",
            "namespace",
            "team-a",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await;
    assert_eq!(got, "Active");
    api.kubectl_ok(&["create", "configmap", "c", "--from-literal=a=1"])
        .await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_applies_edits_patches_scales_and_deletes_a_multi_document_manifest() {
    let api = TestApi::start().await;
    // `kubectl delete` of the manifest's Namespace waits until the
    // namespace controller has emptied and removed it.
    let loops = LoopContext::new(
        api.plane.as_ref().unwrap().client(),
        LoopSettings::default(),
    );
    tokio::spawn(namespace::run(loops.clone()));
    let file = api.path("app.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let file = file.to_str().unwrap();

    let applied = api.kubectl_ok(&["apply", "-f", file]).await;
    for line in [
        "namespace/shop created",
        "configmap/web-config created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        assert!(applied.contains(line), "apply prints {line:?}:\n{applied}");
    }
    let listed = api
        .kubectl_ok(&["get", "deploy,svc,cm", "-n", "shop", "-o", "wide"])
        .await;
    assert!(
        listed.contains("deployment.apps/web")
            && listed.contains("service/web")
            && listed.contains("configmap/web-config"),
        "{listed}"
    );

    // Client-side apply of an edited copy: strategic merge of the change.
    let edited = MANIFEST
        .replace("value: one", "value: two")
        .replace("greeting: hello", "greeting: bonjour");
    let edited_file = api.path("app-edited.yaml");
    std::fs::write(&edited_file, edited).unwrap();
    let reapplied = api
        .kubectl_ok(&["apply", "-f", edited_file.to_str().unwrap()])
        .await;
    assert!(
        reapplied.contains("deployment.apps/web configured"),
        "{reapplied}"
    );
    let env = api
        .jsonpath(
            "deploy",
            "web",
            "shop",
            "{.spec.template.spec.containers[0].env[0].value}",
        )
        .await;
    assert_eq!(env, "two");
    let generation = api
        .jsonpath("deploy", "web", "shop", "{.metadata.generation}")
        .await;
    assert_eq!(generation, "2", "a spec change bumps generation");
    let greeting = api
        .jsonpath("cm", "web-config", "shop", "{.data.greeting}")
        .await;
    assert_eq!(greeting, "bonjour");

    // Server-side apply of another edit.
    let server_side = MANIFEST.replace("greeting: hello", "greeting: hola");
    let server_side_file = api.path("app-ssa.yaml");
    std::fs::write(&server_side_file, server_side).unwrap();
    let applied = api
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            server_side_file.to_str().unwrap(),
        ])
        .await;
    assert!(
        applied.contains("configmap/web-config serverside-applied"),
        "{applied}"
    );
    let greeting = api
        .jsonpath("cm", "web-config", "shop", "{.data.greeting}")
        .await;
    assert_eq!(greeting, "hola");

    // Labels, annotations, the three patch types, selectors.
    api.kubectl_ok(&["label", "deploy", "web", "-n", "shop", "tier=frontend"])
        .await;
    api.kubectl_ok(&["annotate", "deploy", "web", "-n", "shop", "owner=team-a"])
        .await;
    api.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"patched":"merge"}}}"#,
    ])
    .await;
    api.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/json","value":"yes"}]"#,
    ])
    .await;
    api.kubectl_ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "--type=strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:2"}]}}}}"#,
    ])
    .await;
    let labels = api
        .jsonpath("deploy", "web", "shop", "{.metadata.labels}")
        .await;
    for pair in [
        r#""tier":"frontend""#,
        r#""patched":"merge""#,
        r#""json":"yes""#,
    ] {
        assert!(labels.contains(pair), "{labels}");
    }
    let image = api
        .jsonpath(
            "deploy",
            "web",
            "shop",
            "{.spec.template.spec.containers[0].image}",
        )
        .await;
    assert_eq!(image, "busybox:2");
    let command = api
        .jsonpath(
            "deploy",
            "web",
            "shop",
            "{.spec.template.spec.containers[0].command}",
        )
        .await;
    assert!(
        command.contains("httpd"),
        "the strategic patch kept the other container fields: {command}"
    );
    let selected = api
        .kubectl_ok(&[
            "get",
            "deploy",
            "-n",
            "shop",
            "-l",
            "tier=frontend",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(selected.trim(), "deployment.apps/web");
    let none = api
        .kubectl_ok(&[
            "get",
            "deploy",
            "-n",
            "shop",
            "-l",
            "tier=backend",
            "-o",
            "name",
        ])
        .await;
    assert!(none.trim().is_empty());

    // Scale through the scale subresource.
    api.kubectl_ok(&["scale", "deployment", "web", "-n", "shop", "--replicas=5"])
        .await;
    let replicas = api
        .jsonpath("deploy", "web", "shop", "{.spec.replicas}")
        .await;
    assert_eq!(replicas, "5");

    // kubectl leaves field validation to the server, which refuses unknown fields.
    let typo = api.path("typo.yaml");
    std::fs::write(&typo, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\n  namespace: shop\ndatum:\n  a: b\n").unwrap();
    let refused = api.kubectl(&["apply", "-f", typo.to_str().unwrap()]).await;
    assert!(
        !refused.success && refused.stderr.contains("unknown field \"datum\""),
        "{}",
        refused.stderr
    );
    let absent = api.kubectl(&["get", "cm", "typo", "-n", "shop"]).await;
    assert!(
        !absent.success,
        "nothing was created for the refused manifest"
    );

    // -o yaml round-trips the object.
    let yaml = api
        .kubectl_ok(&["get", "svc", "web", "-n", "shop", "-o", "yaml"])
        .await;
    assert!(
        yaml.contains("kind: Service")
            && yaml.contains("resourceVersion:")
            && yaml.contains("uid:"),
        "{yaml}"
    );

    // Delete everything the manifest made.
    // The namespace goes first and takes its contents with it, so some of
    // the later objects may already be gone.
    let deleted = api
        .kubectl_ok(&["delete", "-f", file, "--ignore-not-found"])
        .await;
    assert!(
        deleted.contains("deployment.apps \"web\" deleted"),
        "{deleted}"
    );
    let gone = api.kubectl(&["get", "deploy", "web", "-n", "shop"]).await;
    assert!(
        !gone.success && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    let gone = api.kubectl(&["get", "namespace", "shop"]).await;
    assert!(
        !gone.success && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    loops.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_get_watch_sees_a_change_made_by_another_client() {
    let api = TestApi::start().await;
    let file = api.path("watched.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    api.kubectl_ok(&["apply", "-f", file.to_str().unwrap()])
        .await;
    let kubeconfig = api.kubeconfig.clone();
    let watcher = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args([
                "8",
                "kubectl",
                "get",
                "configmaps",
                "-w",
                "-o",
                "jsonpath={.metadata.name}={.data.a}{\"\\n\"}",
            ])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    api.kubectl_ok(&[
        "patch",
        "configmap",
        "watched",
        "--type=merge",
        "-p",
        r#"{"data":{"a":"2"}}"#,
    ])
    .await;
    let output = watcher.await.unwrap();
    let seen = String::from_utf8_lossy(&output.stdout);
    assert!(
        seen.contains("watched=1") && seen.contains("watched=2"),
        "the watch printed the change:\n{seen}"
    );
    api.shutdown().await;
}
