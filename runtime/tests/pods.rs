//! Pods through libcontainer, as root, with real containers of the busybox
//! test image (scripts/build-test-image): logs, localhost between the
//! containers of a pod, hostname, memory limits and OOM kills, graceful
//! termination, teardown leaving nothing behind, and adoption by a new
//! runtime.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use orch_runtime::image::ImageStore;
use orch_runtime::pod::{
    cgroup, process_alive, ContainerConfig, ContainerState, PodRuntime, SandboxConfig,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_log_hostname_and_teardown_leaves_nothing() {
    let fx = Fixture::new();
    let pod = fx.pod("web").await;
    let mut main = sh(
        "main",
        "echo hello; hostname; cat /etc/hostname; sleep 3600",
    );
    main.memory_limit_bytes = Some(64 << 20);
    main.cpu_request_millis = Some(250);
    main.cpu_limit_millis = Some(500);
    let started = fx.runtime.run_container(&pod.uid, main).await.unwrap();
    let ContainerState::Running { pid } = started.state else {
        panic!("not running: {started:?}");
    };
    assert_eq!(
        started.record.log_path,
        fx.dir
            .path()
            .join(format!("logs/default_web_{}/main/0.log", pod.uid))
    );
    let log = wait_for_log(
        &started.record.log_path,
        "web\nweb\n",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(log, "hello\nweb\nweb\n");

    // The limits are in the container's cgroup.
    if !cgroup::is_unified() {
        let mem = PathBuf::from("/sys/fs/cgroup/memory").join(format!("orch/{}/main-0", pod.uid));
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes"))
                .unwrap()
                .trim(),
            (64u64 << 20).to_string()
        );
        let cpu = PathBuf::from("/sys/fs/cgroup/cpu").join(format!("orch/{}/main-0", pod.uid));
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.shares")).unwrap().trim(),
            "256"
        );
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
                .unwrap()
                .trim(),
            "50000"
        );
    }

    let side = fx
        .runtime
        .run_container(&pod.uid, sh("side", "sleep 3600"))
        .await
        .unwrap();
    let ContainerState::Running { pid: side_pid } = side.state else {
        panic!("not running: {side:?}");
    };
    assert!(
        !fx.leftovers(&pod.uid).is_empty(),
        "the pod should hold mounts and cgroups"
    );

    let t = Instant::now();
    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    eprintln!("teardown of 2 running containers: {:?}", t.elapsed());
    assert_eq!(fx.leftovers(&pod.uid), Vec::<String>::new());
    assert!(!process_alive(pid) && !process_alive(side_pid));
    assert!(!fx.dir.path().join("run/pods").join(&pod.uid).exists());
    assert!(!fx.dir.path().join("data").join(&pod.uid).exists());
    assert!(!fx
        .dir
        .path()
        .join(format!("logs/default_web_{}", pod.uid))
        .exists());
    assert_eq!(
        fs::read_dir(fx.dir.path().join("run/libcontainer"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_containers_of_a_pod_talk_over_localhost() {
    let fx = Fixture::new();
    let pod = fx.pod("talk").await;
    let server = fx
        .runtime
        // stdin is /dev/null: busybox nc would stop at its EOF before the
        // client's data arrives, so it reads a pipe that stays open instead.
        .run_container(&pod.uid, sh("server", "sleep 30 | nc -l -p 8080"))
        .await
        .unwrap();
    let client = fx
        .runtime
        .run_container(
            &pod.uid,
            sh(
                "client",
                "for i in $(seq 100); do echo ping | nc 127.0.0.1 8080 && exit 0; echo retry; sleep 0.05; done; exit 1",
            ),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&server.record.log_path)
        .unwrap_or_default()
        .contains("ping")
    {
        assert!(
            Instant::now() < deadline,
            "the server got nothing; server {:?}, client {:?} (log {:?})",
            fx.runtime.container(&server.record.id).await.unwrap().state,
            fx.runtime.container(&client.record.id).await.unwrap().state,
            fs::read_to_string(&client.record.log_path).unwrap_or_default(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = fx
        .runtime
        .wait_exit(&client.record.id, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the client exits");
    assert_eq!(exit.exit_code, Some(0));
    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(fx.leftovers(&pod.uid), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_memory_limit_oom_kill_is_detected() {
    let fx = Fixture::new();
    let pod = fx.pod("hog").await;
    let mut hog = sh(
        "hog",
        "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived; sleep 1",
    );
    hog.memory_limit_bytes = Some(16 << 20);
    let started = fx.runtime.run_container(&pod.uid, hog).await.unwrap();
    let exit = fx
        .runtime
        .wait_exit(&started.record.id, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the hog is killed");
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.exit_code, Some(137), "{exit:?}");
    let info = fx.runtime.container(&started.record.id).await.unwrap();
    assert_eq!(info.state, ContainerState::Exited(exit));
    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(fx.leftovers(&pod.uid), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_sigterm_then_sigkill_after_grace() {
    let fx = Fixture::new();
    let pod = fx.pod("term").await;
    // PID 1 without a handler ignores SIGTERM; `trap ''` makes sure of it.
    let stubborn = fx
        .runtime
        .run_container(
            &pod.uid,
            sh("stubborn", "trap '' TERM; while true; do sleep 1; done"),
        )
        .await
        .unwrap();
    let polite = fx
        .runtime
        .run_container(
            &pod.uid,
            sh(
                "polite",
                "trap 'echo bye; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
            ),
        )
        .await
        .unwrap();
    wait_for_log(&polite.record.log_path, "ready", Duration::from_secs(10)).await;

    let t = Instant::now();
    let exit = fx
        .runtime
        .stop_container(&polite.record.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((exit.exit_code, exit.signal), (Some(3), None));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    wait_for_log(&polite.record.log_path, "bye", Duration::from_secs(1)).await;

    let t = Instant::now();
    let exit = fx
        .runtime
        .stop_container(&stubborn.record.id, Duration::from_millis(800))
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!((exit.exit_code, exit.signal), (Some(137), Some(9)));
    assert!(!exit.oom_killed);
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "{took:?}"
    );
    fx.runtime
        .remove_container(&stubborn.record.id)
        .await
        .unwrap();
    fx.runtime
        .remove_container(&polite.record.id)
        .await
        .unwrap();
    assert!(fx
        .runtime
        .pod_containers(&pod.uid)
        .await
        .unwrap()
        .is_empty());
    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(fx.leftovers(&pod.uid), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_restarted_runtime_adopts_running_containers() {
    let fx = Fixture::new();
    let pod = fx.pod("keep").await;
    let kept = fx
        .runtime
        .run_container(&pod.uid, sh("kept", "echo one; sleep 3600"))
        .await
        .unwrap();
    let done = fx
        .runtime
        .run_container(&pod.uid, sh("done", "exit 7"))
        .await
        .unwrap();
    fx.runtime
        .wait_exit(&done.record.id, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("exits");

    let again = fx.restart();
    let pods = again.recover().await.unwrap();
    let found = pods
        .iter()
        .find(|p| p.sandbox.config.uid == pod.uid)
        .expect("the pod is found");
    assert!(found.namespaces_present);
    assert_eq!(found.sandbox.config, pod);
    let by_name = |n: &str| {
        found
            .containers
            .iter()
            .find(|c| c.record.name == n)
            .unwrap()
    };
    assert_eq!(by_name("kept").state, kept.state);
    match by_name("done").state {
        ContainerState::Exited(e) => assert_eq!(e.exit_code, Some(7)),
        s => panic!("{s:?}"),
    }
    // The adopted container is stopped through the new runtime.
    let exit = again
        .stop_container(&kept.record.id, Duration::ZERO)
        .await
        .unwrap();
    assert!(exit.finished_at_ms > 0);
    again
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(fx.leftovers(&pod.uid), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_bad_command_fails_and_leaves_nothing() {
    let fx = Fixture::new();
    let pod = fx.pod("bad").await;
    let bad = ContainerConfig {
        name: "bad".into(),
        image: IMAGE.into(),
        command: vec!["/no/such/binary".into()],
        ..Default::default()
    };
    let err = fx.runtime.run_container(&pod.uid, bad).await.unwrap_err();
    eprintln!("bad command: {err}");
    assert!(fx
        .runtime
        .pod_containers(&pod.uid)
        .await
        .unwrap()
        .is_empty());
    let missing = ContainerConfig {
        name: "img".into(),
        image: "example.com/nothere:1".into(),
        command: vec!["sh".into()],
        ..Default::default()
    };
    let err = fx
        .runtime
        .run_container(&pod.uid, missing)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not present"), "{err}");
    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(fx.leftovers(&pod.uid), Vec::<String>::new());
}

/// create+start+wait+delete of an `echo` container, as the benchmark's
/// "runtime alone" figure; printed, and bounded loosely.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_echo_container_round_trip_time() {
    let fx = Fixture::new();
    let pod = fx.pod("echo").await;
    let mut times = Vec::new();
    let mut phases = Vec::new();
    for attempt in 0..10 {
        let mut c = ContainerConfig {
            name: "echo".into(),
            image: IMAGE.into(),
            command: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        c.attempt = attempt;
        let t = Instant::now();
        let info = fx.runtime.run_container(&pod.uid, c).await.unwrap();
        let started = t.elapsed();
        let exit = fx
            .runtime
            .wait_exit(&info.record.id, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        let exited = t.elapsed();
        fx.runtime.remove_container(&info.record.id).await.unwrap();
        phases.push((started, exited - started, t.elapsed() - exited));
        times.push(t.elapsed());
        assert_eq!(exit.exit_code, Some(0));
        assert_eq!(fs::read_to_string(&info.record.log_path).unwrap(), "hi\n");
    }
    times.sort();
    eprintln!(
        "echo create+start+wait+delete: median {:?}, min {:?}, max {:?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    phases.sort();
    eprintln!(
        "phases of the median-start run (create+start, wait, delete): {:?}",
        phases[phases.len() / 2]
    );
    assert!(times[times.len() / 2] < Duration::from_secs(2));
    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(fx.leftovers(&pod.uid), Vec::<String>::new());
}

/// Set for the child process of `pods_adopts_containers_of_a_killed_agent`:
/// the directory of the parent's fixture.
const HELPER_ENV: &str = "ORCH_PODS_TEST_AGENT_DIR";

/// Not a test of its own: the "agent" that
/// `pods_adopts_containers_of_a_killed_agent` runs as a child process. It
/// starts a pod with a container, prints their ids and kills itself with
/// SIGKILL, leaving the container running without its parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_helper_agent_that_dies() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let images = ImageStore::open(dir.join("images")).unwrap();
    let runtime = PodRuntime::start(Fixture::config(&dir), images).unwrap();
    let pod = SandboxConfig {
        uid: format!("adopt-{}", std::process::id()),
        name: "adopt".to_string(),
        namespace: "default".to_string(),
    };
    runtime.create_sandbox(pod.clone()).await.unwrap();
    let info = runtime
        .run_container(&pod.uid, sh("kept", "echo one; sleep 3600"))
        .await
        .unwrap();
    let ContainerState::Running { pid } = info.state else {
        panic!("{info:?}");
    };
    println!("ADOPT {} {} {pid}", pod.uid, info.record.id);
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_adopts_containers_of_a_killed_agent() {
    let fx = Fixture::new();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pods_helper_agent_that_dies", "--nocapture"])
        .env(HELPER_ENV, fx.dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ADOPT "))
        .unwrap_or_else(|| {
            panic!(
                "the helper agent printed no ids: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (uid, id, pid) = (fields[0], fields[1], fields[2].parse::<i32>().unwrap());
    fx.pods.lock().unwrap().push(uid.to_string());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "the helper agent was killed");
    assert!(process_alive(pid), "the container outlives its agent");

    let pods = fx.runtime.recover().await.unwrap();
    let found = pods.iter().find(|p| p.sandbox.config.uid == uid).unwrap();
    assert!(found.namespaces_present);
    assert_eq!(found.containers.len(), 1);
    assert_eq!(found.containers[0].record.id, id);
    assert_eq!(found.containers[0].state, ContainerState::Running { pid });
    wait_for_log(
        &found.containers[0].record.log_path,
        "one\n",
        Duration::from_secs(5),
    )
    .await;

    // Adopted: stopped through this runtime; its exit code is not knowable.
    let exit = fx.runtime.stop_container(id, Duration::ZERO).await.unwrap();
    assert_eq!(exit.exit_code, None);
    assert!(!process_alive(pid));
    fx.runtime
        .teardown_pod(uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(fx.leftovers(uid), Vec::<String>::new());
}

/// Containers are created while other threads of the process spawn
/// processes and read the environment (as the agent's probes and tokio's
/// workers do): a create must never hang on a lock copied from another
/// thread into the cloned init process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_create_while_other_threads_spawn_processes() {
    let fx = Fixture::new();
    let pod = fx.pod("busy").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::env::var("PATH");
                    let _ = Command::new("/bin/true").status();
                }
            })
        })
        .collect();
    for attempt in 0..20 {
        let c = ContainerConfig {
            name: "busy".into(),
            image: IMAGE.into(),
            command: vec!["true".into()],
            attempt,
            ..Default::default()
        };
        let info = tokio::time::timeout(
            Duration::from_secs(20),
            fx.runtime.run_container(&pod.uid, c),
        )
        .await
        .expect("a container create hung")
        .unwrap();
        let exit = fx
            .runtime
            .wait_exit(&info.record.id, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("exits");
        assert_eq!(exit.exit_code, Some(0));
        fx.runtime.remove_container(&info.record.id).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spawners {
        s.join().unwrap();
    }
    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(fx.leftovers(&pod.uid), Vec::<String>::new());
}
