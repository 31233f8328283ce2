//! `orchd` refuses bad input with one clear line and a non-zero exit,
//! leaving nothing behind and overwriting nothing: conflicting flags, an
//! unreachable `--join`, a port in use, a data dir of another cluster or
//! of something else.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use orch_tests::orchd::{free_port, Master};

const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");

fn orchd(args: &[&str]) -> Output {
    Command::new(ORCHD)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("orchd runs")
}

/// The error line `orchd` printed (logs may come before it; clap's own
/// errors end with a usage hint after it).
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "orchd succeeded: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("orchd: ") || l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"))
        .to_string()
}

fn server_args<'a>(dir: &'a str, api: &'a str, peer: &'a str) -> Vec<&'a str> {
    vec![
        "server",
        "--data-dir",
        dir,
        "--api-addr",
        api,
        "--peer-addr",
        peer,
        "--no-agent",
    ]
}

fn loopback_port() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn wrong_or_conflicting_flags_are_refused_before_anything_is_made() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    let dir_s = dir.to_str().unwrap();
    let (api, peer) = (loopback_port(), loopback_port());

    let mut args = server_args(dir_s, &api, &peer);
    args.extend(["--join", "127.0.0.1:1"]);
    let out = orchd(&args);
    let line = error_line(&out);
    assert!(line.contains("required"), "{line}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));

    let mut args = server_args(dir_s, &api, &peer);
    args.extend([
        "--heartbeat-interval-ms",
        "500",
        "--election-timeout-ms",
        "300",
    ]);
    let line = error_line(&orchd(&args));
    assert!(
        line.starts_with("orchd: ") && line.contains("--heartbeat-interval-ms"),
        "{line}"
    );

    let mut args = server_args(dir_s, &api, &peer);
    args.extend(["--token", "orch.not-a-token"]);
    let line = error_line(&orchd(&args));
    assert!(line.starts_with("orchd: "), "{line}");

    let line = error_line(&orchd(&[
        "status",
        "--data-dir",
        dir_s,
        "--kubeconfig",
        "/k",
    ]));
    assert!(line.contains("cannot be used with"), "{line}");
    assert!(!dir.exists(), "nothing is created for refused flags");
}

#[test]
fn an_unreachable_join_or_a_port_in_use_leaves_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    let dir_s = dir.to_str().unwrap();
    let (api, peer) = (loopback_port(), loopback_port());

    // Nobody listens at the --join address.
    let token = format!("orch.{}.{}", "ab".repeat(32), "cd".repeat(32));
    let nowhere = loopback_port();
    let mut args = server_args(dir_s, &api, &peer);
    args.extend(["--join", &nowhere, "--token", &token]);
    let line = error_line(&orchd(&args));
    assert!(
        line.starts_with("orchd: ") && line.contains(&nowhere),
        "{line}"
    );
    assert!(!dir.exists(), "a failed join leaves no data dir");

    // The API port is taken.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let line = error_line(&orchd(&server_args(dir_s, &taken_addr, &peer)));
    assert!(
        line.starts_with("orchd: ") && line.to_lowercase().contains("in use"),
        "{line}"
    );
    assert!(
        !dir.exists(),
        "a master that never started leaves no data dir"
    );
}

#[test]
fn a_data_dir_of_another_cluster_or_of_something_else_is_not_touched() {
    let root = tempfile::tempdir().unwrap();
    let first = Master::start(Path::new(ORCHD), &root.path().join("a"), None);
    let a_token = first.token();
    drop(first);
    let other = Master::start(Path::new(ORCHD), &root.path().join("b"), None);
    let b_token = other.token();

    // A's data dir, told to join B's cluster with B's token.
    let a_dir = root.path().join("a");
    let before = std::fs::read_to_string(a_dir.join("token")).unwrap();
    let mut args = server_args(a_dir.to_str().unwrap(), "127.0.0.1:0", "127.0.0.1:0");
    let join = other.join_address().to_string();
    args.extend(["--join", &join, "--token", &b_token]);
    let line = error_line(&orchd(&args));
    assert!(line.contains("another cluster"), "{line}");
    assert_eq!(
        std::fs::read_to_string(a_dir.join("token")).unwrap(),
        before
    );
    assert_eq!(before.trim(), a_token);

    // A directory that holds something else.
    let foreign = root.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
    let line = error_line(&orchd(&server_args(
        foreign.to_str().unwrap(),
        &loopback_port(),
        &loopback_port(),
    )));
    assert!(line.contains("not empty"), "{line}");
    assert_eq!(std::fs::read(foreign.join("cat.jpg")).unwrap(), b"meow");
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);
}
