//! Pulls from OCI distribution registries (Docker Hub, a registry on
//! loopback, …) through `oci-client`, honoring Kubernetes' imagePullPolicy.

use std::net::IpAddr;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::error::{ImageError, Result};
use super::spec::{self, ManifestOrIndex};
use super::{parse_reference, ImageRecord, ImageStore};

/// Kubernetes' imagePullPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always ask the registry (it may answer with the digest already held,
    /// then nothing is downloaded).
    Always,
    /// Pull only when the store does not have the reference.
    IfNotPresent,
    /// Never pull; fail when the store does not have the reference.
    Never,
}

impl PullPolicy {
    /// The policy of a container: its `imagePullPolicy` if set, else
    /// Kubernetes' default (Always for `:latest` or untagged references
    /// without a digest, IfNotPresent otherwise). Unknown values are errors.
    pub fn for_container(policy: Option<&str>, image: &str) -> Result<PullPolicy> {
        match policy {
            Some("Always") => Ok(PullPolicy::Always),
            Some("IfNotPresent") => Ok(PullPolicy::IfNotPresent),
            Some("Never") => Ok(PullPolicy::Never),
            Some(other) => Err(ImageError::InvalidReference {
                reference: image.to_string(),
                reason: format!("unknown imagePullPolicy {other:?}"),
            }),
            None => {
                let reference = parse_reference(image)?;
                if reference.digest().is_none() && reference.tag().unwrap_or("latest") == "latest" {
                    Ok(PullPolicy::Always)
                } else {
                    Ok(PullPolicy::IfNotPresent)
                }
            }
        }
    }
}

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Speak plain HTTP to registries on loopback addresses (`127.0.0.0/8`,
    /// `[::1]`, `localhost`), as a local test registry serves. On by default.
    pub plain_http_loopback: bool,
    /// Further registries (`host:port`) to reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Basic credentials (user, password); anonymous when `None`.
    pub basic_auth: Option<(String, String)>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Read timeout (between bytes received).
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            plain_http_loopback: true,
            insecure_registries: Vec::new(),
            basic_auth: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// The result of [`ImageStore::pull`].
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// The image now in the store.
    pub image: ImageRecord,
    /// Whether the registry was asked (false when the policy let the store's
    /// copy be used without asking).
    pub contacted_registry: bool,
    /// Blobs downloaded (0 when everything was already in the store).
    pub blobs_downloaded: usize,
}

const ACCEPTED_MANIFESTS: &[&str] = &[
    spec::OCI_MANIFEST,
    spec::DOCKER_MANIFEST,
    spec::OCI_INDEX,
    spec::DOCKER_MANIFEST_LIST,
];

impl ImageStore {
    /// Makes image `reference` present according to `policy`, pulling it from
    /// its registry when needed. Registry failures keep the registry's own
    /// message (e.g. `manifest unknown`), for ImagePullBackOff reports.
    pub async fn pull(
        &self,
        reference: &str,
        policy: PullPolicy,
        options: &RegistryOptions,
    ) -> Result<PullOutcome> {
        let parsed = parse_reference(reference)?;
        match policy {
            PullPolicy::Never | PullPolicy::IfNotPresent => {
                if let Some(image) = self.lookup(&parsed) {
                    return Ok(PullOutcome {
                        image,
                        contacted_registry: false,
                        blobs_downloaded: 0,
                    });
                }
                if policy == PullPolicy::Never {
                    return Err(ImageError::NotPresent {
                        reference: parsed.whole(),
                        hint: " and imagePullPolicy is Never".to_string(),
                    });
                }
            }
            PullPolicy::Always => {}
        }
        let started = std::time::Instant::now();
        let outcome = self.pull_from_registry(&parsed, options).await?;
        tracing::info!(
            reference = %outcome.image.reference,
            digest = %outcome.image.digest,
            blobs = outcome.blobs_downloaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(outcome)
    }

    async fn pull_from_registry(
        &self,
        reference: &Reference,
        options: &RegistryOptions,
    ) -> Result<PullOutcome> {
        let registry_err = |e: OciDistributionError| ImageError::Registry {
            reference: reference.whole(),
            message: registry_message(&e),
        };
        let client = registry_client(options, reference);
        let auth = match &options.basic_auth {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let (bytes, top_digest) = client
            .pull_manifest_raw(reference, &auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(registry_err)?;
        let what = format!("manifest of {}", reference.whole());
        let (manifest_bytes, manifest_digest) = match spec::parse_manifest_or_index(&bytes, &what)?
        {
            ManifestOrIndex::Manifest(_) => (bytes, top_digest.clone()),
            ManifestOrIndex::Index(index) => {
                let (os, arch) = spec::host_platform();
                let entry = spec::select_platform(&index).ok_or_else(|| ImageError::Registry {
                    reference: reference.whole(),
                    message: format!("no manifest for platform {os}/{arch} in the image index"),
                })?;
                let by_digest = reference.clone_with_digest(entry.digest.clone());
                client
                    .pull_manifest_raw(&by_digest, &auth, ACCEPTED_MANIFESTS)
                    .await
                    .map_err(registry_err)?
            }
        };
        let blobs = self.inner.blobs.clone();
        blobs.write_bytes(&manifest_bytes, Some(&manifest_digest))?;
        let ManifestOrIndex::Manifest(manifest) =
            spec::parse_manifest_or_index(&manifest_bytes, &what)?
        else {
            return Err(ImageError::malformed(
                what,
                "an index points to another index",
            ));
        };
        let mut downloaded = 0;
        let wanted = std::iter::once(&manifest.config).chain(&manifest.layers);
        for descriptor in wanted {
            if blobs.contains(&descriptor.digest) {
                continue;
            }
            super::blob::digest_hex(&descriptor.digest)?;
            let staged = blobs.staging_file()?;
            let file = staged
                .reopen()
                .map_err(ImageError::io("opening a staging file"))?;
            client
                .pull_blob(
                    reference,
                    descriptor.digest.as_str(),
                    tokio::fs::File::from_std(file),
                )
                .await
                .map_err(registry_err)?;
            let blobs = blobs.clone();
            let digest = descriptor.digest.clone();
            tokio::task::spawn_blocking(move || blobs.commit(staged, Some(&digest)))
                .await
                .map_err(|e| ImageError::Io {
                    context: "storing a blob".to_string(),
                    source: std::io::Error::other(e),
                })??;
            downloaded += 1;
        }
        let store = self.clone();
        let reference = reference.clone();
        let image = tokio::task::spawn_blocking(move || {
            store.install(&reference, &top_digest, &manifest_digest)
        })
        .await
        .map_err(|e| ImageError::Io {
            context: "unpacking layers".to_string(),
            source: std::io::Error::other(e),
        })??;
        Ok(PullOutcome {
            image,
            contacted_registry: true,
            blobs_downloaded: downloaded,
        })
    }
}

/// A client for `reference`'s registry with `options`.
fn registry_client(options: &RegistryOptions, reference: &Reference) -> Client {
    // reqwest is built without a default TLS provider; install ring's once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut plain = options.insecure_registries.clone();
    for registry in [reference.registry(), reference.resolve_registry()] {
        if options.plain_http_loopback && is_loopback(registry) {
            plain.push(registry.to_string());
        }
    }
    let protocol = if plain.is_empty() {
        ClientProtocol::Https
    } else {
        ClientProtocol::HttpsExcept(plain)
    };
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(options.connect_timeout),
        read_timeout: Some(options.read_timeout),
        ..ClientConfig::default()
    })
}

/// Whether a registry's `host[:port]` is a loopback address.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The registry's own words for a failure, or the transport error's chain.
fn registry_message(error: &OciDistributionError) -> String {
    match error {
        OciDistributionError::RegistryError { envelope, url } => {
            let errors: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    let code = serde_json::to_value(&e.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("{:?}", e.code));
                    if e.message.is_empty() {
                        code
                    } else {
                        format!("{} ({code})", e.message)
                    }
                })
                .collect();
            format!("{} (from {url})", errors.join("; "))
        }
        OciDistributionError::ServerError { code, url, message } => {
            format!(
                "registry answered HTTP {code}: {} (from {url})",
                message.trim()
            )
        }
        OciDistributionError::UnauthorizedError { url } => {
            format!("unauthorized: the registry refused the credentials (from {url})")
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.3.0.1"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn default_policies() {
        let p = |s: Option<&str>, i: &str| PullPolicy::for_container(s, i).unwrap();
        assert_eq!(p(None, "busybox"), PullPolicy::Always);
        assert_eq!(p(None, "busybox:latest"), PullPolicy::Always);
        assert_eq!(p(None, "busybox:1.36"), PullPolicy::IfNotPresent);
        assert_eq!(p(Some("Never"), "busybox"), PullPolicy::Never);
        assert!(PullPolicy::for_container(Some("Sometimes"), "busybox").is_err());
    }
}
