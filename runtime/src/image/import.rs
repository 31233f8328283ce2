//! Imports from files: OCI image layouts (a directory with `oci-layout`,
//! `index.json` and `blobs/`) and docker-archive tarballs (`docker save`'s
//! format: `manifest.json`, configs and layer tars).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use oci_client::Reference;
use serde::Deserialize;

use super::blob::digest_hex;
use super::error::{ImageError, Result};
use super::spec::{self, ConfigFile, Descriptor, Index, Manifest, ManifestOrIndex};
use super::{parse_reference, ImageRecord, ImageStore};

/// One image of a docker-archive's `manifest.json`.
#[derive(Debug, Deserialize)]
struct ArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

impl ImageStore {
    /// Imports the image of the OCI image layout at `layout` and stores it as
    /// `name` (e.g. `busybox:latest`). The layout's manifest is the one whose
    /// `org.opencontainers.image.ref.name` annotation is `name`'s tag (or the
    /// whole `name`), or its only manifest. Blocking.
    pub fn import_oci_layout(&self, layout: &Path, name: &str) -> Result<ImageRecord> {
        let reference = parse_reference(name)?;
        let what = format!("OCI layout {}", layout.display());
        let marker = fs::read(layout.join("oci-layout")).map_err(|e| {
            ImageError::malformed(&what, format!("no readable oci-layout file: {e}"))
        })?;
        let marker: serde_json::Value =
            serde_json::from_slice(&marker).map_err(|e| ImageError::malformed(&what, e))?;
        if marker
            .get("imageLayoutVersion")
            .and_then(|v| v.as_str())
            .is_none()
        {
            return Err(ImageError::malformed(
                &what,
                "oci-layout has no imageLayoutVersion",
            ));
        }
        let index_bytes = fs::read(layout.join("index.json"))
            .map_err(|e| ImageError::malformed(&what, format!("no readable index.json: {e}")))?;
        let index: Index = serde_json::from_slice(&index_bytes)
            .map_err(|e| ImageError::malformed(format!("{what}: index.json"), e))?;
        let chosen = choose_in_layout(&index, &reference)
            .map_err(|reason| ImageError::malformed(&what, reason))?
            .clone();
        let top_digest = chosen.digest.clone();
        let blob_in_layout = |digest: &str| -> Result<PathBuf> {
            Ok(layout
                .join("blobs")
                .join("sha256")
                .join(digest_hex(digest)?))
        };
        // Follow nested indexes to this platform's manifest.
        let mut manifest_digest = chosen.digest.clone();
        let mut depth = 0;
        let manifest: Manifest = loop {
            let bytes = fs::read(blob_in_layout(&manifest_digest)?).map_err(|_| {
                ImageError::BlobMissing {
                    digest: manifest_digest.clone(),
                    place: what.clone(),
                }
            })?;
            self.inner
                .blobs
                .write_bytes(&bytes, Some(&manifest_digest))?;
            match spec::parse_manifest_or_index(&bytes, &format!("manifest {manifest_digest}"))? {
                ManifestOrIndex::Manifest(m) => break m,
                ManifestOrIndex::Index(nested) => {
                    depth += 1;
                    if depth > 4 {
                        return Err(ImageError::malformed(&what, "indexes nested too deeply"));
                    }
                    let (os, arch) = spec::host_platform();
                    manifest_digest = spec::select_platform(&nested)
                        .ok_or_else(|| {
                            ImageError::Unsupported(format!(
                                "{what} has no manifest for platform {os}/{arch}"
                            ))
                        })?
                        .digest
                        .clone();
                }
            }
        };
        self.inner.blobs.copy_file(
            &blob_in_layout(&manifest.config.digest)?,
            &manifest.config.digest,
        )?;
        for layer in &manifest.layers {
            self.inner
                .blobs
                .copy_file(&blob_in_layout(&layer.digest)?, &layer.digest)?;
        }
        self.install(&reference, &top_digest, &manifest_digest)
    }

    /// Imports every tagged image of the docker-archive tarball at `archive`
    /// (plain or gzip, as `docker save` or `skopeo copy … docker-archive:`
    /// write it), each under its `RepoTags`. Blocking.
    pub fn import_docker_archive(&self, archive: &Path) -> Result<Vec<ImageRecord>> {
        let what = format!("docker archive {}", archive.display());
        let file = File::open(archive)
            .map_err(ImageError::io(format!("opening {}", archive.display())))?;
        let mut buffered = BufReader::new(file);
        let gz = buffered
            .fill_buf()
            .map_err(ImageError::io(format!("reading {}", archive.display())))?
            .starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read> = if gz {
            Box::new(MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        let staging = tempfile::Builder::new()
            .prefix("archive-")
            .tempdir_in(&self.inner.tmp)
            .map_err(ImageError::io("creating a staging directory"))?;
        let dir = staging.path();
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(false);
        tar.set_unpack_xattrs(false);
        tar.unpack(dir)
            .map_err(|e| ImageError::malformed(&what, format!("not a readable tar: {e}")))?;
        let manifest_bytes = fs::read(dir.join("manifest.json"))
            .map_err(|e| ImageError::malformed(&what, format!("no manifest.json: {e}")))?;
        let entries: Vec<ArchiveEntry> = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ImageError::malformed(format!("{what}: manifest.json"), e))?;
        if entries.is_empty() {
            return Err(ImageError::malformed(&what, "manifest.json lists no image"));
        }
        let mut records = Vec::new();
        for entry in entries {
            let tags = entry.repo_tags.clone().unwrap_or_default();
            if tags.is_empty() {
                return Err(ImageError::malformed(
                    &what,
                    format!("image {} has no RepoTags to name it by", entry.config),
                ));
            }
            let references = tags
                .iter()
                .map(|t| parse_reference(t))
                .collect::<Result<Vec<Reference>>>()?;
            let manifest_digest = self.store_archive_image(dir, &entry, &what)?;
            for reference in references {
                records.push(self.install(&reference, &manifest_digest, &manifest_digest)?);
            }
        }
        Ok(records)
    }

    /// Stores one archive image's config and layers, and a manifest written
    /// for them; returns the manifest's digest.
    fn store_archive_image(&self, dir: &Path, entry: &ArchiveEntry, what: &str) -> Result<String> {
        let open = |name: &str| -> Result<(PathBuf, File)> {
            let path = archive_path(dir, name)
                .ok_or_else(|| ImageError::malformed(what, format!("bad path {name:?}")))?;
            let file = File::open(&path)
                .map_err(|e| ImageError::malformed(what, format!("{name}: {e}")))?;
            Ok((path, file))
        };
        let (_, config_file) = open(&entry.config)?;
        let config_digest = self
            .inner
            .blobs
            .write_from(BufReader::new(config_file), None)?;
        let config_bytes = self.inner.blobs.read(&config_digest)?;
        let config: ConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::malformed(format!("{what}: {}", entry.config), e))?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(ImageError::malformed(
                what,
                format!(
                    "config {} lists {} layers, manifest.json {}",
                    entry.config,
                    config.rootfs.diff_ids.len(),
                    entry.layers.len()
                ),
            ));
        }
        let mut layers = Vec::with_capacity(entry.layers.len());
        for name in &entry.layers {
            let (_, file) = open(name)?;
            let mut reader = BufReader::new(file);
            let gz = reader
                .fill_buf()
                .map_err(|e| ImageError::malformed(what, format!("{name}: {e}")))?
                .starts_with(&[0x1f, 0x8b]);
            let size_path = archive_path(dir, name).unwrap_or_default();
            let size = fs::metadata(&size_path).map(|m| m.len()).unwrap_or(0);
            let digest = self.inner.blobs.write_from(reader, None)?;
            layers.push(Descriptor {
                media_type: if gz {
                    spec::OCI_LAYER_GZIP
                } else {
                    spec::OCI_LAYER_TAR
                }
                .to_string(),
                digest,
                size,
                platform: None,
                annotations: Default::default(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(spec::OCI_MANIFEST.to_string()),
            config: Descriptor {
                media_type: spec::OCI_CONFIG.to_string(),
                digest: config_digest,
                size: config_bytes.len() as u64,
                platform: None,
                annotations: Default::default(),
            },
            layers,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::malformed(what, e))?;
        self.inner.blobs.write_bytes(&bytes, None)
    }
}

/// A path named inside a docker archive, kept inside its unpack directory.
fn archive_path(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut out = dir.to_path_buf();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// The descriptor of an OCI layout's index.json that `reference` names.
fn choose_in_layout<'a>(index: &'a Index, reference: &Reference) -> Result<&'a Descriptor, String> {
    let ref_name = |d: &Descriptor| d.annotations.get(spec::REF_NAME_ANNOTATION).cloned();
    let whole = reference.whole();
    let tag = reference.tag().unwrap_or("latest");
    if let Some(d) = index
        .manifests
        .iter()
        .find(|d| ref_name(d).is_some_and(|n| n == tag || n == whole))
    {
        return Ok(d);
    }
    match index.manifests.as_slice() {
        [only] => Ok(only),
        [] => Err("index.json lists no manifest".to_string()),
        many => Err(format!(
            "index.json lists {} manifests and none is named {tag:?} (names: {})",
            many.len(),
            many.iter()
                .filter_map(ref_name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
