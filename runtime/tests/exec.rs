//! Processes run in running containers (`PodRuntime::exec`,
//! `PodRuntime::exec_streaming`), as root, with real busybox containers:
//! namespaces, environment, user and working directory of the container,
//! exit codes, timeouts that leave nothing behind, stdin streaming and a
//! terminal.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use orch_runtime::pod::{cgroup, ContainerState, ExecError, ExecRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Reads from `reader` until the text read contains `want`.
async fn read_until<R: tokio::io::AsyncRead + Unpin>(reader: &mut R, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "EOF before {want:?}; read {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&got).contains(want) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no {want:?} within 10 s"));
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_runs_in_the_container_as_its_process() {
    let fx = Fixture::new();
    let pod = fx.pod("exec-web").await;
    let mut main = sh("main", "sleep 3600");
    main.env = vec![("GREETING".into(), "hello".into())];
    main.working_dir = Some("/tmp".into());
    main.run_as_user = Some(1000);
    let started = fx.runtime.run_container(&pod.uid, main).await.unwrap();
    let ContainerState::Running { pid: init } = started.state else {
        panic!("{started:?}")
    };
    let id = started.record.id.clone();
    let timeout = Duration::from_secs(10);

    // The pod's UTS namespace and /etc/hostname.
    let out = fx
        .runtime
        .exec(&id, argv(&["cat", "/etc/hostname"]), timeout)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec-web\n");
    let out = fx
        .runtime
        .exec(&id, argv(&["hostname"]), timeout)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec-web\n");

    // The container's environment, working directory and user; its PID
    // namespace (the container's init is pid 1); extra environment.
    let mut process = fx
        .runtime
        .exec_streaming(
            &id,
            ExecRequest {
                argv: argv(&[
                    "sh",
                    "-c",
                    "echo $GREETING $EXTRA; pwd; id -u; cat /proc/1/cmdline | tr '\\0' ' '",
                ]),
                env: vec![("EXTRA".into(), "more".into())],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pid = process.pid();
    let mut stdout = process.stdout.take().unwrap();
    let mut text = String::new();
    stdout.read_to_string(&mut text).await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..3], ["hello more", "/tmp", "1000"], "{text:?}");
    assert!(
        lines[3].contains("sleep 3600"),
        "pid 1 is not the container's: {text:?}"
    );
    assert_eq!(process.wait().await, 0);
    // Reaped: no zombie left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::metadata(format!("/proc/{pid}")).is_ok() {
        assert!(Instant::now() < deadline, "exec'd pid {pid} still exists");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Exit codes and stderr propagate.
    let out = fx
        .runtime
        .exec(&id, argv(&["sh", "-c", "echo oops >&2; exit 3"]), timeout)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert!(out.stdout.is_empty());
    let out = fx
        .runtime
        .exec(&id, argv(&["sh", "-c", "kill -9 $$"]), timeout)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 128 + 9);

    // Output is bounded.
    let out = fx
        .runtime
        .exec(
            &id,
            argv(&["sh", "-c", "head -c 200000 /dev/zero"]),
            timeout,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.len(), 64 * 1024);
    assert!(out.truncated);

    // A command that does not exist.
    let err = fx
        .runtime
        .exec(&id, argv(&["no-such-command"]), timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Start { .. }), "{err:?}");
    // The container is unharmed, and the execs left no files in
    // libcontainer's state directory.
    assert!(matches!(
        fx.runtime.container(&id).await.unwrap().state,
        ContainerState::Running { .. }
    ));
    let state_dir = fx.dir.path().join("run/libcontainer").join(&id);
    let names: Vec<String> = fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("tenant-")),
        "leftovers in {}: {names:?}",
        state_dir.display()
    );
    // The only process of the container's cgroup is its init again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cgroup::pids(&started.record.cgroups_path);
        if pids == vec![init] {
            break;
        }
        let cmdlines: Vec<String> = pids
            .iter()
            .map(|p| fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
            .collect();
        assert!(
            Instant::now() < deadline,
            "left in the container: {pids:?} {cmdlines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Not in an exited container.
    fx.runtime
        .stop_container(&id, Duration::ZERO)
        .await
        .unwrap();
    let err = fx
        .runtime
        .exec(&id, argv(&["true"]), timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::NotRunning(_)), "{err:?}");

    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert!(fx.leftovers(&pod.uid).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_timeout_kills_the_command_and_its_children() {
    let fx = Fixture::new();
    let pod = fx.pod("exec-hang").await;
    let started = fx
        .runtime
        .run_container(&pod.uid, sh("main", "sleep 3600"))
        .await
        .unwrap();
    let ContainerState::Running { pid: init } = started.state else {
        panic!("{started:?}")
    };
    let id = started.record.id.clone();
    let t0 = Instant::now();
    let err = fx
        .runtime
        .exec(
            &id,
            argv(&["sh", "-c", "sleep 1000 & sleep 1001; echo never"]),
            Duration::from_millis(700),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Timeout(_)), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // Nothing of the command is left in the container.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cgroup::pids(&started.record.cgroups_path);
        if pids == vec![init] {
            break;
        }
        assert!(Instant::now() < deadline, "left in the container: {pids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_streams_stdin_and_runs_on_a_terminal() {
    let fx = Fixture::new();
    let pod = fx.pod("exec-stream").await;
    let started = fx
        .runtime
        .run_container(&pod.uid, sh("main", "sleep 3600"))
        .await
        .unwrap();
    let id = started.record.id.clone();

    // Pipes: cat echoes what it is sent, and ends at end of input.
    let mut cat = fx
        .runtime
        .exec_streaming(
            &id,
            ExecRequest {
                argv: argv(&["cat"]),
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut stdin = cat.stdin.take().unwrap();
    let mut stdout = cat.stdout.take().unwrap();
    stdin.write_all(b"first line\n").await.unwrap();
    read_until(&mut stdout, "first line\n").await;
    stdin.write_all(b"second\n").await.unwrap();
    read_until(&mut stdout, "second\n").await;
    assert_eq!(cat.try_wait(), None);
    drop(stdin);
    let code = tokio::time::timeout(Duration::from_secs(10), cat.wait())
        .await
        .unwrap();
    assert_eq!(code, 0);

    // A terminal: the process sees a tty, input is echoed, and it resizes.
    let mut shell = fx
        .runtime
        .exec_streaming(
            &id,
            ExecRequest {
                argv: argv(&["sh", "-c", "tty; read line; echo got:$line; stty size"]),
                tty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(shell.stdout.is_none() && shell.stdin.is_none());
    let mut term = shell.terminal.take().unwrap();
    term.resize(100, 30).unwrap();
    let seen = read_until(&mut term, "/dev/pts/").await;
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    term.write_all(b"typed\n").await.unwrap();
    let seen = read_until(&mut term, "30 100").await;
    assert!(seen.contains("got:typed"), "{seen:?}");
    let code = tokio::time::timeout(Duration::from_secs(10), shell.wait())
        .await
        .unwrap();
    assert_eq!(code, 0);

    // Dropping a running process kills it.
    let sleeper = fx
        .runtime
        .exec_streaming(&id, ExecRequest::command(["sleep", "1000"]))
        .await
        .unwrap();
    let pid = sleeper.pid();
    drop(sleeper);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::metadata(format!("/proc/{pid}")).is_ok() {
        assert!(Instant::now() < deadline, "pid {pid} survived its drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fx.runtime
        .teardown_pod(&pod.uid, Duration::ZERO, true)
        .await
        .unwrap();
    assert!(fx.leftovers(&pod.uid).is_empty());
}
