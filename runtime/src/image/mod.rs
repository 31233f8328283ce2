//! The node's image store: content-addressed blobs, unpacked layers shared by
//! all containers, imports (OCI image layouts, docker-archive tarballs), pulls
//! from OCI distribution registries, and each container's rootfs as an
//! overlayfs mount over its image's layers.
//!
//! # Layout under the store's directory
//!
//! ```text
//! blobs/sha256/<hex>   manifests, configs and (compressed) layer tars, named by digest
//! layers/<hex>/        one directory per layer, named by its diff id (the digest of
//!                      the uncompressed tar), holding that layer alone
//! empty/               an empty lower directory for images without layers
//! index.json           image reference -> manifest digest, config digest, layers
//! tmp/                 staging files and directories (cleared on open)
//! ```
//!
//! # Design choices
//!
//! - Every blob is hashed while it is written and renamed into `blobs/` only if
//!   it matches its digest, so a blob under a name always has that content.
//! - Layers are unpacked once per diff id, each into its own directory: into
//!   `tmp/` first, checked against the diff id of the image config, then renamed
//!   into `layers/` (a rename that loses a race to an identical unpack is
//!   harmless). Whiteouts are turned into overlayfs' own form rather than
//!   applied: `.wh.NAME` becomes a character device 0/0 `NAME`, and
//!   `.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on its
//!   directory. Layers are thus shared between images, and a container's
//!   rootfs is an overlay mount with the image's layers as lower directories
//!   (topmost first) and the container's own upper and work directories: no
//!   per-image or per-container copy. This needs root (mknod, trusted xattrs,
//!   mount), as the agent has.
//! - The index maps normalized references (`docker.io/library/busybox:latest`)
//!   to the image's digests; it is rewritten atomically (temp file + rename).
//! - Imports and mounts are blocking filesystem work: call them from a
//!   blocking thread (`tokio::task::spawn_blocking`). [`ImageStore::pull`] is
//!   async and moves its own blocking parts off the runtime.

mod blob;
mod error;
mod import;
mod layer;
mod pull;
mod rootfs;
mod spec;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::Reference;
use serde::{Deserialize, Serialize};

pub use blob::{digest_hex, sha256_digest};
pub use error::{ImageError, Result};
pub use layer::OPAQUE_XATTR;
pub use pull::{PullOutcome, PullPolicy, RegistryOptions};
pub use rootfs::{is_mount_point, mount_points, RootfsMount};

use blob::Blobs;
use spec::{ConfigFile, ManifestOrIndex};

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalized reference the image is stored under.
    pub reference: String,
    /// The digest the reference resolved to at its source: a manifest's, or a
    /// multi-platform index's when the registry served one (Kubernetes' imageID).
    pub digest: String,
    /// The digest of the (single-platform) manifest used.
    pub manifest: String,
    /// The digest of the image config.
    pub config: String,
    /// The layer blobs' digests, base first.
    pub layers: Vec<String>,
    /// The layers' diff ids (digests of the uncompressed tars), base first.
    pub diff_ids: Vec<String>,
}

/// What an image asks of a container unless the pod says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Entrypoint (Kubernetes' `command` replaces it).
    pub entrypoint: Vec<String>,
    /// Default arguments (Kubernetes' `args` replaces them).
    pub cmd: Vec<String>,
    /// `NAME=value` environment entries.
    pub env: Vec<String>,
    /// Working directory, if the image sets one.
    pub working_dir: Option<String>,
    /// User (`name`, `uid`, `uid:gid`, `name:group`), if the image sets one.
    pub user: Option<String>,
    /// Stop signal, if the image sets one.
    pub stop_signal: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: BTreeMap<String, ImageRecord>,
}

struct Inner {
    root: PathBuf,
    blobs: Blobs,
    layers: PathBuf,
    tmp: PathBuf,
    index_path: PathBuf,
    index: Mutex<IndexFile>,
}

/// The image store of one node. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

/// Parses and normalizes an image reference (`busybox` becomes
/// `docker.io/library/busybox:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference> {
    let trimmed = reference.trim();
    if trimmed.is_empty() {
        return Err(ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: "the reference is empty".to_string(),
        });
    }
    trimmed
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
}

/// Removes the staging directories of processes that are gone.
fn clear_stale_staging(tmp_root: &Path) -> Result<()> {
    let entries = match fs::read_dir(tmp_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io(format!("reading {}", tmp_root.display()))(e)),
    };
    for entry in entries.flatten() {
        let alive = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(ImageError::io(format!("clearing {}", path.display())))?;
        }
    }
    Ok(())
}

impl ImageStore {
    /// Opens (creating if needed) the store in `dir`, e.g. `<data dir>/images`.
    pub fn open(dir: impl AsRef<Path>) -> Result<ImageStore> {
        let root = dir.as_ref().to_path_buf();
        let blobs_dir = root.join("blobs").join("sha256");
        let layers = root.join("layers");
        // Each process stages its downloads in a directory of its own (an
        // `orchd image` command may run beside the agent); those of dead
        // processes are cleared.
        let tmp_root = root.join("tmp");
        clear_stale_staging(&tmp_root)?;
        let tmp = tmp_root.join(std::process::id().to_string());
        let empty = root.join("empty");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .map_err(ImageError::io(format!("clearing {}", tmp.display())))?;
        }
        for d in [&blobs_dir, &layers, &tmp, &empty] {
            fs::create_dir_all(d).map_err(ImageError::io(format!("creating {}", d.display())))?;
        }
        let index_path = root.join("index.json");
        let index = match fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::malformed(index_path.display().to_string(), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => IndexFile::default(),
            Err(e) => {
                return Err(ImageError::io(format!("reading {}", index_path.display()))(
                    e,
                ))
            }
        };
        Ok(ImageStore {
            inner: Arc::new(Inner {
                blobs: Blobs::new(blobs_dir, tmp.clone()),
                root,
                layers,
                tmp,
                index_path,
                index: Mutex::new(index),
            }),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Looks an image up by reference (a tag, or a digest: `name@sha256:…`).
    /// `Ok(None)` when the store does not have it.
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let parsed = parse_reference(reference)?;
        Ok(self.lookup(&parsed))
    }

    /// The index, brought up to date with the file (which another process,
    /// `orchd image import`, may have changed).
    fn index(&self) -> std::sync::MutexGuard<'_, IndexFile> {
        let mut index = self.inner.index.lock().unwrap_or_else(|e| e.into_inner());
        match fs::read(&self.inner.index_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(file) => *index = file,
                Err(e) => {
                    tracing::warn!(error = %e, "the image index on disk is unreadable; using the one in memory")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => *index = IndexFile::default(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the image index; using the one in memory")
            }
        }
        index
    }

    /// Holds the index file's lock (between processes) while `change`
    /// edits the current index, then saves it.
    fn change_index<T>(&self, change: impl FnOnce(&mut IndexFile) -> T) -> Result<T> {
        let lock_path = self.inner.root.join("index.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ImageError::io(format!("opening {}", lock_path.display())))?;
        fs2::FileExt::lock_exclusive(&lock)
            .map_err(ImageError::io(format!("locking {}", lock_path.display())))?;
        let mut index = self.index();
        let mut edited = IndexFile {
            images: index.images.clone(),
        };
        let result = change(&mut edited);
        self.save_index(&edited)?;
        *index = edited;
        Ok(result)
    }

    fn lookup(&self, reference: &Reference) -> Option<ImageRecord> {
        let index = self.index();
        if let Some(record) = index.images.get(&reference.whole()) {
            return Some(record.clone());
        }
        let digest = reference.digest()?;
        let repo = format!("{}/{}", reference.registry(), reference.repository());
        index
            .images
            .values()
            .find(|r| {
                (r.digest == digest || r.manifest == digest)
                    && parse_reference(&r.reference)
                        .is_ok_and(|p| format!("{}/{}", p.registry(), p.repository()) == repo)
            })
            .cloned()
    }

    /// All images in the store, by reference.
    pub fn list(&self) -> Vec<ImageRecord> {
        let index = self.index();
        index.images.values().cloned().collect()
    }

    /// Forgets the image `reference` (its blobs and layers stay, as other
    /// images or running containers may use them). Returns whether it existed.
    pub fn remove(&self, reference: &str) -> Result<bool> {
        let key = parse_reference(reference)?.whole();
        self.change_index(|index| index.images.remove(&key).is_some())
    }

    /// The image's execution defaults (Cmd, Entrypoint, Env, WorkingDir, User).
    pub fn image_config(&self, reference: &str) -> Result<ImageConfig> {
        let record = self.require(reference)?;
        let config = self.read_config(&record.config)?;
        let exec = config.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: exec.entrypoint.unwrap_or_default(),
            cmd: exec.cmd.unwrap_or_default(),
            env: exec.env.unwrap_or_default(),
            working_dir: exec.working_dir.filter(|w| !w.is_empty()),
            user: exec.user.filter(|u| !u.is_empty()),
            stop_signal: exec.stop_signal.filter(|s| !s.is_empty()),
        })
    }

    /// The directories overlayfs stacks for the image, topmost layer first
    /// (unpacking any layer that is missing).
    pub fn lower_dirs(&self, reference: &str) -> Result<Vec<PathBuf>> {
        let record = self.require(reference)?;
        let mut dirs = Vec::with_capacity(record.diff_ids.len());
        for (diff_id, blob) in record.diff_ids.iter().zip(&record.layers).rev() {
            dirs.push(self.ensure_layer(diff_id, blob)?);
        }
        if dirs.is_empty() {
            dirs.push(self.inner.root.join("empty"));
        }
        Ok(dirs)
    }

    /// Mounts a rootfs for a container of image `reference` under
    /// `container_dir` (`rootfs/` as the mount point, `upper/` and `work/` for
    /// the container's writes). Mounting again an already mounted rootfs is a
    /// no-op. Undo with [`RootfsMount::unmount`] or [`RootfsMount::remove`].
    pub fn mount_rootfs(&self, reference: &str, container_dir: &Path) -> Result<RootfsMount> {
        let lower = self.lower_dirs(reference)?;
        let mount = RootfsMount::for_container(container_dir);
        mount.mount(&lower)?;
        Ok(mount)
    }

    fn require(&self, reference: &str) -> Result<ImageRecord> {
        let parsed = parse_reference(reference)?;
        self.lookup(&parsed).ok_or_else(|| ImageError::NotPresent {
            reference: parsed.whole(),
            hint: String::new(),
        })
    }

    fn read_config(&self, digest: &str) -> Result<ConfigFile> {
        let bytes = self.inner.blobs.read(digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::malformed(format!("image config {digest}"), e))
    }

    /// Unpacks layer `diff_id` from blob `blob` unless it is unpacked already.
    fn ensure_layer(&self, diff_id: &str, blob: &str) -> Result<PathBuf> {
        let dest = self.inner.layers.join(digest_hex(diff_id)?);
        if dest.is_dir() {
            return Ok(dest);
        }
        let blob_path = self.inner.blobs.path(blob)?;
        if !blob_path.is_file() {
            return Err(ImageError::BlobMissing {
                digest: blob.to_string(),
                place: "the image store".to_string(),
            });
        }
        let staging = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(&self.inner.tmp)
            .map_err(ImageError::io(format!(
                "creating a directory in {}",
                self.inner.tmp.display()
            )))?;
        let started = std::time::Instant::now();
        let actual = layer::unpack(&blob_path, staging.path(), diff_id)?;
        if actual != diff_id {
            return Err(ImageError::Layer {
                diff_id: diff_id.to_string(),
                reason: format!("the uncompressed layer {blob} hashes to {actual}"),
            });
        }
        let unpacked = staging.keep();
        if let Err(e) = fs::rename(&unpacked, &dest) {
            let _ = fs::remove_dir_all(&unpacked);
            if !dest.is_dir() {
                return Err(ImageError::io(format!(
                    "moving layer into {}",
                    dest.display()
                ))(e));
            }
        }
        tracing::debug!(%diff_id, elapsed_ms = started.elapsed().as_millis() as u64, "layer unpacked");
        Ok(dest)
    }

    /// Records an image whose manifest, config and layer blobs are all in the
    /// store: checks them against each other, unpacks the layers and indexes
    /// the image under `reference`.
    fn install(
        &self,
        reference: &Reference,
        digest: &str,
        manifest_digest: &str,
    ) -> Result<ImageRecord> {
        let bytes = self.inner.blobs.read(manifest_digest)?;
        let ManifestOrIndex::Manifest(manifest) =
            spec::parse_manifest_or_index(&bytes, &format!("manifest {manifest_digest}"))?
        else {
            return Err(ImageError::malformed(
                format!("manifest {manifest_digest}"),
                "expected an image manifest, found an index",
            ));
        };
        let config = self.read_config(&manifest.config.digest)?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::malformed(
                format!("image config {}", manifest.config.digest),
                format!(
                    "it lists {} layers (rootfs.diff_ids) but the manifest has {}",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            ));
        }
        if !config.os.is_empty() && config.os != "linux" {
            return Err(ImageError::Unsupported(format!(
                "image {} is for os {:?}",
                reference.whole(),
                config.os
            )));
        }
        let layers: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        for (diff_id, blob) in diff_ids.iter().zip(&layers) {
            self.ensure_layer(diff_id, blob)?;
        }
        let record = ImageRecord {
            reference: reference.whole(),
            digest: digest.to_string(),
            manifest: manifest_digest.to_string(),
            config: manifest.config.digest.clone(),
            layers,
            diff_ids,
        };
        self.change_index(|index| {
            index
                .images
                .insert(record.reference.clone(), record.clone())
        })?;
        tracing::info!(reference = %record.reference, digest = %record.digest, "image stored");
        Ok(record)
    }

    fn save_index(&self, index: &IndexFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| ImageError::Io {
            context: "encoding the image index".to_string(),
            source: io::Error::other(e),
        })?;
        let path = &self.inner.index_path;
        let mut staged = tempfile::Builder::new()
            .prefix("index-")
            .tempfile_in(&self.inner.tmp)
            .map_err(ImageError::io("creating the image index"))?;
        staged
            .write_all(&bytes)
            .and_then(|()| staged.as_file().sync_all())
            .map_err(ImageError::io("writing the image index"))?;
        staged
            .persist(path)
            .map_err(|e| ImageError::io(format!("replacing {}", path.display()))(e.error))?;
        Ok(())
    }
}
