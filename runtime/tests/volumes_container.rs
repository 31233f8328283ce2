//! A real busybox container (scripts/build-test-image) reads a mounted
//! ConfigMap volume, finds it read-only, writes to a tmpfs emptyDir, and
//! sees a ConfigMap update arrive through `refresh`.
//!
//! The control plane runs in a child process (this test binary run again,
//! reached over HTTP as a remote agent reaches it): a process that has
//! opened a RocksDB store cannot run containers through libcontainer, whose
//! intermediate process leaves with `exit`, running RocksDB's `atexit`
//! handler, which joins background threads the clone does not have, and
//! hangs. Runs as root.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, Pod, PodSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orch_core::{Client, ControlPlane, ControlPlaneConfig};
use orch_runtime::agent::env::PodFacts;
use orch_runtime::agent::volumes::{self, VolumeConfig};
use orch_runtime::image::{mount_points, ImageStore};
use orch_runtime::pod::{ContainerConfig, PodRuntime, RuntimeConfig, SandboxConfig};

const NS: &str = "default";
const PLANE_DIR_VAR: &str = "ORCH_TEST_PLANE_DIR";

/// Not a test of its own: the control plane of the test below, when this
/// binary runs as its child process. Serves until its stdin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the control plane process of a_container_reads_its_config_map_volume_and_sees_updates"]
async fn control_plane_process() {
    let Ok(dir) = std::env::var(PLANE_DIR_VAR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut config = ControlPlaneConfig::local(1, dir.join("store"));
    config.loops = None;
    let plane = ControlPlane::start_single(config).await.unwrap();
    fs::write(dir.join("api-addr.tmp"), plane.api.addr.to_string()).unwrap();
    fs::rename(dir.join("api-addr.tmp"), dir.join("api-addr")).unwrap();
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0u8; 1])).await;
    plane.shutdown().await;
}

/// The control plane in a child process.
struct PlaneProcess {
    child: Child,
    client: Client,
}

impl PlaneProcess {
    fn start(dir: &Path) -> PlaneProcess {
        fs::create_dir_all(dir).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "control_plane_process",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(PLANE_DIR_VAR, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(addr) = fs::read_to_string(dir.join("api-addr")) {
                break addr;
            }
            assert!(Instant::now() < deadline, "the control plane did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        PlaneProcess {
            child,
            client: Client::http(addr),
        }
    }
}

impl Drop for PlaneProcess {
    /// Closes the child's stdin (it shuts down), kills it if it lingers.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        ..Default::default()
    }
}

fn config_map(content: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta("app-config"),
        data: Some(BTreeMap::from([(
            "app.conf".to_string(),
            content.to_string(),
        )])),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

async fn wait_for(path: &Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let content = fs::read_to_string(path).unwrap_or_default();
        if content.contains(text) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {text:?}: {content:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The busybox image in an image store, and a pod runtime over it.
fn node(dir: &Path) -> PodRuntime {
    let layout = dir.join("layout");
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
    let images = ImageStore::open(dir.join("images")).unwrap();
    images.import_oci_layout(&layout, "busybox:latest").unwrap();
    let config = RuntimeConfig {
        state_dir: dir.join("run"),
        data_dir: dir.join("data"),
        log_dir: dir.join("logs"),
        cgroup_parent: "orch".to_string(),
    };
    PodRuntime::start(config, images).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_reads_its_config_map_volume_and_sees_updates() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let plane = PlaneProcess::start(&tmp.path().join("plane"));
    let client = &plane.client;
    client.create(Some(NS), &config_map("v1")).await.unwrap();
    let runtime = node(tmp.path());

    let container = Container {
        name: "main".into(),
        volume_mounts: Some(vec![
            mount("config", "/etc/app"),
            mount("scratch", "/scratch"),
        ]),
        ..Default::default()
    };
    let uid = format!("reader-{}", std::process::id());
    let pod = Pod {
        metadata: ObjectMeta {
            uid: Some(uid.clone()),
            ..meta("reader")
        },
        spec: Some(PodSpec {
            volumes: Some(vec![
                Volume {
                    name: "config".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "app-config".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "scratch".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        medium: Some("Memory".into()),
                        size_limit: None,
                    }),
                    ..Default::default()
                },
            ]),
            containers: vec![container.clone()],
            ..Default::default()
        }),
        status: None,
    };
    let dir = tmp.path().join("data").join(&uid).join("volumes");
    let facts = PodFacts::default();
    let config = VolumeConfig::default();
    let prepared = volumes::prepare(client, &pod, &dir, &config, &facts)
        .await
        .unwrap();
    let sandbox = SandboxConfig {
        uid: uid.clone(),
        name: "reader".into(),
        namespace: NS.into(),
    };
    runtime.create_sandbox(sandbox).await.unwrap();
    let script = "echo start; cat /etc/app/app.conf; echo; \
                  touch /etc/app/x 2>/dev/null && echo writable || echo read-only; \
                  echo data > /scratch/f && cat /scratch/f; \
                  while true; do cat /etc/app/app.conf; echo; sleep 0.2; done";
    let spec = ContainerConfig {
        name: "main".into(),
        image: "busybox:latest".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        mounts: volumes::mounts_for(&container, &prepared).unwrap(),
        ..Default::default()
    };
    let started = runtime.run_container(&uid, spec).await.unwrap();
    let log = wait_for(&started.record.log_path, "data\nv1").await;
    assert!(log.starts_with("start\nv1\nread-only\ndata\n"), "{log:?}");
    assert_eq!(
        fs::read_to_string(dir.join("empty-dir/scratch/f")).unwrap(),
        "data\n",
        "the container wrote into the emptyDir on the host"
    );

    let mut cm: ConfigMap = client.get(Some(NS), "app-config").await.unwrap();
    cm.data = config_map("v2").data;
    client.replace(Some(NS), "app-config", &cm).await.unwrap();
    let refreshed = volumes::refresh(client, &pod, &prepared, &facts).await;
    assert_eq!(refreshed.updated, ["config"]);
    wait_for(&started.record.log_path, "v2").await;

    // The agent's order: containers gone, then the volumes, then the pod's
    // directories (which hold the volume directory here).
    runtime
        .stop_container(&started.record.id, Duration::ZERO)
        .await
        .unwrap();
    volumes::cleanup(&dir).unwrap();
    runtime
        .teardown_pod(&uid, Duration::ZERO, true)
        .await
        .unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = tmp.path().to_string_lossy().into_owned();
    let left: Vec<String> = mount_points(&info)
        .filter(|m| m.starts_with(&root))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}
