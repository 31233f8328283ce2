//! Real node agents for tests: `orch-agent` processes (so a test can
//! SIGKILL one) over a temp data dir with the busybox test image imported,
//! each under a cgroup parent of its own. Dropping a [`TestNode`] kills its
//! agent and everything its pods left on the host.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use orch_runtime::image::{mount_points, ImageStore};
use orch_runtime::pod::cgroup;
use tempfile::TempDir;

use crate::api::TestApi;

/// Numbers the test nodes of this process.
static NEXT_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The image every test pod uses (imported into each node's store).
pub const IMAGE: &str = "busybox:latest";

/// The OCI layout of the busybox test image, built once per test process.
pub fn test_image_layout() -> &'static Path {
    static LAYOUT: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    &LAYOUT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let layout = dir.path().join("layout");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image");
            let out = Command::new(script)
                .arg(&layout)
                .output()
                .expect("running scripts/build-test-image (see scripts/setup)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            (dir, layout)
        })
        .1
}

/// The `orch-agent` binary of this build (`cargo test --workspace` builds
/// it with orch-runtime's tests; built here if it is missing).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let binary = target.join("orch-agent");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "orch-runtime", "--bin", "orch-agent"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building orch-agent failed");
    }
    binary
}

/// A node: an `orch-agent` process registered with a test control plane.
pub struct TestNode {
    /// The Node's name.
    pub name: String,
    /// The agent's data dir.
    pub dir: TempDir,
    /// The cgroup parent of its pods (unique per test node).
    pub cgroup_parent: String,
    server: String,
    netns: Option<String>,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl TestNode {
    /// Starts an agent named `name` for `api`, with a 1 s first restart
    /// back-off (Kubernetes' 10 s would make crash tests slow) and
    /// `extra_args`.
    pub fn start(api: &TestApi, name: &str, extra_args: &[&str]) -> TestNode {
        Self::start_at(api.addr.clone(), None, name, extra_args)
    }

    /// Starts an agent as [`TestNode::start`] does, but inside network
    /// namespace `netns` (`ip netns` name; only the network namespace
    /// changes, through `nsenter --net`), reaching the API at `server`.
    pub fn start_in_netns(server: &str, netns: &str, name: &str, extra_args: &[&str]) -> TestNode {
        Self::start_at(
            server.to_string(),
            Some(netns.to_string()),
            name,
            extra_args,
        )
    }

    fn start_at(
        server: String,
        netns: Option<String>,
        name: &str,
        extra_args: &[&str],
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let images = ImageStore::open(dir.path().join("images")).expect("image store");
        images
            .import_oci_layout(test_image_layout(), IMAGE)
            .expect("test image imports");
        let mut node = TestNode {
            name: name.to_string(),
            // Unique per node: tests of one process run in parallel, and a
            // node's teardown kills everything under its parent.
            cgroup_parent: format!(
                "orch-test-{}-{}-{name}",
                std::process::id(),
                NEXT_NODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            dir,
            server,
            netns,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        node.spawn();
        node
    }

    /// No pod network unless the test asks for one: test nodes share the
    /// host, and a bridge of their own is the network tests' business.
    fn network_args(&self) -> Vec<&'static str> {
        if self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--pod-network"))
        {
            Vec::new()
        } else {
            vec!["--pod-network", "none"]
        }
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(agent_binary());
                c
            }
            None => Command::new(agent_binary()),
        };
        let child = command
            .args(["--server", &self.server, "--node-name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--cgroup-parent", &self.cgroup_parent])
            .args(["--port", "0", "--restart-backoff-ms", "1000"])
            .args(self.network_args())
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("orch-agent starts");
        self.child = Some(child);
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Kills the agent with SIGKILL (its pods keep running).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again over the same data dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// What the host still holds for pods of this node: mounts under its
    /// data dir and cgroup directories under its parent.
    pub fn leftovers(&self) -> Vec<String> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut left: Vec<String> = mount_points(&info)
            .filter(|m| m.starts_with(&root))
            .collect();
        for dir in cgroup::existing_dirs(Path::new(&self.cgroup_parent)) {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    left.push(entry.path().display().to_string());
                }
            }
        }
        left
    }
}

impl Drop for TestNode {
    /// Kills the agent, every process of its pods, unmounts what is mounted
    /// under its data dir and removes its cgroups.
    fn drop(&mut self) {
        self.kill9();
        tear_down_node(&self.cgroup_parent, self.dir.path());
    }
}

/// Kills every process of the pods under `cgroup_parent`, unmounts what is
/// mounted under `data_dir` and removes the cgroups: what a test node
/// leaves once its agent is dead.
pub fn tear_down_node(cgroup_parent: &str, data_dir: &Path) {
    let parent = Path::new(cgroup_parent);
    for dir in cgroup::existing_dirs(parent) {
        cgroup::kill_tree(&dir);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = data_dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = mount_points(&info)
        .filter(|m| m.starts_with(&root))
        .collect();
    mounts.reverse();
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = cgroup::remove_tree(parent);
}
