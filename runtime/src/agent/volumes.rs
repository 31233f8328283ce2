//! A pod's volumes on the host, prepared as the kubelet prepares them,
//! under a per-pod directory the agent chooses (e.g.
//! `<data>/<pod-uid>/volumes`):
//!
//! ```text
//! <dir>/empty-dir/<volume>      emptyDir (a tmpfs for medium: Memory)
//! <dir>/configmap/<volume>      configMap files    \
//! <dir>/secret/<volume>         secret files (tmpfs) | written atomically
//! <dir>/downward-api/<volume>   downwardAPI files    | (see [`atomic`])
//! <dir>/projected/<volume>      projected (tmpfs)  /
//! ```
//!
//! hostPath volumes stay where they are, checked against a
//! [`HostPathPolicy`]. Each container gets its volumes as bind mounts
//! ([`mounts_for`]); a whole volume directory is mounted, so
//! [`refresh`] updates of ConfigMaps and Secrets reach running containers
//! (a `subPath` mount pins one version, as in Kubernetes).
//!
//! Not supported: persistent volume claims and the other network and
//! cloud volume types (refused with an error), `subPathExpr`, projected
//! `serviceAccountToken` and `clusterTrustBundle` sources (skipped with a
//! warning: orch issues no service account tokens yet), fsGroup ownership,
//! emptyDir size limits on disk (only the tmpfs size is limited), hugepages.

pub mod atomic;
pub mod host_path;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume, VolumeMount,
    VolumeProjection,
};
use orch_core::{quantity, ApiError, Client};

use self::atomic::{AtomicWriteError, FileProjection, Payload};
pub use self::host_path::HostPathPolicy;
use super::env::{self, EnvError, PodFacts};
use crate::image::mount_points;
use crate::pod::spec::BindMount;

/// The permission bits of configMap, secret, downwardAPI and projected
/// files when the volume sets no `defaultMode`.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// The event reason the kubelet gives when a volume cannot be set up.
pub const MOUNT_FAILED_REASON: &str = "FailedMount";

/// How the agent prepares volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConfig {
    /// Which host paths hostPath volumes may name.
    pub host_paths: HostPathPolicy,
    /// Keep secret and projected volumes on a tmpfs, so secrets are never
    /// written to disk (as the kubelet does). Needs root.
    pub secrets_in_memory: bool,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            host_paths: HostPathPolicy::default(),
            secrets_in_memory: true,
        }
    }
}

/// Why a volume could not be prepared, refreshed, mounted or removed.
/// Set-up failures read as the kubelet's `FailedMount` events.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The volume's name cannot be a directory name (not a DNS label).
    #[error("volume name {volume:?} is not a DNS label")]
    InvalidName {
        /// The volume.
        volume: String,
    },
    /// The volume's type is one orch does not provide.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : volume type {kind} is not supported by orch")]
    Unsupported {
        /// The volume.
        volume: String,
        /// The type (`persistentVolumeClaim`, `emptyDir medium HugePages`).
        kind: String,
    },
    /// A hostPath the policy refuses.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : hostPath {} is not allowed: {reason}", path.display())]
    HostPathNotAllowed {
        /// The volume.
        volume: String,
        /// The host path (symlinks resolved).
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A hostPath that is invalid or fails its `type` check.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
    HostPathType {
        /// The volume.
        volume: String,
        /// The kubelet's message (`hostPath type check failed: ...`).
        message: String,
    },
    /// A non-optional ConfigMap does not exist.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : configmap \"{name}\" not found")]
    ConfigMapNotFound {
        /// The volume.
        volume: String,
        /// The ConfigMap.
        name: String,
    },
    /// A non-optional Secret does not exist.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : secret \"{name}\" not found")]
    SecretNotFound {
        /// The volume.
        volume: String,
        /// The Secret.
        name: String,
    },
    /// An item names a key the ConfigMap lacks (and it is not optional).
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : configmap references non-existent config key: {key}")]
    ConfigMapKeyMissing {
        /// The volume.
        volume: String,
        /// The key.
        key: String,
    },
    /// An item names a key the Secret lacks (and it is not optional).
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : references non-existent secret key: {key}")]
    SecretKeyMissing {
        /// The volume.
        volume: String,
        /// The key.
        key: String,
    },
    /// Reading a ConfigMap or Secret failed for another reason.
    #[error(
        "MountVolume.SetUp failed for volume \"{volume}\" : failed to get {kind} {name}: {source}"
    )]
    Fetch {
        /// The volume.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The API's error.
        #[source]
        source: Box<ApiError>,
    },
    /// A downwardAPI item cannot be resolved.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {source}")]
    DownwardApi {
        /// The volume.
        volume: String,
        /// What failed.
        #[source]
        source: EnvError,
    },
    /// A tmpfs `sizeLimit` that is not a quantity.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : invalid sizeLimit {value:?}")]
    InvalidSize {
        /// The volume.
        volume: String,
        /// The text.
        value: String,
    },
    /// Writing the volume's files failed.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {source}")]
    Write {
        /// The volume.
        volume: String,
        /// What failed.
        #[source]
        source: AtomicWriteError,
    },
    /// Creating a directory failed.
    #[error("creating {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Mounting a tmpfs failed.
    #[error("mounting a tmpfs on {}: {source}", path.display())]
    MountTmpfs {
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// A container's volumeMount names no volume of the pod.
    #[error("cannot find volume \"{volume}\" to mount into container \"{container}\"")]
    UnknownVolume {
        /// The container.
        container: String,
        /// The volume named.
        volume: String,
    },
    /// A volumeMount's `subPath` is invalid, missing or escapes the volume.
    #[error("container \"{container}\": subPath {sub_path:?} of volume \"{volume}\": {reason}")]
    SubPath {
        /// The container.
        container: String,
        /// The volume.
        volume: String,
        /// The subPath.
        sub_path: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading `/proc/self/mountinfo` failed.
    #[error("reading /proc/self/mountinfo: {0}")]
    ReadMounts(#[source] io::Error),
    /// Unmounting failed.
    #[error("unmounting {}: {source}", path.display())]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// Removing the pod's volume directory failed.
    #[error("removing {}: {source}", path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The type of a prepared volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// An emptyDir on the node's disk.
    EmptyDir,
    /// An emptyDir with `medium: Memory` (a tmpfs).
    MemoryEmptyDir,
    /// A host path.
    HostPath,
    /// ConfigMap files.
    ConfigMap,
    /// Secret files.
    Secret,
    /// Downward API files.
    DownwardApi,
    /// Projected files (ConfigMaps, Secrets, downward API in one).
    Projected,
}

impl VolumeKind {
    /// Whether containers always get the volume read-only.
    pub fn always_read_only(self) -> bool {
        matches!(
            self,
            Self::ConfigMap | Self::Secret | Self::DownwardApi | Self::Projected
        )
    }

    /// Whether the agent writes the volume's files (and [`refresh`]
    /// updates them).
    pub fn has_files(self) -> bool {
        self.always_read_only()
    }

    /// The directory of the pod's volume dir holding volumes of this type.
    fn dir_name(self) -> &'static str {
        match self {
            Self::EmptyDir | Self::MemoryEmptyDir => "empty-dir",
            Self::HostPath => "host-path",
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
            Self::DownwardApi => "downward-api",
            Self::Projected => "projected",
        }
    }
}

/// One volume of a pod, ready on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    /// The volume's name in the pod.
    pub name: String,
    /// Its type.
    pub kind: VolumeKind,
    /// The host path containers mount.
    pub path: PathBuf,
}

/// A pod's volumes, ready on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedVolumes {
    /// The pod's volume directory (symlinks resolved).
    pub dir: PathBuf,
    /// The volumes by name.
    pub volumes: BTreeMap<String, PreparedVolume>,
}

/// What a [`refresh`] did.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// The volumes whose files changed.
    pub updated: Vec<String>,
    /// The volumes that could not be refreshed (they keep their files).
    pub failed: Vec<VolumeError>,
}

/// Prepares every volume of `pod` under `dir`: creates emptyDirs (mounting
/// tmpfs ones), checks hostPaths, writes ConfigMap, Secret, downward API
/// and projected files. Idempotent: preparing again (after an agent
/// restart) keeps emptyDir contents and mounts nothing twice. On an error,
/// what was prepared stays; [`cleanup`] removes it.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    dir: &Path,
    config: &VolumeConfig,
    facts: &PodFacts,
) -> Result<PreparedVolumes, VolumeError> {
    make_dir(dir, 0o750)?;
    let dir = fs::canonicalize(dir).map_err(|source| VolumeError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut prepared = PreparedVolumes {
        dir,
        volumes: BTreeMap::new(),
    };
    for volume in pod_volumes(pod) {
        let ready = prepare_volume(client, pod, volume, &prepared.dir, config, facts).await?;
        prepared.volumes.insert(ready.name.clone(), ready);
    }
    tracing::debug!(pod = ?pod.metadata.name, volumes = prepared.volumes.len(), "volumes prepared");
    Ok(prepared)
}

/// Rewrites the files of the pod's ConfigMap, Secret, downward API and
/// projected volumes from the current objects (atomically, and only where
/// something changed). The agent calls it periodically or when a
/// ConfigMap, Secret or the pod's metadata changes.
pub async fn refresh(
    client: &Client,
    pod: &Pod,
    prepared: &PreparedVolumes,
    facts: &PodFacts,
) -> Refreshed {
    let mut result = Refreshed::default();
    for volume in pod_volumes(pod) {
        let Some(ready) = prepared.volumes.get(&volume.name) else {
            continue;
        };
        if !ready.kind.has_files() {
            continue;
        }
        match write_files(client, pod, volume, &ready.path, facts).await {
            Ok(true) => result.updated.push(volume.name.clone()),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(volume = %volume.name, error = %e, "volume not refreshed");
                result.failed.push(e);
            }
        }
    }
    result
}

/// The bind mounts of `container`'s volumeMounts (ordered so a mount
/// inside another comes after it). ConfigMap, Secret, downward API and
/// projected volumes are always read-only.
pub fn mounts_for(
    container: &Container,
    prepared: &PreparedVolumes,
) -> Result<Vec<BindMount>, VolumeError> {
    let mut mounts = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| mount_for(&container.name, m, prepared))
        .collect::<Result<Vec<_>, _>>()?;
    mounts.sort_by_key(|m| Path::new(&m.destination).components().count());
    Ok(mounts)
}

/// Unmounts every mount under the pod's volume directory (tmpfs volumes)
/// and removes it. Idempotent: a missing directory is fine.
///
/// Call it once the pod's containers are stopped and before
/// `PodRuntime::teardown_pod` when the directory is under the runtime's
/// data dir (`<data>/<uid>/volumes`): teardown removes `<data>/<uid>` and
/// would fail on a still-mounted tmpfs.
pub fn cleanup(dir: &Path) -> Result<(), VolumeError> {
    let dir = match fs::canonicalize(dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(VolumeError::Remove {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut mounted = mounts_under(&dir)?;
    mounted.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for path in mounted {
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|source| VolumeError::Unmount { path, source })?;
    }
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(VolumeError::Remove {
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    }
}

fn pod_volumes(pod: &Pod) -> impl Iterator<Item = &Volume> {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten())
}

async fn prepare_volume(
    client: &Client,
    pod: &Pod,
    volume: &Volume,
    dir: &Path,
    config: &VolumeConfig,
    facts: &PodFacts,
) -> Result<PreparedVolume, VolumeError> {
    let name = &volume.name;
    if !is_dns_label(name) {
        return Err(VolumeError::InvalidName {
            volume: name.clone(),
        });
    }
    let kind = kind_of(volume)?;
    let path = match kind {
        VolumeKind::HostPath => return prepare_host_path(volume, config),
        _ => dir.join(kind.dir_name()).join(name),
    };
    match kind {
        VolumeKind::EmptyDir => make_dir(&path, 0o777)?,
        VolumeKind::MemoryEmptyDir => {
            make_dir(&path, 0o777)?;
            mount_tmpfs(&path, tmpfs_size(volume)?)?;
        }
        _ => {
            make_dir(&path, 0o755)?;
            let memory = matches!(kind, VolumeKind::Secret | VolumeKind::Projected);
            if memory && config.secrets_in_memory {
                mount_tmpfs(&path, None)?;
            }
            write_files(client, pod, volume, &path, facts).await?;
        }
    }
    Ok(PreparedVolume {
        name: name.clone(),
        kind,
        path,
    })
}

/// The volume's type; a volume with no source is an emptyDir, as API
/// defaulting makes it.
fn kind_of(volume: &Volume) -> Result<VolumeKind, VolumeError> {
    if let Some(empty) = &volume.empty_dir {
        return match empty.medium.as_deref().unwrap_or("") {
            "" => Ok(VolumeKind::EmptyDir),
            "Memory" => Ok(VolumeKind::MemoryEmptyDir),
            other => Err(unsupported(volume, &format!("emptyDir medium {other}"))),
        };
    }
    let kinds = [
        (volume.host_path.is_some(), VolumeKind::HostPath),
        (volume.config_map.is_some(), VolumeKind::ConfigMap),
        (volume.secret.is_some(), VolumeKind::Secret),
        (volume.downward_api.is_some(), VolumeKind::DownwardApi),
        (volume.projected.is_some(), VolumeKind::Projected),
    ];
    if let Some((_, kind)) = kinds.iter().find(|(set, _)| *set) {
        return Ok(*kind);
    }
    let json = serde_json::to_value(volume).unwrap_or_default();
    match json
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "name"))
    {
        Some(other) => Err(unsupported(volume, other)),
        None => Ok(VolumeKind::EmptyDir),
    }
}

fn unsupported(volume: &Volume, kind: &str) -> VolumeError {
    VolumeError::Unsupported {
        volume: volume.name.clone(),
        kind: kind.to_string(),
    }
}

/// Resolves, checks against the policy, and type-checks a hostPath.
fn prepare_host_path(
    volume: &Volume,
    config: &VolumeConfig,
) -> Result<PreparedVolume, VolumeError> {
    let source = volume.host_path.as_ref().expect("a hostPath volume");
    let type_error = |message: String| VolumeError::HostPathType {
        volume: volume.name.clone(),
        message,
    };
    let refused = |path: &Path| {
        let reason = config.host_paths.refusal(path)?;
        Some(VolumeError::HostPathNotAllowed {
            volume: volume.name.clone(),
            path: path.to_path_buf(),
            reason,
        })
    };
    // The path as written first (resolving a path under /proc may fail),
    // then with symlinks resolved.
    let written = Path::new(&source.path);
    if let Some(e) = written.is_absolute().then(|| refused(written)).flatten() {
        return Err(e);
    }
    let path = host_path::resolve(written)
        .map_err(|e| type_error(format!("hostPath {:?}: {e}", source.path)))?;
    if let Some(e) = refused(&path) {
        return Err(e);
    }
    host_path::check_type(&path, source.type_.as_deref().unwrap_or("")).map_err(type_error)?;
    Ok(PreparedVolume {
        name: volume.name.clone(),
        kind: VolumeKind::HostPath,
        path,
    })
}

fn tmpfs_size(volume: &Volume) -> Result<Option<u64>, VolumeError> {
    let limit = volume
        .empty_dir
        .as_ref()
        .and_then(|e| e.size_limit.as_ref());
    let Some(limit) = limit else { return Ok(None) };
    let bytes = quantity::parse(&limit.0).ok_or_else(|| VolumeError::InvalidSize {
        volume: volume.name.clone(),
        value: limit.0.clone(),
    })?;
    Ok(Some(
        u64::try_from((bytes + 999) / 1000).unwrap_or(u64::MAX),
    ))
}

/// Builds the volume's files from the current objects and writes them if
/// they changed; returns whether they did.
async fn write_files(
    client: &Client,
    pod: &Pod,
    volume: &Volume,
    path: &Path,
    facts: &PodFacts,
) -> Result<bool, VolumeError> {
    let payload = payload_of(client, pod, volume, facts).await?;
    atomic::write(path, &payload).map_err(|source| VolumeError::Write {
        volume: volume.name.clone(),
        source,
    })
}

/// The files of a configMap, secret, downwardAPI or projected volume.
async fn payload_of(
    client: &Client,
    pod: &Pod,
    volume: &Volume,
    facts: &PodFacts,
) -> Result<Payload, VolumeError> {
    let ctx = Ctx {
        client,
        pod,
        volume: &volume.name,
    };
    if let Some(src) = &volume.config_map {
        let mode = mode_or_default(src.default_mode);
        let optional = src.optional == Some(true);
        return ctx
            .config_map_files(&src.name, src.items.as_deref(), optional, mode)
            .await;
    }
    if let Some(src) = &volume.secret {
        let mode = mode_or_default(src.default_mode);
        let name = src.secret_name.as_deref().unwrap_or("");
        let optional = src.optional == Some(true);
        return ctx
            .secret_files(name, src.items.as_deref(), optional, mode)
            .await;
    }
    if let Some(src) = &volume.downward_api {
        let mode = mode_or_default(src.default_mode);
        return ctx.downward_files(src.items.as_deref().unwrap_or_default(), mode, facts);
    }
    if let Some(src) = &volume.projected {
        let mode = mode_or_default(src.default_mode);
        let sources = src.sources.as_deref().unwrap_or_default();
        return ctx.projected_files(sources, mode, facts).await;
    }
    Ok(Payload::new())
}

/// What payload builders need to know.
struct Ctx<'a> {
    client: &'a Client,
    pod: &'a Pod,
    volume: &'a str,
}

impl Ctx<'_> {
    async fn config_map_files(
        &self,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: bool,
        mode: u32,
    ) -> Result<Payload, VolumeError> {
        let namespace = env::namespace_of(self.pod);
        let found = env::fetch::<ConfigMap>(self.client, namespace, name)
            .await
            .map_err(|source| self.fetch_error("configmap", name, source))?;
        let Some(cm) = found else {
            return match optional {
                true => Ok(Payload::new()),
                false => Err(VolumeError::ConfigMapNotFound {
                    volume: self.volume.into(),
                    name: name.into(),
                }),
            };
        };
        key_files(env::config_map_entries(&cm), items, mode, optional).map_err(|key| {
            VolumeError::ConfigMapKeyMissing {
                volume: self.volume.into(),
                key,
            }
        })
    }

    async fn secret_files(
        &self,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: bool,
        mode: u32,
    ) -> Result<Payload, VolumeError> {
        let namespace = env::namespace_of(self.pod);
        let found = env::fetch::<Secret>(self.client, namespace, name)
            .await
            .map_err(|source| self.fetch_error("secret", name, source))?;
        let Some(secret) = found else {
            return match optional {
                true => Ok(Payload::new()),
                false => Err(VolumeError::SecretNotFound {
                    volume: self.volume.into(),
                    name: name.into(),
                }),
            };
        };
        key_files(env::secret_entries(&secret), items, mode, optional).map_err(|key| {
            VolumeError::SecretKeyMissing {
                volume: self.volume.into(),
                key,
            }
        })
    }

    fn downward_files(
        &self,
        items: &[DownwardAPIVolumeFile],
        mode: u32,
        facts: &PodFacts,
    ) -> Result<Payload, VolumeError> {
        downward_files(self.pod, items, mode, facts).map_err(|source| VolumeError::DownwardApi {
            volume: self.volume.into(),
            source,
        })
    }

    /// All sources in one payload; a later source's file replaces an
    /// earlier one's at the same path.
    async fn projected_files(
        &self,
        sources: &[VolumeProjection],
        mode: u32,
        facts: &PodFacts,
    ) -> Result<Payload, VolumeError> {
        let mut payload = Payload::new();
        for source in sources {
            if let Some(cm) = &source.config_map {
                let optional = cm.optional == Some(true);
                let items = cm.items.as_deref();
                payload.extend(
                    self.config_map_files(&cm.name, items, optional, mode)
                        .await?,
                );
            }
            if let Some(s) = &source.secret {
                let optional = s.optional == Some(true);
                let items = s.items.as_deref();
                payload.extend(self.secret_files(&s.name, items, optional, mode).await?);
            }
            if let Some(d) = &source.downward_api {
                let items = d.items.as_deref().unwrap_or_default();
                payload.extend(self.downward_files(items, mode, facts)?);
            }
            if source.service_account_token.is_some() || source.cluster_trust_bundle.is_some() {
                tracing::warn!(volume = %self.volume, "projected source skipped: orch issues no service account tokens or trust bundles yet");
            }
        }
        Ok(payload)
    }

    fn fetch_error(&self, kind: &'static str, name: &str, source: ApiError) -> VolumeError {
        VolumeError::Fetch {
            volume: self.volume.into(),
            kind,
            name: name.into(),
            source: Box::new(source),
        }
    }
}

/// A `defaultMode`'s permission bits, or [`DEFAULT_FILE_MODE`].
fn mode_or_default(mode: Option<i32>) -> u32 {
    mode.map_or(DEFAULT_FILE_MODE, |m| m as u32 & 0o777)
}

/// The files of a ConfigMap's or Secret's entries: every key as a file of
/// its name, or only the `items` (key -> path, with their own modes). Errs
/// with the key an item names that the entries lack, unless `optional`.
pub fn key_files(
    mut entries: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, String> {
    let file = |data, mode: Option<i32>| FileProjection {
        data,
        mode: mode.map_or(default_mode, |m| m as u32 & 0o777),
    };
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(entries
            .into_iter()
            .map(|(k, v)| (k, file(v, None)))
            .collect());
    };
    let mut payload = Payload::new();
    for item in items {
        match entries.remove(&item.key) {
            Some(data) => {
                payload.insert(item.path.clone(), file(data, item.mode));
            }
            None if optional => {}
            None => return Err(item.key.clone()),
        }
    }
    Ok(payload)
}

/// The files of downwardAPI items: pod fields, or container resources
/// (whose `containerName` a volume must give).
pub fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    facts: &PodFacts,
) -> Result<Payload, EnvError> {
    let mut payload = Payload::new();
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            env::pod_field(pod, &field.field_path, facts)?
        } else if let Some(selector) = &item.resource_field_ref {
            let container = selector.container_name.as_deref().unwrap_or("");
            env::resource_field(pod, container, selector, facts)?
        } else {
            continue;
        };
        let mode = item.mode.map_or(default_mode, |m| m as u32 & 0o777);
        let data = value.into_bytes();
        payload.insert(item.path.clone(), FileProjection { data, mode });
    }
    Ok(payload)
}

fn mount_for(
    container: &str,
    mount: &VolumeMount,
    prepared: &PreparedVolumes,
) -> Result<BindMount, VolumeError> {
    let volume = prepared
        .volumes
        .get(&mount.name)
        .ok_or_else(|| VolumeError::UnknownVolume {
            container: container.into(),
            volume: mount.name.clone(),
        })?;
    let sub_path_error = |sub_path: &str, reason: String| VolumeError::SubPath {
        container: container.into(),
        volume: mount.name.clone(),
        sub_path: sub_path.into(),
        reason,
    };
    if let Some(expr) = mount.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
        return Err(sub_path_error(
            expr,
            "subPathExpr is not supported by orch".into(),
        ));
    }
    let source = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
        Some(sub) => sub_path_source(volume, sub).map_err(|r| sub_path_error(sub, r))?,
        None => volume.path.clone(),
    };
    Ok(BindMount {
        source,
        destination: mount.mount_path.clone(),
        read_only: volume.kind.always_read_only() || mount.read_only == Some(true),
    })
}

/// The host path of `sub` in the volume, symlinks resolved, which must stay
/// inside the volume. A missing subPath of an emptyDir or hostPath is
/// created as a directory (with the volume's mode), as the kubelet does.
///
/// The check happens before the container is created: a container that
/// can write to the volume and swaps in a symlink before its sibling starts
/// is not guarded against (the kubelet mounts through file descriptors).
pub fn sub_path_source(volume: &PreparedVolume, sub: &str) -> Result<PathBuf, String> {
    let clean = atomic::clean_path(sub).map_err(|e| e.to_string())?;
    let target = volume.path.join(&clean);
    if target.symlink_metadata().is_err() {
        if volume.kind.has_files() {
            return Err("it does not exist in the volume".into());
        }
        let mode = fs::metadata(&volume.path).map_or(0o755, |m| m.permissions().mode() & 0o7777);
        make_dir(&target, mode).map_err(|e| e.to_string())?;
    }
    let resolved = fs::canonicalize(&target).map_err(|e| e.to_string())?;
    let root = fs::canonicalize(&volume.path).map_err(|e| e.to_string())?;
    if !resolved.starts_with(&root) {
        return Err(format!(
            "it resolves to {}, outside the volume",
            resolved.display()
        ));
    }
    Ok(resolved)
}

/// Creates `path` (and its parents) with `mode` on the last component,
/// whatever the umask.
fn make_dir(path: &Path, mode: u32) -> Result<(), VolumeError> {
    let err = |source| VolumeError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
}

/// Mounts a tmpfs (mode 0777, `size` bytes if given) on `path`, unless
/// one is mounted there already.
fn mount_tmpfs(path: &Path, size: Option<u64>) -> Result<(), VolumeError> {
    if mounts_under(path)?.iter().any(|m| m == path) {
        return Ok(());
    }
    let mode = fs::metadata(path).map_or(0o755, |m| m.permissions().mode() & 0o7777);
    let mut options = format!("mode={mode:o}");
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|source| VolumeError::MountTmpfs {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::debug!(path = %path.display(), %options, "tmpfs mounted");
    Ok(())
}

/// The mount points at or under `dir` (this process' mount namespace).
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(VolumeError::ReadMounts)?;
    Ok(mount_points(&info)
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect())
}

/// A DNS-1123 label: what volume names must be (they become directory
/// names).
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EmptyDirVolumeSource, HostPathVolumeSource, ObjectFieldSelector,
        PersistentVolumeClaimVolumeSource,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn entries(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        }
    }

    #[test]
    fn every_key_becomes_a_file_without_items() {
        let files = key_files(entries(&[("a", "1"), ("b", "2")]), None, 0o600, false).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(files.values().all(|f| f.mode == 0o600));
    }

    #[test]
    fn items_map_keys_to_paths_and_modes() {
        let items = [item("a", "conf/a.txt", Some(0o400)), item("b", "b", None)];
        let files = key_files(
            entries(&[("a", "1"), ("b", "2"), ("c", "3")]),
            Some(&items),
            0o644,
            false,
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files["conf/a.txt"].data, b"1");
        assert_eq!(files["conf/a.txt"].mode, 0o400);
        assert_eq!(files["b"].mode, 0o644);
        let missing = [item("nope", "x", None)];
        assert_eq!(
            key_files(entries(&[("a", "1")]), Some(&missing), 0o644, false).unwrap_err(),
            "nope"
        );
        assert!(
            key_files(entries(&[("a", "1")]), Some(&missing), 0o644, true)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn default_modes_keep_permission_bits_only() {
        assert_eq!(mode_or_default(None), 0o644);
        assert_eq!(mode_or_default(Some(0o400)), 0o400);
        assert_eq!(mode_or_default(Some(0o4755)), 0o755);
    }

    #[test]
    fn downward_files_hold_pod_fields() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                labels: Some([("b".into(), "2".into()), ("a".into(), "1".into())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let field = |path: &str, field_path: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                api_version: None,
            }),
            ..Default::default()
        };
        let items = [
            field("name", "metadata.name"),
            field("labels", "metadata.labels"),
        ];
        let files = downward_files(&pod, &items, 0o644, &PodFacts::default()).unwrap();
        assert_eq!(files["name"].data, b"web");
        assert_eq!(files["labels"].data, b"a=\"1\"\nb=\"2\"");
    }

    fn volume(name: &str) -> Volume {
        Volume {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn volume_kinds() {
        assert_eq!(kind_of(&volume("v")).unwrap(), VolumeKind::EmptyDir);
        let mut memory = volume("m");
        memory.empty_dir = Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: None,
        });
        assert_eq!(kind_of(&memory).unwrap(), VolumeKind::MemoryEmptyDir);
        let mut host = volume("h");
        host.host_path = Some(HostPathVolumeSource {
            path: "/tmp".into(),
            type_: None,
        });
        assert_eq!(kind_of(&host).unwrap(), VolumeKind::HostPath);
        let mut claim = volume("data");
        claim.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
            claim_name: "c".into(),
            read_only: None,
        });
        assert_eq!(
            kind_of(&claim).unwrap_err().to_string(),
            "MountVolume.SetUp failed for volume \"data\" : volume type persistentVolumeClaim is not supported by orch"
        );
    }

    fn prepared(kind: VolumeKind, path: &Path) -> PreparedVolumes {
        let v = PreparedVolume {
            name: "v".into(),
            kind,
            path: path.to_path_buf(),
        };
        PreparedVolumes {
            dir: path.to_path_buf(),
            volumes: [("v".to_string(), v)].into(),
        }
    }

    fn container(mounts: Vec<VolumeMount>) -> Container {
        Container {
            name: "main".into(),
            volume_mounts: Some(mounts),
            ..Default::default()
        }
    }

    fn vm(name: &str, path: &str, sub: Option<&str>, ro: Option<bool>) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            sub_path: sub.map(Into::into),
            read_only: ro,
            ..Default::default()
        }
    }

    #[test]
    fn volume_mounts_become_bind_mounts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let p = prepared(VolumeKind::EmptyDir, &root);
        let c = container(vec![
            vm("v", "/data/cache", Some("cache"), None),
            vm("v", "/data", None, Some(true)),
        ]);
        let mounts = mounts_for(&c, &p).unwrap();
        assert_eq!(mounts[0].destination, "/data");
        assert!(mounts[0].read_only);
        assert_eq!(mounts[1].source, root.join("cache"));
        assert!(!mounts[1].read_only);
        assert!(root.join("cache").is_dir(), "a missing subPath is created");

        let err = mounts_for(&container(vec![vm("nope", "/x", None, None)]), &p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot find volume \"nope\" to mount into container \"main\""
        );
        let escape = container(vec![vm("v", "/x", Some("../etc"), None)]);
        assert!(matches!(
            mounts_for(&escape, &p),
            Err(VolumeError::SubPath { .. })
        ));
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let link = container(vec![vm("v", "/x", Some("link"), None)]);
        let err = mounts_for(&link, &p).unwrap_err().to_string();
        assert!(err.contains("outside the volume"), "{err}");
    }

    #[test]
    fn file_volumes_are_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let p = prepared(VolumeKind::ConfigMap, tmp.path());
        let mounts =
            mounts_for(&container(vec![vm("v", "/etc/app", None, Some(false))]), &p).unwrap();
        assert!(mounts[0].read_only);
        let missing = container(vec![vm("v", "/etc/app/x", Some("x"), None)]);
        assert!(matches!(
            mounts_for(&missing, &p),
            Err(VolumeError::SubPath { .. })
        ));
    }

    #[test]
    fn volume_names_must_be_dns_labels() {
        assert!(is_dns_label("config-1"));
        assert!(!is_dns_label(".."));
        assert!(!is_dns_label("a/b"));
        assert!(!is_dns_label("Upper"));
        assert!(!is_dns_label(""));
    }
}
