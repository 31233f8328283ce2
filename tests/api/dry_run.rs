//! Server-side dry run (`dryRun=All`): `kubectl apply --dry-run=server`,
//! `kubectl diff`, `kubectl delete --dry-run=server` check everything and
//! change nothing.

use orch_tests::api::TestApi;

const SETTINGS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: dry
data:
  a: "1"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_runs_check_writes_without_making_them() {
    let api = TestApi::start().await;
    api.kubectl_ok(&["create", "namespace", "dry"]).await;
    let file = api.path("settings.yaml");
    std::fs::write(&file, SETTINGS).unwrap();
    let file = file.to_str().unwrap();

    // A create, dry: answered as created, not stored.
    let out = api
        .kubectl_ok(&["apply", "--dry-run=server", "-f", file])
        .await;
    assert!(
        out.contains("configmap/settings created (server dry run)"),
        "{out}"
    );
    let missing = api.kubectl(&["get", "cm", "settings", "-n", "dry"]).await;
    assert!(
        !missing.success && missing.stderr.contains("NotFound"),
        "{}",
        missing.stderr
    );

    // Invalid objects fail the dry run as they would fail the write.
    let invalid = api.path("invalid.yaml");
    std::fs::write(
        &invalid,
        SETTINGS.replace("name: settings", "name: Not_Valid"),
    )
    .unwrap();
    let refused = api
        .kubectl(&["apply", "--dry-run=server", "-f", invalid.to_str().unwrap()])
        .await;
    assert!(
        !refused.success && refused.stderr.contains("Invalid"),
        "{}",
        refused.stderr
    );

    // kubectl diff shows the change a server-side dry run computes, and
    // makes none of it.
    api.kubectl_ok(&["apply", "-f", file]).await;
    let edited = api.path("edited.yaml");
    std::fs::write(&edited, SETTINGS.replace("a: \"1\"", "a: \"7\"")).unwrap();
    let diff = api.kubectl(&["diff", "-f", edited.to_str().unwrap()]).await;
    assert_eq!(diff.code, Some(1), "diff exits 1 on a difference: {diff:?}");
    assert!(
        diff.stdout.contains("-  a: \"1\"") && diff.stdout.contains("+  a: \"7\""),
        "{}",
        diff.stdout
    );
    let same = api.kubectl(&["diff", "-f", file]).await;
    assert_eq!(same.code, Some(0), "no difference: {same:?}");
    let out = api
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            edited.to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("serverside-applied (server dry run)"), "{out}");
    let a = api.jsonpath("cm", "settings", "dry", "{.data.a}").await;
    assert_eq!(a, "1", "dry runs changed nothing");

    // A dry delete leaves the object.
    let out = api
        .kubectl_ok(&["delete", "cm", "settings", "-n", "dry", "--dry-run=server"])
        .await;
    assert!(out.contains("deleted (server dry run)"), "{out}");
    api.kubectl_ok(&["get", "cm", "settings", "-n", "dry"])
        .await;

    // dryRun has one value.
    let (status, body) = api
        .request(
            "DELETE",
            "/api/v1/namespaces/dry/configmaps/settings?dryRun=Maybe",
            "application/json",
            b"",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["kind"], "Status");
    api.kubectl_ok(&["get", "cm", "settings", "-n", "dry"])
        .await;
    api.shutdown().await;
}
