//! `orchd --config FILE`: the real binary reads its flags from a TOML file.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orch_tests::orchd::free_port;

const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");

#[test]
fn unknown_key_fails_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("orchd.toml");
    fs::write(&config, "data-dir = \"/nonexistent\"\nno-such-flag = 1\n").expect("config");
    let out = Command::new(ORCHD)
        .arg("--config")
        .arg(&config)
        .arg("server")
        .env_remove("ORCHD_CONFIG")
        .output()
        .expect("orchd runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-flag"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
}

#[test]
fn server_starts_from_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("master");
    let api = format!("127.0.0.1:{}", free_port());
    let peer = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("orchd.toml");
    fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\napi-addr = \"{api}\"\npeer-addr = \"{peer}\"\nno-agent = true\n",
            data_dir.display()
        ),
    )
    .expect("config");
    let log = dir.path().join("orchd.log");
    let log_file = fs::File::create(&log).expect("log");
    let mut child = Command::new(ORCHD)
        .arg("--config")
        .arg(&config)
        .arg("server")
        .env_remove("ORCHD_CONFIG")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("orchd starts");
    let kubeconfig = data_dir.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = loop {
        if kubeconfig.exists() && std::net::TcpStream::connect(&api).is_ok() {
            break true;
        }
        if Instant::now() >= deadline || !matches!(child.try_wait(), Ok(None)) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        started,
        "orchd server did not start from {}:\n{}",
        config.display(),
        fs::read_to_string(&log).unwrap_or_default()
    );
}
