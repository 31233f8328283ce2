//! The StatefulSet, DaemonSet, Job and HorizontalPodAutoscaler loops
//! against a real control plane. No node agent runs: the tests play its
//! part by writing pod status (Running and Ready, Succeeded, Failed) and
//! CPU use annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use orch_core::controller::{daemonset, hpa, job, statefulset, LoopSettings};
use orch_core::hollow::{HollowCluster, HollowConfig};
use orch_core::patch::PatchType;
use orch_core::registry::EventType;
use orch_core::Client;
use orch_tests::loops::{
    self, from_json, pods_labelled, ready_node, set_pod_phase, start_api, start_loop, NS,
};
use orch_tests::wait_until;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn container() -> Value {
    json!([{"name": "main", "image": "busybox:1.36", "resources": {"requests": {"cpu": "100m"}}}])
}

async fn pod(client: &Client, name: &str) -> Option<Pod> {
    client.get::<Pod>(Some(NS), name).await.ok()
}

async fn make_ready(client: &Client, name: &str) {
    set_pod_phase(client, name, "Running", true).await;
}

async fn create_node(client: &Client, name: &str, taints: Value) {
    let mut node = ready_node(name);
    node["metadata"]["labels"] = json!({"kubernetes.io/hostname": name});
    node["spec"]["taints"] = taints;
    loops::create_node(client, node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulset_creates_pods_in_order_and_scales_down_from_the_top() {
    let (api, client) = start_api().await;
    let ctx = start_loop(&client, LoopSettings::default(), statefulset::run);
    let set: StatefulSet = from_json(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3, "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": container()}}
        }
    }));
    let set = client.create(Some(NS), &set).await.expect("set created");

    // web-0 first; web-1 only once web-0 is Running and Ready.
    let first = wait_until("web-0", WAIT, || pod(&client, "web-0")).await;
    let labels = first.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "web-0");
    assert_eq!(labels["apps.kubernetes.io/pod-index"], "0");
    assert!(labels.contains_key("controller-revision-hash"));
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, set.metadata.uid.clone().unwrap());
    assert_eq!(
        first.spec.as_ref().unwrap().hostname.as_deref(),
        Some("web-0")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pod(&client, "web-1").await.is_none(),
        "web-1 before web-0 is Ready"
    );
    make_ready(&client, "web-0").await;
    wait_until("web-1", WAIT, || pod(&client, "web-1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        pod(&client, "web-2").await.is_none(),
        "web-2 before web-1 is Ready"
    );
    make_ready(&client, "web-1").await;
    wait_until("web-2", WAIT, || pod(&client, "web-2")).await;
    make_ready(&client, "web-2").await;
    wait_until("readyReplicas 3", WAIT, || async {
        let set: StatefulSet = client.get(Some(NS), "web").await.ok()?;
        let status = set.status?;
        (status.ready_replicas == Some(3)
            && status.replicas == 3
            && status.updated_replicas == Some(3))
        .then_some(())
    })
    .await;

    // A deleted pod comes back under the same name.
    let old_uid = pod(&client, "web-1").await.unwrap().metadata.uid;
    client
        .delete::<Pod>(Some(NS), "web-1")
        .await
        .expect("delete web-1");
    wait_until("web-1 recreated", WAIT, || async {
        let p = pod(&client, "web-1").await?;
        (p.metadata.uid != old_uid).then_some(())
    })
    .await;
    make_ready(&client, "web-1").await;

    // Scale down to 1: web-2 goes before web-1.
    let (_, rv) = client.list::<Pod>(Some(NS), None).await.unwrap();
    let mut events = Box::pin(client.watch::<Pod>(Some(NS), &rv).await.unwrap());
    let _: StatefulSet = client
        .patch(
            Some(NS),
            "web",
            None,
            PatchType::Merge,
            &json!({"spec": {"replicas": 1}}),
        )
        .await
        .expect("scaled down");
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let (kind, p) = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("pod events")
            .expect("watch open")
            .expect("event");
        if kind == EventType::Deleted {
            deleted.push(p.metadata.name.unwrap());
        }
    }
    assert_eq!(deleted, ["web-2", "web-1"]);
    wait_until("replicas 1", WAIT, || async {
        let set: StatefulSet = client.get(Some(NS), "web").await.ok()?;
        (set.status?.replicas == 1).then_some(())
    })
    .await;
    assert!(pod(&client, "web-0").await.is_some());
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulset_parallel_policy_creates_every_pod_at_once_and_warns_about_claims() {
    let (api, client) = start_api().await;
    let ctx = start_loop(&client, LoopSettings::default(), statefulset::run);
    let set: StatefulSet = from_json(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 3, "serviceName": "db", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": container()}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
        }
    }));
    client.create(Some(NS), &set).await.expect("set created");
    wait_until("three pods without readiness", WAIT, || async {
        (pods_labelled(&client, "app=db").await.len() == 3).then_some(())
    })
    .await;
    let events = api
        .kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].reason}"])
        .await;
    assert!(
        events.contains("VolumeClaimTemplatesUnsupported"),
        "{events}"
    );
    ctx.stop.cancel();
    api.shutdown().await;
}

async fn revision_of_pod(client: &Client, name: &str) -> Option<String> {
    pod(client, name)
        .await?
        .metadata
        .labels?
        .get("controller-revision-hash")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulset_rolls_a_new_template_out_from_the_highest_ordinal() {
    let (api, client) = start_api().await;
    let ctx = start_loop(&client, LoopSettings::default(), statefulset::run);
    let set: StatefulSet = from_json(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "kv"},
        "spec": {
            "replicas": 3, "serviceName": "kv", "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "kv"}},
            "template": {"metadata": {"labels": {"app": "kv"}}, "spec": {"containers": container()}}
        }
    }));
    client.create(Some(NS), &set).await.expect("set created");
    for name in ["kv-0", "kv-1", "kv-2"] {
        wait_until(name, WAIT, || pod(&client, name)).await;
        make_ready(&client, name).await;
    }
    let old = revision_of_pod(&client, "kv-0").await.unwrap();
    let _: StatefulSet = client
        .patch(
            Some(NS),
            "kv",
            None,
            PatchType::Merge,
            &json!({"spec": {"template": {"metadata": {"annotations": {"version": "2"}}}}}),
        )
        .await
        .expect("template changed");

    // kv-2 is replaced first; kv-1 waits until the new kv-2 is Ready.
    wait_until("kv-2 at the new revision", WAIT, || async {
        let rev = revision_of_pod(&client, "kv-2").await?;
        (rev != old).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        revision_of_pod(&client, "kv-1").await.as_deref(),
        Some(old.as_str())
    );
    make_ready(&client, "kv-2").await;
    wait_until("kv-1 at the new revision", WAIT, || async {
        let rev = revision_of_pod(&client, "kv-1").await?;
        (rev != old).then_some(())
    })
    .await;
    assert_eq!(
        revision_of_pod(&client, "kv-0").await.as_deref(),
        Some(old.as_str())
    );
    make_ready(&client, "kv-1").await;
    wait_until("kv-0 at the new revision", WAIT, || async {
        let rev = revision_of_pod(&client, "kv-0").await?;
        (rev != old).then_some(())
    })
    .await;
    make_ready(&client, "kv-0").await;
    wait_until("rollout complete", WAIT, || async {
        let set: StatefulSet = client.get(Some(NS), "kv").await.ok()?;
        let s = set.status?;
        (s.updated_replicas == Some(3)
            && s.ready_replicas == Some(3)
            && s.current_revision.is_some()
            && s.current_revision == s.update_revision
            && s.current_revision.as_deref() != Some(old.as_str()))
        .then_some(())
    })
    .await;
    ctx.stop.cancel();
    api.shutdown().await;
}

fn daemon_set(name: &str, tolerations: Value) -> DaemonSet {
    from_json(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": container(), "tolerations": tolerations}}
        }
    }))
}

async fn nodes_of(client: &Client, app: &str) -> Vec<String> {
    let mut nodes: Vec<String> = pods_labelled(client, &format!("app={app}"))
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec?.node_name)
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemonset_runs_one_pod_per_eligible_node() {
    let (api, client) = start_api().await;
    create_node(&client, "n1", json!([])).await;
    create_node(&client, "n2", json!([])).await;
    create_node(
        &client,
        "n3",
        json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]),
    )
    .await;
    let ctx = start_loop(&client, LoopSettings::default(), daemonset::run);
    client
        .create(Some(NS), &daemon_set("agent", json!([])))
        .await
        .expect("daemon set created");
    client
        .create(
            Some(NS),
            &daemon_set(
                "infra",
                json!([{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}]),
            ),
        )
        .await
        .expect("tolerating daemon set created");

    // The tainted node is left out unless the taint is tolerated.
    wait_until("agent on n1 and n2", WAIT, || async {
        (nodes_of(&client, "agent").await == ["n1", "n2"]).then_some(())
    })
    .await;
    wait_until("infra on every node", WAIT, || async {
        (nodes_of(&client, "infra").await == ["n1", "n2", "n3"]).then_some(())
    })
    .await;
    // Daemon pods carry the standard tolerations.
    let pods = pods_labelled(&client, "app=agent").await;
    let tolerations = pods[0].spec.as_ref().unwrap().tolerations.clone().unwrap();
    assert!(tolerations
        .iter()
        .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));

    // A new node gets its pod.
    create_node(&client, "n4", json!([])).await;
    wait_until("agent on n4", WAIT, || async {
        (nodes_of(&client, "agent").await == ["n1", "n2", "n4"]).then_some(())
    })
    .await;
    for name in pods_labelled(&client, "app=agent")
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
    {
        make_ready(&client, &name).await;
    }
    wait_until("agent status", WAIT, || async {
        let set: DaemonSet = client.get(Some(NS), "agent").await.ok()?;
        let s = set.status?;
        (s.desired_number_scheduled == 3
            && s.current_number_scheduled == 3
            && s.number_ready == 3
            && s.updated_number_scheduled == Some(3)
            && s.number_misscheduled == 0)
            .then_some(())
    })
    .await;

    // A node that is no longer eligible loses its pod.
    let _: Node = client
        .patch(
            None,
            "n2",
            None,
            PatchType::Merge,
            &json!({"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}}),
        )
        .await
        .expect("node tainted");
    wait_until("agent off n2", WAIT, || async {
        (nodes_of(&client, "agent").await == ["n1", "n4"]).then_some(())
    })
    .await;
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemonset_rolls_a_new_template_out_node_by_node() {
    let (api, client) = start_api().await;
    // Hollow nodes run bound pods (Running and Ready) and finish deleted ones.
    let _hollow = HollowCluster::start(
        client.clone(),
        HollowConfig {
            nodes: 3,
            renew_interval: Duration::from_millis(200),
            ..HollowConfig::default()
        },
    )
    .await
    .expect("hollow nodes register");
    let ctx = start_loop(&client, LoopSettings::default(), daemonset::run);
    client
        .create(Some(NS), &daemon_set("logs", json!([])))
        .await
        .expect("daemon set created");
    let ready = |revision: Option<String>| {
        let client = client.clone();
        async move {
            let set: DaemonSet = client.get(Some(NS), "logs").await.ok()?;
            let s = set.status?;
            let pods = pods_labelled(&client, "app=logs").await;
            let revisions: Vec<Option<String>> = pods
                .iter()
                .map(|p| {
                    p.metadata
                        .labels
                        .as_ref()?
                        .get("controller-revision-hash")
                        .cloned()
                })
                .collect();
            (s.number_ready == 3
                && s.updated_number_scheduled == Some(3)
                && pods.len() == 3
                && revisions.iter().all(|r| r.is_some() && *r != revision))
            .then(|| revisions[0].clone())
            .flatten()
        }
    };
    let old = wait_until("three ready pods", WAIT, || ready(None)).await;
    let _: DaemonSet = client
        .patch(
            Some(NS),
            "logs",
            None,
            PatchType::Merge,
            &json!({"spec": {"template": {"metadata": {"annotations": {"version": "2"}}}}}),
        )
        .await
        .expect("template changed");
    wait_until("three ready pods at the new revision", WAIT, || {
        ready(Some(old.clone()))
    })
    .await;
    ctx.stop.cancel();
    api.shutdown().await;
}

fn job_of(name: &str, completions: i32, parallelism: i32, backoff_limit: i32) -> Job {
    from_json(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions, "parallelism": parallelism, "backoffLimit": backoff_limit,
            "template": {"spec": {"containers": container(), "restartPolicy": "Never"}}
        }
    }))
}

async fn active_job_pods(client: &Client, job: &str) -> Vec<String> {
    pods_labelled(client, &format!("job-name={job}"))
        .await
        .into_iter()
        .filter(|p| {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            p.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
        })
        .filter_map(|p| p.metadata.name)
        .collect()
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| (c.type_.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_completes_after_three_successes_two_at_a_time() {
    let (api, client) = start_api().await;
    let ctx = start_loop(&client, LoopSettings::default(), job::run);
    let created = client
        .create(Some(NS), &job_of("pi", 3, 2, 6))
        .await
        .expect("job created");
    let uid = created.metadata.uid.clone().unwrap();

    let first = wait_until("two active pods", WAIT, || async {
        let active = active_job_pods(&client, "pi").await;
        (active.len() == 2).then_some(active)
    })
    .await;
    let p = pod(&client, &first[0]).await.unwrap();
    let labels: BTreeMap<String, String> = p.metadata.labels.unwrap();
    assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
    assert_eq!(labels["controller-uid"], uid);
    assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        active_job_pods(&client, "pi").await.len(),
        2,
        "parallelism 2"
    );

    for name in &first {
        set_pod_phase(&client, name, "Succeeded", false).await;
    }
    // One completion is still missing: one more pod, not two.
    let last = wait_until("the third pod", WAIT, || async {
        let active = active_job_pods(&client, "pi").await;
        (active.len() == 1).then_some(active)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(active_job_pods(&client, "pi").await.len(), 1);
    set_pod_phase(&client, &last[0], "Succeeded", false).await;

    let done = wait_until("Complete", WAIT, || async {
        let job: Job = client.get(Some(NS), "pi").await.ok()?;
        condition(&job, "Complete").map(|_| job)
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.active, Some(0));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert!(condition(&done, "SuccessCriteriaMet").is_some());
    // What a user runs.
    api.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/pi",
        "--timeout=10s",
    ])
    .await;
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_fails_once_the_backoff_limit_is_exceeded() {
    let (api, client) = start_api().await;
    let ctx = start_loop(&client, LoopSettings::default(), job::run);
    client
        .create(Some(NS), &job_of("flaky", 1, 1, 1))
        .await
        .expect("job created");

    let first = wait_until("a pod", WAIT, || async {
        active_job_pods(&client, "flaky").await.pop()
    })
    .await;
    set_pod_phase(&client, &first, "Failed", false).await;
    // After a back-off the pod is replaced; one failure is within the limit.
    let second = wait_until("a replacement", WAIT, || async {
        active_job_pods(&client, "flaky").await.pop()
    })
    .await;
    assert_ne!(first, second);
    let job: Job = client.get(Some(NS), "flaky").await.unwrap();
    assert!(condition(&job, "Failed").is_none());
    set_pod_phase(&client, &second, "Failed", false).await;

    let failed = wait_until("Failed", WAIT, || async {
        let job: Job = client.get(Some(NS), "flaky").await.ok()?;
        condition(&job, "Failed").map(|c| (c, job))
    })
    .await;
    assert_eq!(failed.0 .1, "BackoffLimitExceeded");
    assert_eq!(failed.1.status.as_ref().unwrap().failed, Some(2));
    assert!(condition(&failed.1, "FailureTarget").is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(active_job_pods(&client, "flaky").await.is_empty());
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_fails_when_its_active_deadline_passes() {
    let (api, client) = start_api().await;
    let ctx = start_loop(&client, LoopSettings::default(), job::run);
    let mut slow = job_of("slow", 1, 1, 6);
    slow.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
    client.create(Some(NS), &slow).await.expect("job created");
    wait_until("a pod", WAIT, || async {
        active_job_pods(&client, "slow").await.pop()
    })
    .await;
    let failed = wait_until("DeadlineExceeded", WAIT, || async {
        let job: Job = client.get(Some(NS), "slow").await.ok()?;
        condition(&job, "Failed")
    })
    .await;
    assert_eq!(failed.1, "DeadlineExceeded");
    wait_until("no active pod", WAIT, || async {
        active_job_pods(&client, "slow")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    ctx.stop.cancel();
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hpa_scales_a_deployment_up_when_its_pods_are_busy() {
    let (api, client) = start_api().await;
    let deployment: Deployment = from_json(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": container()}}
        }
    }));
    client
        .create(Some(NS), &deployment)
        .await
        .expect("deployment created");
    // The deployment's pods, as its controller and a node agent would
    // leave them: Ready, each using 200m of its 100m request.
    for name in ["web-a", "web-b"] {
        let p: Pod = from_json(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"},
                "annotations": {"orch.dev/cpu-usage-millicores": "200"}},
            "spec": {"containers": container()}
        }));
        client.create(Some(NS), &p).await.expect("pod created");
        make_ready(&client, name).await;
    }
    assert_eq!(hpa::CPU_USAGE_ANNOTATION, "orch.dev/cpu-usage-millicores");
    // A sync period of 30 node monitor periods: 1.5 s here.
    let settings = LoopSettings {
        node_monitor_period: Duration::from_millis(50),
        ..LoopSettings::default()
    };
    let ctx = start_loop(&client, settings, hpa::run);
    let autoscaler: HorizontalPodAutoscaler = from_json(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 6,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}]
        }
    }));
    client
        .create(Some(NS), &autoscaler)
        .await
        .expect("hpa created");

    // 200% against a 50% target on 2 pods proposes 8, capped at 6.
    wait_until("deployment scaled to 6", WAIT, || async {
        let d: Deployment = client.get(Some(NS), "web").await.ok()?;
        (d.spec?.replicas == Some(6)).then_some(())
    })
    .await;
    let status = wait_until("hpa status", WAIT, || async {
        let h: HorizontalPodAutoscaler = client.get(Some(NS), "web").await.ok()?;
        let s = h.status?;
        (s.desired_replicas == 6).then_some(s)
    })
    .await;
    assert!(status.last_scale_time.is_some());
    let metric = &status.current_metrics.unwrap()[0];
    assert_eq!(
        metric
            .resource
            .as_ref()
            .unwrap()
            .current
            .average_utilization,
        Some(200)
    );
    let conditions = status.conditions.unwrap();
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t).unwrap();
    assert_eq!(find("AbleToScale").status, "True");
    assert_eq!(find("ScalingActive").status, "True");
    assert_eq!(
        find("ScalingLimited").reason.as_deref(),
        Some("TooManyReplicas")
    );
    ctx.stop.cancel();
    api.shutdown().await;
}
