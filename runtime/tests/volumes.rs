//! Pod volumes and container environments against a real in-process
//! control plane: ConfigMaps and Secrets created through the API become
//! files on disk and environment variables, updates reach the files through
//! an atomic `..data` swap, tmpfs volumes are mounted and cleaned up. Runs
//! as root (tmpfs mounts). A real container reading such volumes is in
//! `volumes_container.rs` (it cannot share a process with RocksDB).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection,
    ConfigMapVolumeSource, Container, DownwardAPIProjection, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    HostPathVolumeSource, KeyToPath, ObjectFieldSelector, Pod, PodSpec, ProjectedVolumeSource,
    ResourceFieldSelector, ResourceRequirements, Secret, SecretEnvSource, SecretKeySelector,
    SecretProjection, SecretVolumeSource, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use orch_core::{Client, ControlPlane, ControlPlaneConfig};
use orch_runtime::agent::env::{container_env, PodFacts};
use orch_runtime::agent::volumes::{
    self, atomic, HostPathPolicy, PreparedVolumes, VolumeConfig, VolumeError,
};
use orch_runtime::image::mount_points;
use orch_runtime::pod::spec::BindMount;

const NS: &str = "default";

/// A control plane (API only, no loops) over a temporary directory.
struct Plane {
    dir: tempfile::TempDir,
    plane: Option<ControlPlane>,
    client: Client,
}

impl Plane {
    async fn start() -> Plane {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let mut config = ControlPlaneConfig::local(1, dir.path().join("store"));
        config.loops = None;
        let plane = ControlPlane::start_single(config).await.unwrap();
        let client = plane.client();
        Plane {
            dir,
            plane: Some(plane),
            client,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        fs::canonicalize(self.dir.path()).unwrap().join(rel)
    }

    async fn config_map(&self, name: &str, data: &[(&str, &str)]) -> ConfigMap {
        let cm = ConfigMap {
            metadata: meta(name),
            data: Some(strings(data)),
            ..Default::default()
        };
        self.client.create(Some(NS), &cm).await.unwrap()
    }

    async fn secret(&self, name: &str, data: &[(&str, &str)]) -> Secret {
        let secret = Secret {
            metadata: meta(name),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        self.client.create(Some(NS), &secret).await.unwrap()
    }

    async fn stop(mut self) {
        unmount_all(self.dir.path());
        if let Some(plane) = self.plane.take() {
            plane.shutdown().await;
        }
    }
}

impl Drop for Plane {
    /// After a failed test, best effort: unmount what it left mounted.
    fn drop(&mut self) {
        unmount_all(self.dir.path());
    }
}

/// Unmounts everything under `dir`, deepest first.
fn unmount_all(dir: &Path) {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut points: Vec<PathBuf> = mounts_under(&dir).into_iter().map(|(p, _)| p).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        ..Default::default()
    }
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(name: &str, volumes: Vec<Volume>, containers: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            uid: Some(format!("uid-{name}")),
            labels: Some(strings(&[("app", name), ("tier", "web")])),
            ..meta(name)
        },
        spec: Some(PodSpec {
            volumes: Some(volumes),
            containers,
            node_name: Some("node-1".into()),
            ..Default::default()
        }),
        status: None,
    }
}

fn config_map_volume(name: &str, cm: &str, items: Option<Vec<KeyToPath>>) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: cm.into(),
            items,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn key(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        mode,
    }
}

fn field(path: &str, field_path: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector {
            field_path: field_path.into(),
            api_version: None,
        }),
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

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Mount points under `dir`, with their file system types.
fn mounts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            let point = mount_points(line).next()?;
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?.to_string();
            Path::new(&point)
                .starts_with(dir)
                .then(|| (PathBuf::from(point), fstype))
        })
        .collect()
}

/// Every kind of volume of the pod "web", its ConfigMap and Secret.
async fn web_pod(plane: &Plane) -> Pod {
    plane
        .config_map("app-config", &[("app.conf", "level=1"), ("motd", "hello")])
        .await;
    plane
        .secret("db", &[("password", "s3cret"), ("user", "admin")])
        .await;
    let volumes = vec![
        config_map_volume("config", "app-config", None),
        config_map_volume(
            "picked",
            "app-config",
            Some(vec![key("app.conf", "conf/app.conf", Some(0o600))]),
        ),
        Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("db".into()),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "info".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    field("labels", "metadata.labels"),
                    field("name", "metadata.name"),
                    field("ns", "metadata.namespace"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "all-in-one".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "app-config".into(),
                            items: Some(vec![key("app.conf", "app.conf", None)]),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        secret: Some(SecretProjection {
                            name: "db".into(),
                            items: Some(vec![key("user", "db/user", None)]),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![field("pod", "metadata.name")]),
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "fast".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("16Mi".into())),
            }),
            ..Default::default()
        },
        Volume {
            name: "host".into(),
            host_path: Some(HostPathVolumeSource {
                path: plane.path("host/shared").display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        },
    ];
    let main = Container {
        name: "main".into(),
        volume_mounts: Some(vec![
            mount("config", "/etc/app"),
            VolumeMount {
                sub_path: Some("motd".into()),
                ..mount("config", "/etc/motd")
            },
            mount("creds", "/var/run/secrets/db"),
            mount("scratch", "/scratch"),
            VolumeMount {
                read_only: Some(true),
                ..mount("host", "/host")
            },
        ]),
        ..Default::default()
    };
    pod("web", volumes, vec![main])
}

async fn prepare(plane: &Plane, pod: &Pod) -> Result<PreparedVolumes, VolumeError> {
    let config = VolumeConfig {
        host_paths: HostPathPolicy::default().deny(plane.path("pods")),
        ..Default::default()
    };
    let dir = plane.path("pods/uid-web/volumes");
    volumes::prepare(&plane.client, pod, &dir, &config, &PodFacts::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_hold_the_objects_files_and_follow_their_updates() {
    let plane = Plane::start().await;
    let pod = web_pod(&plane).await;
    let prepared = prepare(&plane, &pod).await.unwrap();
    let dir = plane.path("pods/uid-web/volumes");
    assert_eq!(prepared.dir, dir);

    // configMap: every key a file, through `name -> ..data/name` links.
    let config = dir.join("configmap/config");
    assert_eq!(prepared.volumes["config"].path, config);
    assert_eq!(read(&config.join("app.conf")), "level=1");
    assert_eq!(read(&config.join("motd")), "hello");
    assert_eq!(
        fs::read_link(config.join("app.conf")).unwrap(),
        Path::new("..data/app.conf")
    );
    assert_eq!(mode(&config.join("app.conf")), 0o644);
    // items: only the listed key, at its path, with its mode.
    let picked = dir.join("configmap/picked");
    assert_eq!(read(&picked.join("conf/app.conf")), "level=1");
    assert_eq!(mode(&picked.join("conf/app.conf")), 0o600);
    assert!(!picked.join("motd").exists());
    // secret: decoded, defaultMode, on a tmpfs.
    let creds = dir.join("secret/creds");
    assert_eq!(read(&creds.join("password")), "s3cret");
    assert_eq!(mode(&creds.join("password")), 0o400);
    // downwardAPI.
    let info = dir.join("downward-api/info");
    assert_eq!(read(&info.join("labels")), "app=\"web\"\ntier=\"web\"");
    assert_eq!(read(&info.join("name")), "web");
    assert_eq!(read(&info.join("ns")), "default");
    // projected: three sources in one directory.
    let all = dir.join("projected/all-in-one");
    assert_eq!(read(&all.join("app.conf")), "level=1");
    assert_eq!(read(&all.join("db/user")), "admin");
    assert_eq!(read(&all.join("pod")), "web");
    // emptyDirs and the hostPath.
    assert!(dir.join("empty-dir/scratch").is_dir());
    assert_eq!(mode(&dir.join("empty-dir/scratch")), 0o777);
    assert!(plane.path("host/shared").is_dir());
    assert_eq!(prepared.volumes["host"].path, plane.path("host/shared"));
    let mut tmpfs: Vec<PathBuf> = mounts_under(&dir)
        .into_iter()
        .filter(|(_, t)| t == "tmpfs")
        .map(|(p, _)| p)
        .collect();
    tmpfs.sort();
    assert_eq!(
        tmpfs,
        [
            dir.join("empty-dir/fast"),
            dir.join("projected/all-in-one"),
            dir.join("secret/creds")
        ]
    );
    let fast = nix::sys::statvfs::statvfs(&dir.join("empty-dir/fast")).unwrap();
    assert_eq!(fast.blocks() * fast.fragment_size(), 16 << 20);

    // The container's mounts: read-only for file volumes and where asked.
    let mounts = volumes::mounts_for(&pod.spec.as_ref().unwrap().containers[0], &prepared).unwrap();
    let bind = |source: PathBuf, destination: &str, read_only| BindMount {
        source,
        destination: destination.into(),
        read_only,
    };
    let version = atomic::current_version(&config).unwrap();
    assert_eq!(
        mounts,
        [
            bind(dir.join("empty-dir/scratch"), "/scratch", false),
            bind(plane.path("host/shared"), "/host", true),
            bind(config.clone(), "/etc/app", true),
            bind(config.join(&version).join("motd"), "/etc/motd", true),
            bind(creds.clone(), "/var/run/secrets/db", true),
        ]
    );

    // Preparing again (an agent restart) keeps emptyDir data and mounts
    // nothing twice.
    fs::write(dir.join("empty-dir/fast/kept"), "x").unwrap();
    let again = prepare(&plane, &pod).await.unwrap();
    assert_eq!(again, prepared);
    assert_eq!(read(&dir.join("empty-dir/fast/kept")), "x");
    assert_eq!(mounts_under(&dir).len(), 3);

    // Nothing changed: refresh writes nothing.
    let facts = PodFacts::default();
    let refreshed = volumes::refresh(&plane.client, &pod, &prepared, &facts).await;
    assert!(refreshed.updated.is_empty() && refreshed.failed.is_empty());

    // An update of the ConfigMap reaches every volume built from it.
    let mut cm: ConfigMap = plane.client.get(Some(NS), "app-config").await.unwrap();
    cm.data = Some(strings(&[("app.conf", "level=2")]));
    plane
        .client
        .replace(Some(NS), "app-config", &cm)
        .await
        .unwrap();
    let refreshed = volumes::refresh(&plane.client, &pod, &prepared, &facts).await;
    assert!(refreshed.failed.is_empty(), "{:?}", refreshed.failed);
    assert_eq!(refreshed.updated, ["config", "picked", "all-in-one"]);
    let new_version = atomic::current_version(&config).unwrap();
    assert_ne!(new_version, version, "..data points to a new version");
    assert!(!config.join(&version).exists(), "the old version is gone");
    assert_eq!(read(&config.join("app.conf")), "level=2");
    assert!(
        !config.join("motd").exists(),
        "a removed key's link is gone"
    );
    assert_eq!(read(&picked.join("conf/app.conf")), "level=2");
    assert_eq!(read(&all.join("app.conf")), "level=2");
    assert_eq!(read(&all.join("db/user")), "admin");

    // The ConfigMap deleted: refresh fails for its volumes, which keep
    // their files.
    plane
        .client
        .delete::<ConfigMap>(Some(NS), "app-config")
        .await
        .unwrap();
    let refreshed = volumes::refresh(&plane.client, &pod, &prepared, &facts).await;
    assert!(refreshed.updated.is_empty());
    let failures: Vec<String> = refreshed.failed.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        failures,
        [
            "MountVolume.SetUp failed for volume \"config\" : configmap \"app-config\" not found",
            "MountVolume.SetUp failed for volume \"picked\" : configmap \"app-config\" not found",
            "MountVolume.SetUp failed for volume \"all-in-one\" : configmap \"app-config\" not found",
        ]
    );
    assert_eq!(read(&config.join("app.conf")), "level=2");

    // Cleanup unmounts the tmpfs volumes and removes everything, twice.
    volumes::cleanup(&dir).unwrap();
    assert_eq!(mounts_under(&dir), []);
    assert!(!dir.exists());
    volumes::cleanup(&dir).unwrap();
    assert!(plane.path("host/shared").is_dir(), "hostPaths stay");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_failures_read_like_the_kubelets() {
    let plane = Plane::start().await;
    plane.config_map("present", &[("a", "1")]).await;
    let dir = plane.path("pods/uid-bad/volumes");
    let config = VolumeConfig {
        host_paths: HostPathPolicy::default().deny(plane.path("pods")),
        ..Default::default()
    };
    let try_volume = |volume: Volume| {
        let pod = pod("bad", vec![volume], Vec::new());
        let (client, dir, config) = (plane.client.clone(), dir.clone(), config.clone());
        async move {
            volumes::prepare(&client, &pod, &dir, &config, &PodFacts::default())
                .await
                .map_err(|e| e.to_string())
        }
    };

    let err = try_volume(config_map_volume("cfg", "app-config", None))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"app-config\" not found"
    );
    let mut optional = config_map_volume("cfg", "app-config", None);
    optional.config_map.as_mut().unwrap().optional = Some(true);
    let prepared = try_volume(optional).await.unwrap();
    let names: Vec<_> = fs::read_dir(&prepared.volumes["cfg"].path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("..2"))
        .collect();
    assert_eq!(names, ["..data"], "an optional missing ConfigMap is empty");

    let err = try_volume(config_map_volume(
        "cfg",
        "present",
        Some(vec![key("nope", "x", None)]),
    ))
    .await
    .unwrap_err();
    assert_eq!(
        err,
        "MountVolume.SetUp failed for volume \"cfg\" : configmap references non-existent config key: nope"
    );

    let secret = Volume {
        name: "sec".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some("missing".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        try_volume(secret).await.unwrap_err(),
        "MountVolume.SetUp failed for volume \"sec\" : secret \"missing\" not found"
    );

    let host = |path: &str, kind: Option<&str>| Volume {
        name: "host".into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: kind.map(Into::into),
        }),
        ..Default::default()
    };
    assert_eq!(
        try_volume(host("/proc/1/root", None)).await.unwrap_err(),
        "MountVolume.SetUp failed for volume \"host\" : hostPath /proc/1/root is not allowed: /proc is denied"
    );
    let agent_dir = plane.path("pods/other-pod");
    let err = try_volume(host(agent_dir.to_str().unwrap(), None))
        .await
        .unwrap_err();
    assert!(err.contains("is not allowed"), "{err}");
    assert!(!agent_dir.exists(), "nothing is created where it is denied");
    let err = try_volume(host("/", None)).await.unwrap_err();
    assert!(
        err.contains("it contains /dev, which is denied")
            || err.contains("it contains /proc, which is denied"),
        "{err}"
    );
    let file = plane.path("a-file");
    fs::write(&file, "").unwrap();
    assert_eq!(
        try_volume(host(file.to_str().unwrap(), Some("Directory")))
            .await
            .unwrap_err(),
        format!(
            "MountVolume.SetUp failed for volume \"host\" : hostPath type check failed: {} is not a directory",
            file.display()
        )
    );
    volumes::cleanup(&dir).unwrap();
    plane.stop().await;
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(source),
    }
}

fn cm_key(name: &str, key: &str, optional: Option<bool>) -> EnvVarSource {
    EnvVarSource {
        config_map_key_ref: Some(ConfigMapKeySelector {
            name: name.into(),
            key: key.into(),
            optional,
        }),
        ..Default::default()
    }
}

fn secret_key(name: &str, key: &str) -> EnvVarSource {
    EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name: name.into(),
            key: key.into(),
            optional: None,
        }),
        ..Default::default()
    }
}

fn field_ref(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            api_version: None,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_environments_resolve_like_the_kubelets() {
    let plane = Plane::start().await;
    plane
        .config_map("settings", &[("LOG_LEVEL", "debug"), ("URL", "http://api")])
        .await;
    plane.secret("token", &[("TOKEN", "abc")]).await;
    let container = Container {
        name: "main".into(),
        env_from: Some(vec![
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "settings".into(),
                    optional: None,
                }),
                ..Default::default()
            },
            EnvFromSource {
                prefix: Some("S_".into()),
                secret_ref: Some(SecretEnvSource {
                    name: "token".into(),
                    optional: None,
                }),
                ..Default::default()
            },
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "absent".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            },
        ]),
        env: Some(vec![
            env_var("HOST", "db"),
            env_var("DSN", "pg://$(HOST)/$(LOG_LEVEL)?a=$$(HOST)&b=$(LATER)"),
            env_var("LATER", "later"),
            env_var("LOG_LEVEL", "info"),
            env_from("POD", field_ref("metadata.name")),
            env_from("APP", field_ref("metadata.labels['app']")),
            env_from("NODE", field_ref("spec.nodeName")),
            env_from("IP", field_ref("status.podIP")),
            env_from(
                "MEM_MB",
                EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        resource: "limits.memory".into(),
                        divisor: Some(Quantity("1Mi".into())),
                        container_name: None,
                    }),
                    ..Default::default()
                },
            ),
            env_from("API", cm_key("settings", "URL", None)),
            env_from("PASS", secret_key("token", "TOKEN")),
            env_from("MAYBE", cm_key("settings", "NOPE", Some(true))),
        ]),
        resources: Some(ResourceRequirements {
            limits: Some([("memory".to_string(), Quantity("128Mi".into()))].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let env_pod = pod("env", Vec::new(), vec![container.clone()]);
    let facts = PodFacts {
        pod_ip: Some("10.1.2.3".into()),
        ..Default::default()
    };
    let env = container_env(&plane.client, &env_pod, &container, &facts)
        .await
        .unwrap();
    let expected: Vec<(String, String)> = [
        ("LOG_LEVEL", "info"),
        ("URL", "http://api"),
        ("S_TOKEN", "abc"),
        ("HOST", "db"),
        ("DSN", "pg://db/debug?a=$(HOST)&b=$(LATER)"),
        ("LATER", "later"),
        ("POD", "env"),
        ("APP", "env"),
        ("NODE", "node-1"),
        ("IP", "10.1.2.3"),
        ("MEM_MB", "128"),
        ("API", "http://api"),
        ("PASS", "abc"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, expected);

    let failing = |var: EnvVar| {
        let c = Container {
            name: "main".into(),
            env: Some(vec![var]),
            ..Default::default()
        };
        let pod = pod("env", Vec::new(), vec![c.clone()]);
        let client = plane.client.clone();
        async move {
            container_env(&client, &pod, &c, &PodFacts::default())
                .await
                .unwrap_err()
                .to_string()
        }
    };
    assert_eq!(
        failing(env_from("X", cm_key("settings", "nope", None))).await,
        "couldn't find key nope in ConfigMap default/settings"
    );
    assert_eq!(
        failing(env_from("X", cm_key("ghost", "k", None))).await,
        "configmap \"ghost\" not found"
    );
    assert_eq!(
        failing(env_from("X", secret_key("token", "nope"))).await,
        "couldn't find key nope in Secret default/token"
    );
    assert_eq!(
        failing(env_from("X", secret_key("ghost", "k"))).await,
        "secret \"ghost\" not found"
    );
    plane.stop().await;
}
