//! ReplicaSets and Deployments: the replicaset loop keeps the pod count,
//! the deployment loop rolls templates out within maxSurge and
//! maxUnavailable, and the real kubectl's `set image`, `rollout status`,
//! `rollout history`, `rollout undo`, `rollout pause`/`resume` work on it.
//! Pods become Ready only when something marks them: a small task here
//! plays the node's part.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, ReplicaSetSpec,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, Event, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orch_core::controller::util::{is_pod_active, is_pod_ready};
use orch_core::controller::{deployment, replicaset, LoopContext, LoopSettings};
use orch_core::patch::PatchType;
use orch_core::Client;
use orch_tests::api::TestApi;
use orch_tests::loops::{image_of, wait_for_pods, NS};
use orch_tests::wait_until;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// A control plane with the replicaset and deployment loops and a task
/// that marks every pod Running and Ready.
struct Rig {
    api: TestApi,
    client: Client,
    ctx: LoopContext,
}

impl Rig {
    async fn start() -> Rig {
        let api = TestApi::start().await;
        let client = api.plane.as_ref().unwrap().client();
        let ctx = LoopContext::new(client.clone(), LoopSettings::default());
        tokio::spawn(replicaset::run(ctx.clone()));
        tokio::spawn(deployment::run(ctx.clone()));
        tokio::spawn(mark_pods_ready(client.clone(), ctx.stop.clone()));
        Rig { api, client, ctx }
    }

    async fn stop(self) {
        self.ctx.stop.cancel();
        self.api.shutdown().await;
    }

    async fn pods(&self) -> Vec<Pod> {
        self.client.list::<Pod>(Some(NS), None).await.unwrap().0
    }

    async fn active_pods(&self) -> Vec<Pod> {
        self.pods()
            .await
            .into_iter()
            .filter(is_pod_active)
            .collect()
    }

    async fn replicasets(&self) -> Vec<ReplicaSet> {
        self.client
            .list::<ReplicaSet>(Some(NS), None)
            .await
            .unwrap()
            .0
    }

    async fn deployment(&self, name: &str) -> Deployment {
        self.client.get(Some(NS), name).await.unwrap()
    }

    /// Waits until every active pod runs `image` and there are `count`.
    async fn wait_for_image(&self, count: usize, image: &str) {
        wait_for_pods(
            &self.client,
            None,
            count,
            &format!("{count} ready pods of {image}"),
            WAIT,
            |p| image_of(p) == image && is_pod_ready(p),
        )
        .await;
    }

    /// Creates Deployment `d` (3 replicas of nginx:1.25) and waits until
    /// its pods are ready and `kubectl rollout status` says it is done.
    async fn roll_out(&self, d: &Deployment) {
        self.client.create(Some(NS), d).await.unwrap();
        self.wait_for_image(3, "nginx:1.25").await;
        let name = d.metadata.name.as_deref().unwrap_or_default();
        self.kubectl_ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=30s",
        ])
        .await;
    }

    /// Some if an Event in [`NS`] matches.
    async fn event(&self, matches: impl Fn(&Event) -> bool) -> Option<()> {
        let (events, _) = self.client.list::<Event>(Some(NS), None).await.ok()?;
        events.iter().any(matches).then_some(())
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        self.api.kubectl_ok(args).await
    }
}

/// How long a pod takes to "start" before it is marked Ready.
const START_DELAY: Duration = Duration::from_millis(40);

/// Plays the node's part: every active pod that is not Ready is marked
/// Running and Ready through the status subresource, [`START_DELAY`] after
/// it was first seen (except pods of images tagged `stuck`).
async fn mark_pods_ready(client: Client, stop: CancellationToken) {
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    while !stop.is_cancelled() {
        if let Ok((pods, _)) = client.list::<Pod>(None, None).await {
            let now = Instant::now();
            for pod in pods.iter().filter(|p| is_pod_active(p) && !is_pod_ready(p)) {
                if image_of(pod).ends_with(":stuck") {
                    // An image that never starts.
                    continue;
                }
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if now.duration_since(*first_seen.entry(uid).or_insert(now)) < START_DELAY {
                    continue;
                }
                let now = orch_core::object::now_rfc3339();
                let patch = json!({"status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                        {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    ],
                }});
                let _ = client
                    .patch::<Pod>(
                        pod.metadata.namespace.as_deref(),
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        Some("status"),
                        PatchType::Merge,
                        &patch,
                    )
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A selector of one `app` label expression.
fn app_expression(operator: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "app".into(),
            operator: operator.into(),
            values: Some(vec![value.into()]),
        }]),
        ..Default::default()
    }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), app.to_string())])
}

fn template(app: &str, image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(app)),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn replica_set(name: &str, replicas: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(name)),
                ..Default::default()
            },
            template: Some(template(name, "nginx:1.25")),
            ..Default::default()
        }),
        status: None,
    }
}

fn rolling(name: &str, replicas: i32, surge: i32, unavailable: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(name)),
                ..Default::default()
            },
            template: template(name, "nginx:1.25"),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(surge)),
                    max_unavailable: Some(IntOrString::Int(unavailable)),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Samples the pods every few milliseconds until stopped; returns the
/// number of samples and every sample that broke the bounds.
fn sample_bounds(
    client: Client,
    check: impl Fn(&[Pod]) -> Option<String> + Send + 'static,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<(usize, Vec<String>)>,
) {
    let stop = CancellationToken::new();
    let done = stop.clone();
    let task = tokio::spawn(async move {
        let mut samples = 0;
        let mut violations = Vec::new();
        while !done.is_cancelled() {
            if let Ok((pods, _)) = client.list::<Pod>(Some(NS), None).await {
                samples += 1;
                if let Some(v) = check(&pods) {
                    violations.push(v);
                }
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        (samples, violations)
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_replicaset_keeps_its_pod_count() {
    let rig = Rig::start().await;
    rig.client
        .create(Some(NS), &replica_set("web", 3))
        .await
        .unwrap();
    rig.wait_for_image(3, "nginx:1.25").await;
    let pods = rig.active_pods().await;
    assert!(pods.iter().all(|p| {
        p.metadata.name.as_deref().unwrap().starts_with("web-")
            && p.metadata.owner_references.as_ref().unwrap()[0].name == "web"
    }));
    wait_until("status counts 3 ready", WAIT, || async {
        let rs: ReplicaSet = rig.client.get(Some(NS), "web").await.ok()?;
        let s = rs.status?;
        (s.replicas == 3
            && s.ready_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.fully_labeled_replicas == Some(3)
            && s.observed_generation == rs.metadata.generation)
            .then_some(())
    })
    .await;

    // A deleted pod is replaced.
    let victim = pods[0].metadata.name.clone().unwrap();
    rig.kubectl_ok(&["delete", "pod", &victim]).await;
    rig.wait_for_image(3, "nginx:1.25").await;
    assert!(rig
        .active_pods()
        .await
        .iter()
        .all(|p| p.metadata.name.as_deref() != Some(&victim)));

    // Scaled up and down through the scale subresource, never above spec.
    let (stop, sampler) = sample_bounds(rig.client.clone(), |pods| {
        let n = pods.iter().filter(|p| is_pod_active(p)).count();
        (n > 6).then(|| format!("{n} pods for at most 6 replicas"))
    });
    rig.kubectl_ok(&["scale", "rs/web", "--replicas=6"]).await;
    rig.wait_for_image(6, "nginx:1.25").await;
    stop.cancel();
    let (samples, violations) = sampler.await.unwrap();
    assert!(samples > 0 && violations.is_empty(), "{violations:?}");
    rig.kubectl_ok(&["scale", "rs/web", "--replicas=1"]).await;
    rig.wait_for_image(1, "nginx:1.25").await;

    // An orphan with matching labels is adopted (and the surplus goes);
    // a pod whose labels stop matching is released (and replaced).
    let orphan = Pod {
        metadata: ObjectMeta {
            name: Some("stray".into()),
            labels: Some(labels("web")),
            ..Default::default()
        },
        spec: template("web", "nginx:1.25").spec,
        status: None,
    };
    rig.client.create(Some(NS), &orphan).await.unwrap();
    wait_until("one owned pod after adoption", WAIT, || async {
        let pods = rig.active_pods().await;
        (pods.len() == 1 && pods[0].metadata.owner_references.is_some()).then_some(())
    })
    .await;
    let kept = rig.active_pods().await[0].metadata.name.clone().unwrap();
    rig.kubectl_ok(&["label", "pod", &kept, "app=other", "--overwrite"])
        .await;
    wait_until("released pod and a replacement", WAIT, || async {
        let pods = rig.active_pods().await;
        let released = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(&kept))?;
        let owned = pods
            .iter()
            .filter(|p| p.metadata.labels.as_ref() == Some(&labels("web")))
            .count();
        (released
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())
            && owned == 1)
            .then_some(())
    })
    .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_replicaset_with_selector_not_matching_template_reports_it() {
    let rig = Rig::start().await;
    let mut rs = replica_set("odd", 2);
    // matchExpressions get past the API's matchLabels check.
    rs.spec.as_mut().unwrap().selector = app_expression("In", "elsewhere");
    rig.client.create(Some(NS), &rs).await.unwrap();
    wait_until(
        "a ReplicaFailure condition and a Warning event",
        WAIT,
        || async {
            let rs: ReplicaSet = rig.client.get(Some(NS), "odd").await.ok()?;
            let cond = rs
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "ReplicaFailure")?;
            (cond.reason.as_deref() == Some("SelectorMismatch")).then_some(())?;
            rig.event(|e| {
                e.reason.as_deref() == Some("SelectorMismatch")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some("odd")
            })
            .await
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rig.pods().await.is_empty(), "no pods for a bad ReplicaSet");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_deployment_creates_a_hashed_replicaset_with_its_pods() {
    let rig = Rig::start().await;
    rig.client
        .create(Some(NS), &rolling("web", 3, 1, 1))
        .await
        .unwrap();
    rig.wait_for_image(3, "nginx:1.25").await;
    let out = rig
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=30s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    let sets = rig.replicasets().await;
    assert_eq!(sets.len(), 1);
    let rs = &sets[0];
    let hash = rs.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(rs.metadata.name.as_deref(), Some(&*format!("web-{hash}")));
    assert_eq!(
        rs.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()["pod-template-hash"],
        hash
    );
    assert_eq!(
        rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );
    for pod in rig.active_pods().await {
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()["pod-template-hash"],
            hash
        );
    }
    let d = rig.deployment("web").await;
    let s = d.status.unwrap();
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3))
    );
    let conditions = s.conditions.unwrap();
    let progressing = conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let available = conditions.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(available.status, "True");
    assert_eq!(
        d.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );

    // kubectl scale on the Deployment resizes its ReplicaSet.
    rig.kubectl_ok(&["scale", "deployment/web", "--replicas=5"])
        .await;
    rig.wait_for_image(5, "nginx:1.25").await;
    rig.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=30s"])
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_set_image_history_and_undo_stay_within_surge_and_unavailability() {
    let rig = Rig::start().await;
    let (replicas, surge, unavailable) = (4usize, 1usize, 1usize);
    rig.client
        .create(Some(NS), &rolling("web", 4, 1, 1))
        .await
        .unwrap();
    rig.wait_for_image(replicas, "nginx:1.25").await;
    rig.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=30s"])
        .await;

    let max_seen = Arc::new(AtomicUsize::new(0));
    let seen = max_seen.clone();
    let (stop, sampler) = sample_bounds(rig.client.clone(), move |pods| {
        let active: Vec<&Pod> = pods.iter().filter(|p| is_pod_active(p)).collect();
        let ready = active.iter().filter(|p| is_pod_ready(p)).count();
        seen.fetch_max(active.len(), Ordering::Relaxed);
        if active.len() > replicas + surge {
            return Some(format!(
                "{} pods, more than {}",
                active.len(),
                replicas + surge
            ));
        }
        if ready < replicas - unavailable {
            return Some(format!(
                "{ready} ready, fewer than {}",
                replicas - unavailable
            ));
        }
        None
    });
    rig.kubectl_ok(&["set", "image", "deployment/web", "web=nginx:1.26"])
        .await;
    rig.kubectl_ok(&[
        "annotate",
        "deployment/web",
        "kubernetes.io/change-cause=image 1.26",
    ])
    .await;
    let out = rig
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    rig.wait_for_image(replicas, "nginx:1.26").await;

    // History lists both revisions, with the change cause of the second.
    let history = wait_until("history with the change cause", WAIT, || async {
        let out = rig
            .kubectl_ok(&["rollout", "history", "deployment/web"])
            .await;
        out.contains("image 1.26").then_some(out)
    })
    .await;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    // Undo goes back to the first template, as revision 3, within bounds.
    rig.kubectl_ok(&["rollout", "undo", "deployment/web"]).await;
    let out = rig
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    rig.wait_for_image(replicas, "nginx:1.25").await;
    stop.cancel();
    let (samples, violations) = sampler.await.unwrap();
    assert!(samples > 50, "only {samples} samples");
    assert!(violations.is_empty(), "bounds broken: {violations:?}");
    assert!(
        max_seen.load(Ordering::Relaxed) > replicas,
        "the rollout surged"
    );

    let sets = rig.replicasets().await;
    assert_eq!(sets.len(), 2, "undo reuses the first ReplicaSet");
    let revision = |rs: &ReplicaSet| {
        rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"].clone()
    };
    let current = sets
        .iter()
        .find(|rs| rs.spec.as_ref().unwrap().replicas == Some(4))
        .unwrap();
    assert_eq!(revision(current), "3");
    let d = rig.deployment("web").await;
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );
    let history = rig
        .kubectl_ok(&["rollout", "history", "deployment/web"])
        .await;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_pause_holds_the_rollout_until_resume() {
    let rig = Rig::start().await;
    let mut d = rolling("web", 3, 1, 0);
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    rig.roll_out(&d).await;

    rig.kubectl_ok(&["rollout", "pause", "deployment/web"])
        .await;
    rig.kubectl_ok(&["set", "image", "deployment/web", "web=nginx:1.26"])
        .await;
    wait_until("Progressing says paused", WAIT, || async {
        let d = rig.deployment("web").await;
        let s = d.status?;
        let c = s
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Progressing")?;
        (c.reason.as_deref() == Some("DeploymentPaused")
            && s.observed_generation == d.metadata.generation)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rig.replicasets().await.len(),
        1,
        "no new ReplicaSet while paused"
    );
    let pods = rig.active_pods().await;
    assert!(pods.len() == 3 && pods.iter().all(|p| image_of(p) == "nginx:1.25"));

    rig.kubectl_ok(&["rollout", "resume", "deployment/web"])
        .await;
    rig.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    rig.wait_for_image(3, "nginx:1.26").await;

    // revisionHistoryLimit 1: after a third template, one old one is kept.
    rig.kubectl_ok(&["set", "image", "deployment/web", "web=nginx:1.27"])
        .await;
    rig.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    rig.wait_for_image(3, "nginx:1.27").await;
    wait_until("old ReplicaSets beyond the limit deleted", WAIT, || async {
        let sets = rig.replicasets().await;
        let images: Vec<String> = sets
            .iter()
            .map(|rs| {
                rs.spec
                    .as_ref()
                    .unwrap()
                    .template
                    .as_ref()
                    .unwrap()
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .image
                    .clone()
                    .unwrap()
            })
            .collect();
        (sets.len() == 2 && images.contains(&"nginx:1.26".to_string())).then_some(())
    })
    .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_recreate_removes_old_pods_before_new_ones_start() {
    let rig = Rig::start().await;
    let mut d = rolling("web", 3, 0, 0);
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    rig.roll_out(&d).await;

    let (stop, sampler) = sample_bounds(rig.client.clone(), |pods| {
        let images: std::collections::BTreeSet<&str> = pods
            .iter()
            .filter(|p| is_pod_active(p))
            .map(image_of)
            .collect();
        (images.len() > 1).then(|| format!("old and new pods at once: {images:?}"))
    });
    rig.kubectl_ok(&["set", "image", "deployment/web", "web=nginx:1.26"])
        .await;
    rig.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    rig.wait_for_image(3, "nginx:1.26").await;
    stop.cancel();
    let (samples, violations) = sampler.await.unwrap();
    assert!(samples > 10, "only {samples} samples");
    assert!(violations.is_empty(), "{violations:?}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_stuck_rollout_exceeds_its_progress_deadline() {
    let rig = Rig::start().await;
    let mut d = rolling("web", 3, 1, 0);
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(2);
    rig.roll_out(&d).await;

    rig.kubectl_ok(&["set", "image", "deployment/web", "web=nginx:stuck"])
        .await;
    let out = rig
        .api
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=30s"])
        .await;
    assert!(!out.success, "a stuck rollout does not succeed: {out:?}");
    assert!(
        out.stderr.contains("exceeded its progress deadline"),
        "{out:?}"
    );
    let d = rig.deployment("web").await;
    let conditions = d.status.unwrap().conditions.unwrap();
    let progressing = conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
    // maxUnavailable 0: the old pods all stay while the new one is stuck.
    let pods = rig.active_pods().await;
    let old_ready = pods
        .iter()
        .filter(|p| image_of(p) == "nginx:1.25" && is_pod_ready(p))
        .count();
    assert_eq!((pods.len(), old_ready), (4, 3));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_deployment_with_selector_not_matching_template_reports_it() {
    let rig = Rig::start().await;
    let mut d = rolling("odd", 2, 1, 0);
    d.spec.as_mut().unwrap().selector = app_expression("NotIn", "odd");
    rig.client.create(Some(NS), &d).await.unwrap();
    wait_until(
        "a ReplicaFailure condition and a Warning event",
        WAIT,
        || async {
            let d = rig.deployment("odd").await;
            let cond = d
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "ReplicaFailure")?;
            (cond.reason.as_deref() == Some("SelectorMismatch")).then_some(())?;
            rig.event(|e| {
                e.reason.as_deref() == Some("SelectorMismatch")
                    && e.involved_object.kind.as_deref() == Some("Deployment")
            })
            .await
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rig.replicasets().await.is_empty(),
        "no ReplicaSet for a bad Deployment"
    );
    rig.stop().await;
}
