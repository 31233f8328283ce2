//! Pods on a real agent: running, logs on disk, restarts with back-off,
//! OOM kills, init containers, localhost between containers, deletion
//! within the grace period leaving nothing behind, adoption after the agent
//! is killed, and pull failures.

use std::time::{Duration, Instant};

use orch_tests::registry::TestRegistry;

use crate::{container_status, phase, Rig};

fn manifest(name: &str, restart: &str, containers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: 2\n  containers:\n{containers}"
    )
}

fn container(name: &str, script: &str) -> String {
    format!(
        "  - name: {name}\n    image: busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", {script:?}]\n"
    )
}

#[tokio::test]
async fn a_pod_runs_logs_and_is_deleted_within_its_grace_period() {
    let rig = Rig::start().await;
    rig.apply(&manifest(
        "hello",
        "Always",
        &container("main", "echo hello; sleep 3600"),
    ))
    .await;
    let pod = rig
        .wait_pod("hello", "Running and Ready", Duration::from_secs(30), |p| {
            phase(p) == "Running" && container_status(p, "main")["ready"] == true
        })
        .await;
    assert_eq!(pod["spec"]["nodeName"], "n1");
    assert_eq!(
        pod["status"]["hostIP"],
        rig.api.node_internal_ip("n1").await.as_str()
    );
    let main = container_status(&pod, "main");
    assert!(main["state"]["running"]["startedAt"].is_string(), "{main}");
    assert_eq!(main["restartCount"], 0);
    assert!(main["containerID"].as_str().unwrap().starts_with("orch://"));
    let log = std::fs::read_to_string(rig.log_file(&pod, "main", 0)).unwrap();
    assert_eq!(log, "hello\n");
    // Through the API server, proxied to the agent.
    assert_eq!(rig.api.kubectl_ok(&["logs", "hello"]).await, "hello\n");
    let get = rig.api.kubectl_ok(&["get", "pod", "hello"]).await;
    assert!(get.contains("1/1") && get.contains("Running"), "{get}");

    // `sleep` as PID 1 ignores SIGTERM: it is killed when the 2 s grace period ends.
    let started = Instant::now();
    rig.api
        .kubectl_ok(&["delete", "pod", "hello", "--wait=true"])
        .await;
    let took = started.elapsed();
    assert!(rig.pod("hello").await.is_none());
    assert!(
        took >= Duration::from_millis(1500),
        "deleted after {took:?}, before the grace period ended"
    );
    assert!(took < Duration::from_secs(10), "deleting took {took:?}");
    assert_eq!(rig.node.leftovers(), Vec::<String>::new());
    let events = rig.api.kubectl_ok(&["get", "events", "-o", "wide"]).await;
    for reason in ["Scheduled", "Pulled", "Started", "Killing"] {
        assert!(events.contains(reason), "no {reason} event in:\n{events}");
    }
}

#[tokio::test]
async fn container_logs_are_rotated_by_size() {
    let rig = Rig::start_with(&[
        "--container-log-max-size",
        "16Ki",
        "--container-log-max-files",
        "3",
        "--log-check-interval-ms",
        "200",
    ])
    .await;
    // About 6 KiB every 0.3 s, 120 KiB in all, then a last line.
    let script = "for b in $(seq 20); do for i in $(seq 100); do \
        echo \"batch $b line $i ..........................................\"; done; sleep 0.3; done; \
        echo last-line; sleep 3600";
    rig.apply(&manifest("chatty", "Always", &container("main", script)))
        .await;
    rig.wait_pod("chatty", "Running", Duration::from_secs(30), |p| {
        phase(p) == "Running"
    })
    .await;
    crate::wait_until("the last line logged", Duration::from_secs(30), || async {
        let out = rig.api.kubectl(&["logs", "chatty", "--tail=1"]).await;
        (out.stdout == "last-line\n").then_some(())
    })
    .await;
    let pod = rig.pod("chatty").await.unwrap();
    let live = rig.log_file(&pod, "main", 0);
    let size = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.len()).ok();
    let rotated = |n: usize| {
        let mut name = live.clone().into_os_string();
        name.push(format!(".{n}"));
        std::path::PathBuf::from(name)
    };
    // The live file and at most two copies, none much over the limit
    // (a file grows by at most one batch between two checks).
    assert!(size(&live).unwrap() < 32 << 10, "{:?}", size(&live));
    for n in [1, 2] {
        let copy = size(&rotated(n)).unwrap_or_else(|| {
            let files: Vec<_> = std::fs::read_dir(live.parent().unwrap())
                .unwrap()
                .flatten()
                .map(|e| (e.file_name(), e.metadata().unwrap().len()))
                .collect();
            let status = container_status(&pod, "main").clone();
            panic!("no copy {n}: {files:?}\n{status:#}")
        });
        assert!(
            (16 << 10..32 << 10).contains(&copy),
            "copy {n}: {copy} bytes"
        );
    }
    assert_eq!(size(&rotated(3)), None, "only 3 files are kept");
    // Truncation falls between writes: the live file holds whole lines.
    let text = std::fs::read_to_string(&live).unwrap();
    assert!(text.ends_with("last-line\n"), "{text}");
    assert!(
        text.lines()
            .all(|l| l == "last-line" || (l.starts_with("batch ") && l.ends_with("...."))),
        "{text}"
    );
}

#[tokio::test]
async fn a_crashing_container_is_restarted_with_growing_back_off() {
    let rig = Rig::start().await;
    rig.apply(&manifest(
        "crash",
        "Always",
        &container("main", "echo run; exit 3"),
    ))
    .await;
    let pod = rig
        .wait_pod(
            "crash",
            "three restarts, backing off",
            Duration::from_secs(60),
            |p| {
                let c = container_status(p, "main");
                c["restartCount"].as_u64() >= Some(3)
                    && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            },
        )
        .await;
    let c = container_status(&pod, "main");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("back-off"),
        "{c}"
    );
    assert_eq!(phase(&pod), "Running");
    let get = rig.api.kubectl_ok(&["get", "pod", "crash"]).await;
    assert!(get.contains("CrashLoopBackOff"), "{get}");
    let previous = rig.api.kubectl_ok(&["logs", "crash", "--previous"]).await;
    assert_eq!(previous, "run\n");
    // Back-off grows: 0, 1 s, 2 s, 4 s ... between runs.
    let restarts = |p: &serde_json::Value| {
        container_status(p, "main")["restartCount"]
            .as_u64()
            .unwrap()
    };
    let at_three = Instant::now();
    let before = restarts(&pod);
    let pod = rig
        .wait_pod("crash", "one more restart", Duration::from_secs(30), |p| {
            restarts(p) > before
        })
        .await;
    let gap = at_three.elapsed();
    assert!(restarts(&pod) == before + 1);
    assert!(
        gap >= Duration::from_millis(1500),
        "restart {} came {gap:?} after the previous one",
        before + 1
    );
    let events = rig.api.kubectl_ok(&["get", "events"]).await;
    assert!(events.contains("BackOff"), "{events}");
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let rig = Rig::start().await;
    let yaml = manifest(
        "hog",
        "Never",
        &format!(
            "{}    resources:\n      limits:\n        memory: 24Mi\n",
            container("main", "head -c 200m /dev/zero | tail")
        ),
    );
    rig.apply(&yaml).await;
    let pod = rig
        .wait_pod("hog", "Failed", Duration::from_secs(60), |p| {
            phase(p) == "Failed"
        })
        .await;
    let c = container_status(&pod, "main");
    assert_eq!(c["state"]["terminated"]["reason"], "OOMKilled", "{c}");
    assert_eq!(c["restartCount"], 0);
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_app() {
    let rig = Rig::start().await;
    let yaml = format!(
        "{}  initContainers:\n{}{}",
        manifest("init", "Always", &container("app", "sleep 3600")),
        container("first", "sleep 1"),
        container("second", "exit 0"),
    );
    rig.apply(&yaml).await;
    let pod = rig
        .wait_pod("init", "Running", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await;
    let inits = pod["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    let time = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    let first = &inits[0]["state"]["terminated"];
    let second = &inits[1]["state"]["terminated"];
    assert_eq!(first["reason"], "Completed", "{inits:?}");
    assert_eq!(second["reason"], "Completed", "{inits:?}");
    assert!(time(&first["finishedAt"]) <= time(&second["startedAt"]));
    let app = container_status(&pod, "app");
    assert!(time(&second["finishedAt"]) <= time(&app["state"]["running"]["startedAt"]));

    // A failing init container of a pod that never restarts fails the pod,
    // and the app never starts.
    let yaml = format!(
        "{}  initContainers:\n{}",
        manifest("init-fails", "Never", &container("app", "sleep 3600")),
        container("setup", "exit 7"),
    );
    rig.apply(&yaml).await;
    let pod = rig
        .wait_pod("init-fails", "Failed", Duration::from_secs(30), |p| {
            phase(p) == "Failed"
        })
        .await;
    let setup = &pod["status"]["initContainerStatuses"][0]["state"]["terminated"];
    assert_eq!(setup["exitCode"], 7, "{pod:#}");
    assert!(container_status(&pod, "app")["state"]["running"].is_null());
}

#[tokio::test]
async fn containers_of_a_pod_share_localhost() {
    let rig = Rig::start().await;
    let containers = format!(
        "{}{}",
        container("server", "nc -l -p 7000; sleep 3600"),
        container(
            "client",
            "until echo ping | nc 127.0.0.1 7000; do sleep 0.2; done; sleep 3600"
        ),
    );
    rig.apply(&manifest("pair", "Always", &containers)).await;
    let pod = rig
        .wait_pod("pair", "Running", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await;
    let log = rig.log_file(&pod, "server", 0);
    orch_tests::wait_until(
        "the server to read ping",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("ping"))
        },
    )
    .await;
}

#[tokio::test]
async fn a_killed_agent_adopts_its_running_pods_when_it_comes_back() {
    let mut rig = Rig::start().await;
    rig.apply(&manifest(
        "steady",
        "Always",
        &container("main", "echo once; sleep 3600"),
    ))
    .await;
    let before = rig
        .wait_pod("steady", "Running", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await;
    let id = container_status(&before, "main")["containerID"].clone();
    let started = container_status(&before, "main")["state"]["running"]["startedAt"].clone();

    rig.node.kill9();
    // Deleted while the agent is down: stays Terminating until it is back.
    rig.apply(&manifest(
        "doomed",
        "Always",
        &container("main", "sleep 3600"),
    ))
    .await;
    rig.node.restart();
    rig.wait_node_ready().await;
    let after = rig
        .wait_pod(
            "steady",
            "Running after the restart",
            Duration::from_secs(30),
            |p| phase(p) == "Running" && container_status(p, "main")["ready"] == true,
        )
        .await;
    let main = container_status(&after, "main");
    assert_eq!(main["containerID"], id, "the container was replaced");
    assert_eq!(main["state"]["running"]["startedAt"], started);
    assert_eq!(main["restartCount"], 0);
    let log = std::fs::read_to_string(rig.log_file(&after, "main", 0)).unwrap();
    assert_eq!(log, "once\n", "the container ran twice");
    let doomed = rig
        .wait_pod("doomed", "Running", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        })
        .await;
    let doomed_uid = doomed["metadata"]["uid"].as_str().unwrap().to_string();

    // A pod deleted while the agent is down is torn down when it returns.
    rig.node.kill9();
    rig.api
        .kubectl_ok(&["delete", "pod", "doomed", "--wait=false"])
        .await;
    rig.node.restart();
    orch_tests::wait_until("doomed to be gone", Duration::from_secs(30), || async {
        rig.pod("doomed").await.is_none().then_some(())
    })
    .await;
    let left: Vec<String> = rig
        .node
        .leftovers()
        .into_iter()
        .filter(|l| l.contains(&doomed_uid))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

#[tokio::test]
async fn images_are_pulled_from_a_registry_and_a_missing_one_backs_off_with_its_error() {
    let registry = TestRegistry::start();
    registry.push(
        orch_tests::agent::test_image_layout(),
        "tools/busybox:pushed",
    );
    let rig = Rig::start().await;
    let manifest_for = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: main\n    image: {image}\n    imagePullPolicy: Always\n    command: [\"sh\", \"-c\", \"echo pulled; sleep 3600\"]\n"
        )
    };
    // An image only the registry has: pulled, then run.
    rig.apply(&manifest_for(
        "pulled",
        &format!("{}/tools/busybox:pushed", registry.addr),
    ))
    .await;
    let running = rig
        .wait_pod("pulled", "Running", Duration::from_secs(60), |p| {
            phase(p) == "Running"
        })
        .await;
    assert!(
        container_status(&running, "main")["imageID"]
            .as_str()
            .is_some_and(|id| id.contains("@sha256:")),
        "{running:#}"
    );
    assert_eq!(rig.api.kubectl_ok(&["logs", "pulled"]).await, "pulled\n");

    // A tag the registry does not have: its own words, then back-off.
    let missing = format!("{}/tools/busybox:missing", registry.addr);
    rig.apply(&manifest_for("nopull", &missing)).await;
    let pod = rig
        .wait_pod("nopull", "ImagePullBackOff", Duration::from_secs(30), |p| {
            container_status(p, "main")["state"]["waiting"]["reason"] == "ImagePullBackOff"
        })
        .await;
    let message = container_status(&pod, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(&missing), "{message}");
    assert!(message.contains("manifest unknown"), "{message}");
    assert_eq!(phase(&pod), "Pending");
    let events = rig.api.kubectl_ok(&["get", "events"]).await;
    assert!(events.contains("Failed to pull image"), "{events}");
    let get = rig.api.kubectl_ok(&["get", "pod", "nopull"]).await;
    assert!(
        get.contains("ImagePullBackOff") || get.contains("ErrImagePull"),
        "{get}"
    );

    // A registry that does not answer at all.
    rig.apply(&manifest_for("noregistry", "127.0.0.1:1/missing:1.0"))
        .await;
    let pod = rig
        .wait_pod(
            "noregistry",
            "ImagePullBackOff",
            Duration::from_secs(30),
            |p| container_status(p, "main")["state"]["waiting"]["reason"] == "ImagePullBackOff",
        )
        .await;
    let message = container_status(&pod, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("127.0.0.1:1/missing:1.0"), "{message}");
}

#[tokio::test]
async fn pod_cpu_and_memory_usage_is_published_for_the_autoscaler() {
    let api = orch_tests::api::TestApi::start_with(|c| c.loops = Some(Default::default())).await;
    let node = orch_tests::agent::TestNode::start(&api, "n1", &["--usage-interval-ms", "500"]);
    let rig = Rig { api, node };
    rig.wait_node_ready().await;
    let yaml = manifest(
        "burn",
        "Always",
        &format!(
            "{}    resources:\n      limits:\n        cpu: 300m\n        memory: 64Mi\n",
            container("main", "while :; do :; done")
        ),
    );
    rig.apply(&yaml).await;
    // The CFS quota holds it at 300m; samples average over half a second.
    let pod = rig
        .wait_pod(
            "burn",
            "CPU usage near its 300m limit",
            Duration::from_secs(30),
            |p| {
                p["metadata"]["annotations"]["orch.dev/cpu-usage-millicores"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|m| (200..=400).contains(&m))
            },
        )
        .await;
    let memory: u64 = pod["metadata"]["annotations"]["orch.dev/memory-usage-bytes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(memory > 0 && memory < 64 << 20, "{memory}");
}

#[tokio::test]
async fn a_command_missing_from_the_image_is_reported_and_harms_no_other_pod() {
    let rig = Rig::start().await;
    rig.apply(&manifest(
        "steady",
        "Always",
        &container("main", "sleep 3600"),
    ))
    .await;
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nocmd\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"/no/such/binary\"]\n";
    rig.apply(yaml).await;
    let pod = rig
        .wait_pod(
            "nocmd",
            "a start error naming the command",
            Duration::from_secs(30),
            |p| {
                let c = container_status(p, "main");
                c.to_string().contains("/no/such/binary")
            },
        )
        .await;
    let c = container_status(&pod, "main");
    assert!(c["state"]["running"].is_null(), "{c}");
    assert_eq!(phase(&rig.pod("steady").await.unwrap()), "Running");
    rig.api
        .kubectl_ok(&["delete", "pod", "nocmd", "steady"])
        .await;
    assert_eq!(rig.node.leftovers(), Vec::<String>::new());
}

#[tokio::test]
async fn a_malformed_image_or_a_memory_limit_too_small_to_start_is_reported() {
    let rig = Rig::start().await;
    rig.apply(&manifest(
        "steady",
        "Always",
        &container("main", "sleep 3600"),
    ))
    .await;
    // Uppercase repositories are not valid image references.
    let bad_image = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: badimage\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: \"Busy/Box:1\"\n    command: [\"sleep\", \"3600\"]\n";
    rig.apply(bad_image).await;
    let pod = rig
        .wait_pod(
            "badimage",
            "a waiting reason for the image",
            Duration::from_secs(30),
            |p| {
                container_status(p, "main")["state"]["waiting"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Busy/Box:1"))
            },
        )
        .await;
    let waiting = &container_status(&pod, "main")["state"]["waiting"];
    assert!(
        ["InvalidImageName", "ErrImagePull", "ImagePullBackOff"]
            .contains(&waiting["reason"].as_str().unwrap_or("")),
        "{waiting}"
    );
    // A memory limit no process can start in.
    let tiny = format!(
        "{}    resources:\n      limits:\n        memory: 64Ki\n",
        container("main", "sleep 3600")
    );
    rig.apply(&manifest("tiny", "Never", &tiny)).await;
    let pod = rig
        .wait_pod(
            "tiny",
            "a reason for the failed start",
            Duration::from_secs(30),
            |p| {
                let c = container_status(p, "main");
                c["state"]["terminated"]["reason"].is_string()
                    || c["state"]["waiting"]["message"].is_string()
            },
        )
        .await;
    let c = container_status(&pod, "main");
    assert!(c["state"]["running"].is_null(), "{c}");
    let events = rig.api.kubectl_ok(&["get", "events"]).await;
    assert!(
        events.contains("badimage") && events.contains("tiny"),
        "{events}"
    );
    // The agent keeps its other pods, and nothing of the failures stays.
    assert_eq!(phase(&rig.pod("steady").await.unwrap()), "Running");
    rig.api
        .kubectl_ok(&["delete", "pod", "badimage", "tiny", "steady"])
        .await;
    assert_eq!(rig.node.leftovers(), Vec::<String>::new());
}
