//! What the pod runtime's integration tests share: a runtime over a
//! temporary directory with the busybox test image, cleaned up after a
//! failed test.

#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use orch_runtime::image::{mount_points, ImageStore};
use orch_runtime::pod::{cgroup, ContainerConfig, PodRuntime, RuntimeConfig, SandboxConfig};

pub const IMAGE: &str = "busybox:latest";

pub fn require_root() {
    assert!(
        fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
        "the pod tests need root (namespaces, cgroups, overlayfs mounts)"
    );
}

/// A runtime over a temporary directory with the busybox image imported.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub runtime: PodRuntime,
    pub pods: std::sync::Mutex<Vec<String>>,
}

impl Drop for Fixture {
    /// After a failed test, best effort: kill what runs in the test's pod
    /// cgroups, unmount what is mounted under its directory, remove the
    /// cgroups (a passing test has torn everything down itself).
    fn drop(&mut self) {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for uid in &pods {
            for dir in cgroup::existing_dirs(&cgroup::pod_path("orch", uid)) {
                cgroup::kill_tree(&dir);
            }
        }
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = mount_points(&info)
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for uid in &pods {
            let _ = cgroup::remove_tree(&cgroup::pod_path("orch", uid));
        }
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        require_root();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let out =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image"))
                .arg(&layout)
                .output()
                .expect("running scripts/build-test-image (see scripts/setup)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let images = ImageStore::open(dir.path().join("images")).unwrap();
        images.import_oci_layout(&layout, IMAGE).unwrap();
        let runtime = PodRuntime::start(Fixture::config(dir.path()), images).unwrap();
        Fixture {
            dir,
            runtime,
            pods: Default::default(),
        }
    }

    pub fn config(dir: &Path) -> RuntimeConfig {
        RuntimeConfig {
            state_dir: dir.join("run"),
            data_dir: dir.join("data"),
            log_dir: dir.join("logs"),
            cgroup_parent: "orch".to_string(),
        }
    }

    /// A new runtime over the same directories, as a restarted agent has.
    pub fn restart(&self) -> PodRuntime {
        let images = ImageStore::open(self.dir.path().join("images")).unwrap();
        PodRuntime::start(Fixture::config(self.dir.path()), images).unwrap()
    }

    pub async fn pod(&self, name: &str) -> SandboxConfig {
        let config = SandboxConfig {
            uid: format!("{name}-{}-{}", std::process::id(), rand_suffix()),
            name: name.to_string(),
            namespace: "default".to_string(),
        };
        self.pods.lock().unwrap().push(config.uid.clone());
        self.runtime.create_sandbox(config.clone()).await.unwrap();
        config
    }

    /// Everything the host holds for the pod: mounts under the test dir that
    /// mention it, its cgroup directories.
    pub fn leftovers(&self, uid: &str) -> Vec<String> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut left: Vec<String> = mount_points(&info)
            .filter(|m| m.starts_with(&root) && m.contains(uid))
            .map(|m| format!("mount {m}"))
            .collect();
        for dir in cgroup::existing_dirs(&cgroup::pod_path("orch", uid)) {
            left.push(format!("cgroup {}", dir.display()));
        }
        left
    }
}

pub fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn sh(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        name: name.to_string(),
        image: IMAGE.to_string(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Waits until the file contains `text`; returns the content.
pub async fn wait_for_log(path: &Path, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let content = fs::read_to_string(path).unwrap_or_default();
        if content.contains(text) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {text:?}; it has {content:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
