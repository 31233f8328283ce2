//! The README's quick start, as a new user runs it: `scripts/quickstart`
//! starts a single-node cluster with the busybox demo image, then plain
//! kubectl deploys and scales a busybox deployment.
//!
//! The script is given the orchd of this build (`ORCHD`, so it does not
//! build a release) and free ports; everything else is as in the README:
//! the default bridge, the embedded agent, the image built from Debian's
//! busybox-static.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use orch_tests::orchd::free_port;

const ORCHD: &str = env!("CARGO_BIN_EXE_orchd");

/// Stops the quick start's orchd when the test ends, however it ends.
struct Running {
    pid_file: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> Option<()>) {
    let deadline = Instant::now() + limit;
    while done().is_none() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn running_web_pods(kubeconfig: &Path) -> usize {
    let (_, out) = kubectl(
        kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
        ],
    );
    out.lines().filter(|l| *l == "Running").count()
}

#[test]
fn quick_start_deploys_and_scales_busybox() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("quickstart");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(repo.join("scripts/quickstart"))
        .arg(&data)
        .env("ORCHD", ORCHD)
        .env("ORCHD_API_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("ORCHD_PEER_ADDR", format!("127.0.0.1:{}", free_port()))
        .output()
        .expect("the quick start runs");
    let _running = Running {
        pid_file: data.with_extension("pid"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/quickstart failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
    );
    let kubeconfig = data.join("kubeconfig");
    assert!(
        stdout.contains(&format!("export KUBECONFIG={}", kubeconfig.display())),
        "{stdout}"
    );

    wait_for("the node to be Ready", Duration::from_secs(60), || {
        let (_, out) = kubectl(&kubeconfig, &["get", "nodes"]);
        out.contains(" Ready ").then_some(())
    });
    let (_, nodes) = kubectl(&kubeconfig, &["get", "nodes"]);
    assert!(
        nodes.contains("control-plane,master"),
        "the master's node shows its roles:
{nodes}"
    );
    let (ok, out) = kubectl(
        &kubeconfig,
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox:demo",
            "--replicas=3",
            "--",
            "sleep",
            "3600",
        ],
    );
    assert!(ok, "{out}");
    wait_for("3 pods Running", Duration::from_secs(90), || {
        (running_web_pods(&kubeconfig) == 3).then_some(())
    });
    let (ok, out) = kubectl(&kubeconfig, &["scale", "deployment", "web", "--replicas=5"]);
    assert!(ok && out.contains("scaled"), "{out}");
    wait_for("5 pods Running", Duration::from_secs(90), || {
        (running_web_pods(&kubeconfig) == 5).then_some(())
    });
    let (ok, out) = kubectl(
        &kubeconfig,
        &[
            "exec",
            "deploy/web",
            "--",
            "sh",
            "-c",
            "echo hello from $(hostname)",
        ],
    );
    assert!(ok && out.contains("hello from web-"), "{out}");

    // Leave nothing running: the pods go before orchd does (its agent
    // keeps pods running across its own stop).
    let (ok, out) = kubectl(&kubeconfig, &["delete", "deployment", "web"]);
    assert!(ok, "{out}");
    wait_for("the pods to be gone", Duration::from_secs(90), || {
        let (_, out) = kubectl(&kubeconfig, &["get", "pods", "-o", "name"]);
        out.trim().is_empty().then_some(())
    });
}
