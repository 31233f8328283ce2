//! Container probes against real busybox containers, as root: httpGet and
//! tcpSocket probes reach the pod through its network namespace (nothing
//! listens on the host), exec probes run in the container.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{
    ContainerPort, ExecAction, HTTPGetAction, HTTPHeader, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orch_runtime::agent::probe::{
    probe_once, spawn_prober, ProbeKind, ProbeResult, ProbeTarget, ProbeVerdict,
};
use orch_runtime::pod::Sandbox;

fn http(path: &str, port: IntOrString) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tcp(port: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn exec(command: &[&str]) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|s| s.to_string()).collect()),
        }),
        ..Default::default()
    }
}

fn failure(result: &ProbeResult) -> &str {
    match result {
        ProbeResult::Failure(m) => m,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_http_tcp_and_exec_against_a_real_pod() {
    let fx = Fixture::new();
    let pod = fx.pod("probed").await;
    let web = sh(
        "web",
        "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    let started = fx.runtime.run_container(&pod.uid, web).await.unwrap();
    // A server that accepts and never answers (for the timeout).
    fx.runtime
        .run_container(&pod.uid, sh("mute", "exec nc -ll -p 9090 -e sleep 1000"))
        .await
        .unwrap();
    let id = started.record.id.clone();
    let spec = k8s_openapi::api::core::v1::Container {
        name: "web".into(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }]),
        ..Default::default()
    };
    let sandbox = Sandbox {
        config: pod.clone(),
        dir: fx.dir.path().join("run/pods").join(&pod.uid),
    };
    let target = ProbeTarget::new(&sandbox, &id, &spec, None);
    let rt = &fx.runtime;

    // httpd takes a moment to listen.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe_once(rt, &tcp(8080), &target).await != ProbeResult::Success {
        assert!(std::time::Instant::now() < deadline, "httpd never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // httpGet: success, by number and by name, with headers.
    assert_eq!(
        probe_once(rt, &http("/index.html", IntOrString::Int(8080)), &target).await,
        ProbeResult::Success
    );
    let mut named = http("/", IntOrString::String("http".into()));
    named.http_get.as_mut().unwrap().http_headers = Some(vec![HTTPHeader {
        name: "X-Probe".into(),
        value: "yes".into(),
    }]);
    assert_eq!(probe_once(rt, &named, &target).await, ProbeResult::Success);
    // A missing page is a failure with the status code.
    let result = probe_once(rt, &http("/nope", IntOrString::Int(8080)), &target).await;
    assert!(failure(&result).contains("statuscode: 404"), "{result:?}");
    // An unknown port name and a closed port.
    let result = probe_once(rt, &http("/", IntOrString::String("nope".into())), &target).await;
    assert!(failure(&result).contains("invalid port"), "{result:?}");
    let result = probe_once(rt, &http("/", IntOrString::Int(8081)), &target).await;
    assert!(failure(&result).contains("refused"), "{result:?}");
    // A server that never answers: the timeout holds.
    let mut mute = http("/", IntOrString::Int(9090));
    mute.timeout_seconds = Some(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe_once(rt, &tcp(9090), &target).await != ProbeResult::Success {
        assert!(std::time::Instant::now() < deadline, "nc never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = std::time::Instant::now();
    let result = probe_once(rt, &mute, &target).await;
    assert!(failure(&result).contains("timed out"), "{result:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    // tcpSocket.
    assert_eq!(
        probe_once(rt, &tcp(8080), &target).await,
        ProbeResult::Success
    );
    let result = probe_once(rt, &tcp(8082), &target).await;
    assert!(failure(&result).contains("refused"), "{result:?}");

    // exec: follows a file being created and removed.
    let ready = exec(&["test", "-f", "/tmp/ready"]);
    let result = probe_once(rt, &ready, &target).await;
    assert!(
        failure(&result).contains("exited with code 1"),
        "{result:?}"
    );
    let touch = |args: &[&str]| {
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let id = id.clone();
        async move {
            let out = rt.exec(&id, argv, Duration::from_secs(5)).await.unwrap();
            assert_eq!(out.exit_code, 0, "{out:?}");
        }
    };
    touch(&["touch", "/tmp/ready"]).await;
    assert_eq!(probe_once(rt, &ready, &target).await, ProbeResult::Success);

    // The prober task: readiness every second, flipping with the file.
    let mut fast = ready.clone();
    fast.period_seconds = Some(1);
    fast.failure_threshold = Some(1);
    let mut verdict = spawn_prober(rt.clone(), fast, ProbeKind::Readiness, target.clone());
    let wait = |rx: &mut tokio::sync::watch::Receiver<ProbeVerdict>, success: bool| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                rx.wait_for(|v| v.is_success() == success),
            )
            .await
            .expect("the verdict did not change in time")
            .unwrap()
            .clone()
        }
    };
    wait(&mut verdict, true).await;
    touch(&["rm", "/tmp/ready"]).await;
    let v = wait(&mut verdict, false).await;
    assert!(matches!(v, ProbeVerdict::Failure(m) if m.contains("exited with code 1")));
    touch(&["touch", "/tmp/ready"]).await;
    wait(&mut verdict, true).await;
    drop(verdict);

    // A command that runs too long fails the probe and is killed.
    let mut slow = exec(&["sleep", "30"]);
    slow.timeout_seconds = Some(1);
    let result = probe_once(rt, &slow, &target).await;
    assert!(failure(&result).contains("timed out"), "{result:?}");

    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert!(fx.leftovers(&pod.uid).is_empty());
}
