//! The few OCI / Docker image documents the store reads, as tolerant serde
//! shapes: unknown fields are ignored, and Docker schema 2 and OCI documents
//! share one shape each (their field names agree).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{ImageError, Result};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation naming a manifest's tag in an OCI layout's index.json.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Platform, in image indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A platform in an image index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (GOARCH spelling).
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Architecture variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The manifest's own media type.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests (or nested indexes) it lists.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The part of an image config a runtime needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Execution defaults.
    #[serde(default)]
    pub config: Option<ExecConfig>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// The image's execution defaults, as in the image config's `config` field.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecConfig {
    /// User (name or uid, optionally `:group`).
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    /// `NAME=value` entries.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// Signal to stop the container.
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

/// The image config's `rootfs` field.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Always "layers".
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Uncompressed layer digests, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// A manifest or an index, told apart by media type or shape.
pub enum ManifestOrIndex {
    /// A single-platform image manifest.
    Manifest(Manifest),
    /// A multi-platform index.
    Index(Index),
}

/// Parses a manifest or index document.
pub fn parse_manifest_or_index(bytes: &[u8], what: &str) -> Result<ManifestOrIndex> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ImageError::malformed(what, e))?;
    let media_type = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_MANIFEST_LIST
        || (media_type.is_empty() && value.get("manifests").is_some());
    if is_index {
        let index: Index =
            serde_json::from_value(value).map_err(|e| ImageError::malformed(what, e))?;
        return Ok(ManifestOrIndex::Index(index));
    }
    if value.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
        return Err(ImageError::Unsupported(format!(
            "{what} is not a schema version 2 manifest (media type {media_type:?})"
        )));
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| ImageError::malformed(what, e))?;
    Ok(ManifestOrIndex::Manifest(manifest))
}

/// This host's platform in OCI spelling (GOARCH names).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}

/// Picks the entry of an index that matches this host's platform.
pub fn select_platform(index: &Index) -> Option<&Descriptor> {
    let (os, arch) = host_platform();
    index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    })
}
