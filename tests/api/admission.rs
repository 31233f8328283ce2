//! Admission at create: LimitRange defaults and bounds, ResourceQuota
//! counts and compute totals, refused with 403 and the numbers.

use orch_tests::api::TestApi;

const POLICY: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: q
---
apiVersion: v1
kind: LimitRange
metadata:
  name: limits
  namespace: q
spec:
  limits:
  - type: Container
    default:
      cpu: 500m
    defaultRequest:
      cpu: 250m
    max:
      cpu: "1"
---
apiVersion: v1
kind: ResourceQuota
metadata:
  name: quota
  namespace: q
spec:
  hard:
    pods: "2"
    requests.cpu: "2"
"#;

fn pod(name: &str, cpu_limit: Option<&str>) -> String {
    let resources = cpu_limit
        .map(|cpu| format!("\n    resources:\n      limits:\n        cpu: \"{cpu}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: q\nspec:\n  containers:\n  - name: main\n    image: busybox:1.36{resources}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_ranges_default_and_bound_containers_and_quotas_cap_namespaces() {
    let api = TestApi::start().await;
    let policy = api.path("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    api.kubectl_ok(&["apply", "-f", policy.to_str().unwrap()])
        .await;

    let apply_pod = |name: &str, cpu: Option<&str>| {
        let file = api.path(&format!("{name}.yaml"));
        std::fs::write(&file, pod(name, cpu)).unwrap();
        file.to_str().unwrap().to_string()
    };

    // Defaults from the LimitRange.
    let a = apply_pod("a", None);
    api.kubectl_ok(&["apply", "-f", &a]).await;
    let resources = api
        .kubectl_ok(&[
            "get",
            "pod",
            "a",
            "-n",
            "q",
            "-o",
            "jsonpath={.spec.containers[0].resources}",
        ])
        .await;
    assert!(
        resources.contains(r#""limits":{"cpu":"500m"}"#)
            && resources.contains(r#""requests":{"cpu":"250m"}"#),
        "{resources}"
    );

    // Over the LimitRange's max.
    let big = apply_pod("big", Some("2"));
    let refused = api.kubectl(&["apply", "-f", &big]).await;
    assert!(!refused.success, "a 2-CPU container is over the 1-CPU max");
    assert!(
        refused.stderr.contains("Forbidden")
            && refused
                .stderr
                .contains("maximum cpu usage per Container is 1"),
        "{}",
        refused.stderr
    );

    // The quota allows two pods, not three.
    let b = apply_pod("b", None);
    api.kubectl_ok(&["apply", "-f", &b]).await;
    let c = apply_pod("c", None);
    let refused = api.kubectl(&["apply", "-f", &c]).await;
    assert!(!refused.success);
    assert!(
        refused
            .stderr
            .contains("exceeded quota: quota, requested: pods=1, used: pods=2, limited: pods=2"),
        "{}",
        refused.stderr
    );
    let pods = api
        .kubectl_ok(&["get", "pods", "-n", "q", "-o", "name"])
        .await;
    assert_eq!(pods.lines().count(), 2, "{pods}");

    // Freeing a slot admits the next pod.
    api.kubectl_ok(&["delete", "pod", "a", "-n", "q"]).await;
    api.kubectl_ok(&["apply", "-f", &c]).await;
    api.shutdown().await;
}
