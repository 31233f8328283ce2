//! `podstart-bench`: how fast a pod starts on this machine.
//!
//! Measures, in one run, with the busybox test image (built locally by
//! scripts/build-test-image) and `sleep 3600` as the container's command:
//!
//! - end to end: a pod created through the API (fsync on) until a watch
//!   sees it Running: admission, store, scheduler, bind, the agent's pull
//!   check, sandbox, overlay rootfs and libcontainer create+start, status
//!   write. One master in this process, one `orch-agent` process; pods one
//!   at a time.
//! - the agent's container start alone: `PodRuntime::run_container` into an
//!   existing sandbox (overlay rootfs, spec, libcontainer create+start).
//! - `runc run -d` and `crun run -d` (Debian's packages) of an equivalent
//!   bundle (the same rootfs, read-only; same command), each until the
//!   command returns with the container running. crun runs inside
//!   `unshare -m` with the cgroup v2 mount of this hybrid host unmounted,
//!   the only way it runs here; that `unshare` is outside the timing.
//!
//! Prints p50/p99 of each and their ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::Pod;
use orch_benches::quantile_ms;
use orch_core::controller::LoopSettings;
use orch_core::{ControlPlane, ControlPlaneConfig};
use orch_runtime::image::ImageStore;
use orch_runtime::pod::{cgroup, ContainerConfig, PodRuntime, RuntimeConfig, SandboxConfig};
use serde_json::json;

const IMAGE: &str = "busybox:latest";

#[derive(Parser)]
#[command(
    name = "podstart-bench",
    about = "Pod start latency: orch end to end, the agent's container start, runc, crun"
)]
struct Args {
    /// Pods (and containers) started per measurement.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Other runtimes to compare with: `crun`, `runc` (comma separated; empty for none).
    #[arg(long, default_value = "crun,runc", value_delimiter = ',')]
    compare: Vec<String>,
    /// Internal: run `--runs` containers of the bundle with this OCI
    /// runtime and print each latency in µs (used inside `unshare -m`).
    #[arg(long, hide = true)]
    child_runtime: Option<String>,
    /// Internal: the bundle of `--child-runtime`.
    #[arg(long, hide = true)]
    bundle: Option<PathBuf>,
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new(3).expect("histogram")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(d.as_micros().max(1) as u64);
}

/// Builds the test image layout and imports it into a store under `dir`.
fn image_store(dir: &Path) -> Result<ImageStore> {
    let layout = dir.join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image");
    let out = Command::new(&script)
        .arg(&layout)
        .output()
        .context("running scripts/build-test-image")?;
    if !out.status.success() {
        bail!("build-test-image: {}", String::from_utf8_lossy(&out.stderr));
    }
    let images = ImageStore::open(dir.join("images"))?;
    images.import_oci_layout(&layout, IMAGE)?;
    Ok(images)
}

fn sleeper(attempt: u32) -> ContainerConfig {
    ContainerConfig {
        name: "main".into(),
        image: IMAGE.into(),
        command: vec!["sleep".into(), "3600".into()],
        attempt,
        ..Default::default()
    }
}

/// The `orch-agent` binary next to this one, built if missing.
fn agent_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let binary = me.with_file_name("orch-agent");
    if !binary.exists() {
        let release = me
            .parent()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "release");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "-p", "orch-runtime", "--bin", "orch-agent"]);
        if release {
            build.arg("--release");
        }
        if !build.status()?.success() {
            bail!("building orch-agent failed");
        }
    }
    Ok(binary)
}

/// The agent's container start alone, into a fresh sandbox each time.
async fn runtime_alone(dir: &Path, images: ImageStore, runs: usize) -> Result<Histogram<u64>> {
    let runtime = PodRuntime::start(
        RuntimeConfig {
            state_dir: dir.join("run"),
            data_dir: dir.join("data"),
            log_dir: dir.join("logs"),
            cgroup_parent: format!("orch-bench-{}", std::process::id()),
        },
        images,
    )?;
    let mut h = histogram();
    for i in 0..runs {
        let uid = format!("bench-{}-{i}", std::process::id());
        runtime
            .create_sandbox(SandboxConfig {
                uid: uid.clone(),
                name: format!("p{i}"),
                namespace: "bench".into(),
            })
            .await?;
        let started = Instant::now();
        runtime.run_container(&uid, sleeper(0)).await?;
        record(&mut h, started.elapsed());
        runtime.teardown_pod(&uid, Duration::ZERO, true).await?;
    }
    cgroup::remove_tree(Path::new(&runtime.config().cgroup_parent))?;
    Ok(h)
}

/// An OCI bundle equivalent to what the agent runs: the image's layers as
/// one read-only rootfs directory, `sleep 3600`, the runtime's default
/// namespaces and mounts (`runc spec`).
fn bundle(dir: &Path, images: &ImageStore) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    for layer in images.lower_dirs(IMAGE)?.iter().rev() {
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", layer.display()))
            .arg(bundle.join("rootfs"))
            .status()?;
        if !status.success() {
            bail!("copying layer {}", layer.display());
        }
    }
    let status = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .context("runc spec (Debian package runc)")?;
    if !status.success() {
        bail!("runc spec failed");
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["sleep", "3600"]);
    spec["root"]["readonly"] = json!(true);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

/// Runs `runs` containers of `bundle` with `runtime run -d`, timing each
/// until the command returns, deleting each after. Latencies in µs.
fn oci_runs(runtime: &str, bundle: &Path, runs: usize) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for i in 0..runs {
        let id = format!("orch-bench-{}-{runtime}-{i}", std::process::id());
        let started = Instant::now();
        let status = Command::new(runtime)
            .args(["run", "-d", &id])
            .current_dir(bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        let took = started.elapsed();
        if !status.success() {
            bail!("{runtime} run failed");
        }
        out.push(took.as_micros() as u64);
        let _ = Command::new(runtime).args(["delete", "-f", &id]).status();
    }
    Ok(out)
}

/// `runtime`'s latencies: runc directly, crun in a mount namespace without
/// the unified cgroup mount (by running this binary again there).
fn compare(runtime: &str, bundle: &Path, runs: usize) -> Result<Histogram<u64>> {
    let micros = if runtime == "crun" {
        let me = std::env::current_exe()?;
        let script = format!(
            "umount /sys/fs/cgroup/unified 2>/dev/null; exec {} --child-runtime crun --bundle {} --runs {runs}",
            me.display(),
            bundle.display()
        );
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .output()
            .context("unshare")?;
        if !out.status.success() {
            bail!("crun runs failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    } else {
        oci_runs(runtime, bundle, runs)?
    };
    let mut h = histogram();
    for m in micros {
        let _ = h.record(m.max(1));
    }
    Ok(h)
}

/// Pods created through the API until a watch sees them Running, one at a
/// time, with one master and one agent in this process.
async fn end_to_end(dir: &Path, runs: usize) -> Result<Histogram<u64>> {
    let mut config = ControlPlaneConfig::local(1, dir.join("master"));
    config.loops = Some(LoopSettings::default());
    let plane = ControlPlane::start_single(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = plane.client();
    // The agent runs as a process of its own: a process that has loaded
    // RocksDB cannot create containers (libcontainer's intermediate process
    // leaves through exit(), whose RocksDB atexit handler waits for threads
    // the clone does not have).
    let node_dir = dir.join("node");
    std::fs::create_dir_all(&node_dir)?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let mut agent = Command::new(agent_binary()?)
        .args([
            "--server",
            &plane.api.addr.to_string(),
            "--node-name",
            "bench-node",
            "--port",
            "0",
        ])
        .arg("--data-dir")
        .arg(&node_dir)
        .arg("--import-image")
        .arg(format!("{}={IMAGE}", dir.join("layout").display()))
        .args([
            "--cgroup-parent",
            &format!("orch-bench-e2e-{}", std::process::id()),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting orch-agent")?;
    // Wait for the node to register and be schedulable.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let node = client
            .get::<k8s_openapi::api::core::v1::Node>(None, "bench-node")
            .await
            .ok();
        let ready = node
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("the node did not become Ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, rv) = client
        .list::<Pod>(Some("default"), None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut events = Box::pin(
        client
            .watch::<Pod>(Some("default"), &rv)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let mut h = histogram();
    for i in 0..runs {
        let name = format!("start-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }]},
        }))?;
        let started = Instant::now();
        client
            .create(Some("default"), &pod)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        loop {
            let Some(event) = tokio::time::timeout(Duration::from_secs(30), events.next())
                .await
                .context("pod start timed out")?
            else {
                bail!("watch ended");
            };
            let (_, seen) = event.map_err(|e| anyhow::anyhow!("{e}"))?;
            let running = seen.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && seen.metadata.name.as_deref() == Some(name.as_str()) {
                break;
            }
        }
        record(&mut h, started.elapsed());
    }
    // Tear down: delete every pod and wait until the agent removed them.
    for i in 0..runs {
        let _ = client
            .delete::<Pod>(Some("default"), &format!("start-{i}"))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (left, _) = client
            .list::<Pod>(Some("default"), None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Force-deleted pods leave the API at once; the agent tears them down
    // after: wait until their cgroups are gone before stopping it.
    let parent = format!("orch-bench-e2e-{}", std::process::id());
    while Instant::now() < deadline {
        let pods_left = cgroup::existing_dirs(Path::new(&parent)).iter().any(|dir| {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.path().is_dir())
        });
        if !pods_left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = cgroup::remove_tree(Path::new(&format!("orch-bench-e2e-{}", std::process::id())));
    plane.shutdown().await;
    Ok(h)
}

fn line(name: &str, h: &Histogram<u64>, base: Option<&Histogram<u64>>) {
    let (p50, p99) = (quantile_ms(h, 0.5), quantile_ms(h, 0.99));
    let ratio = base
        .map(|b| {
            format!(
                "{:>8.2}x {:>8.2}x",
                p50 / quantile_ms(b, 0.5),
                p99 / quantile_ms(b, 0.99)
            )
        })
        .unwrap_or_default();
    println!("{name:<44} {p50:>9.1} {p99:>9.1} {ratio}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(runtime) = &args.child_runtime {
        let bundle = args.bundle.clone().context("--bundle")?;
        for micros in oci_runs(runtime, &bundle, args.runs)? {
            println!("{micros}");
        }
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let dir = tempfile::tempdir()?;
    let images = image_store(dir.path())?;
    println!(
        "podstart-bench setting: runs {}, image {IMAGE} (local, imagePullPolicy IfNotPresent), command `sleep 3600`, 1 master (in process) + 1 orch-agent process, fsync on, cores {}",
        args.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    // Containers in this process first: once RocksDB is loaded (the
    // master, below), this process can no longer create containers.
    let alone = runtime_alone(&dir.path().join("alone"), images.clone(), args.runs).await?;
    let mut peers = Vec::new();
    if !args.compare.iter().all(|c| c.is_empty()) {
        let bundle = bundle(dir.path(), &images)?;
        for runtime in args.compare.iter().filter(|c| !c.is_empty()) {
            peers.push((runtime.clone(), compare(runtime, &bundle, args.runs)?));
        }
    }
    let e2e = end_to_end(dir.path(), args.runs).await?;
    let base = peers
        .iter()
        .find(|(n, _)| n == "crun")
        .or(peers.first())
        .map(|(n, h)| (n.clone(), h));
    println!();
    println!(
        "{:<44} {:>9} {:>9} {}",
        "measurement",
        "p50 ms",
        "p99 ms",
        base.as_ref()
            .map(|(n, _)| format!("   p50/{n}   p99/{n}"))
            .unwrap_or_default()
    );
    let base_h = base.as_ref().map(|(_, h)| *h);
    line("orch end to end (API create -> Running)", &e2e, base_h);
    line("orch agent container start (libcontainer)", &alone, base_h);
    for (name, h) in &peers {
        line(&format!("{name} run -d"), h, base_h);
    }
    Ok(())
}
