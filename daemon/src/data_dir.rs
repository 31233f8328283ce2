//! What a master keeps in its data dir besides the store, and the
//! cluster's credentials.
//!
//! ```text
//! DIR/store/          the store member (RocksDB)
//! DIR/agent/          the embedded agent's data dir (images, pods, logs)
//! DIR/member-id       this master's store member id
//! DIR/token           the cluster's join token (0600)
//! DIR/tls/ca.crt      the cluster CA's certificate
//! DIR/tls/ca.key      the cluster CA's key (0600)
//! DIR/kubeconfig      an admin kubeconfig for kubectl (0600)
//! DIR/endpoints.json  the API and peer addresses the master serves
//! DIR/left            present once the cluster removed this master
//! ```
//!
//! Credentials: the join token (`orch.<CA hash>.<random secret>`, made by
//! the first master) is what agents and masters present. The admin token kubectl uses is derived
//! from it (SHA-256 of a fixed label and the join token), so every master
//! that holds the join token accepts the same admin token without storing
//! another secret; rotating the join token rotates both.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tls::ClusterCa;

/// The addresses a master serves, written at start for `orchd status` and
/// `orchd snapshot save`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    /// `host:port` of the Kubernetes API.
    pub api: String,
    /// `host:port` of the store member (peer traffic, `--join`).
    pub peer: String,
}

/// A master's data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store member's data dir.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// The embedded agent's data dir.
    pub fn agent(&self) -> PathBuf {
        self.root.join("agent")
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    /// The join token file.
    pub fn token_file(&self) -> PathBuf {
        self.root.join("token")
    }

    /// Whether a store member has lived here.
    pub fn has_store(&self) -> bool {
        self.store().join("FORMAT").exists() || self.root.join("member-id").exists()
    }

    /// Whether the master of this dir left its cluster (`orchd leave`).
    pub fn has_left(&self) -> bool {
        self.root.join("left").exists()
    }

    /// Records that the master of this dir left its cluster.
    pub fn mark_left(&self) -> Result<()> {
        write_private(
            &self.root.join("left"),
            "this master was removed from its cluster\n",
        )
    }

    /// Peer TLS for `orchd` commands run on this master's host: a client
    /// certificate issued by the CA kept here.
    pub fn peer_tls(&self) -> Result<orch_raft_store::network::PeerTls> {
        let ca = self
            .ca()?
            .with_context(|| format!("{} has no cluster CA", self.root.display()))?;
        Ok(ca.peer_tls(&[std::net::IpAddr::from([127, 0, 0, 1])], &[])?)
    }

    /// The join token, if this dir has one.
    pub fn token(&self) -> Result<Option<String>> {
        read_trimmed(&self.token_file())
    }

    /// The member id, if this dir has one.
    pub fn member_id(&self) -> Result<Option<u64>> {
        match read_trimmed(&self.root.join("member-id"))? {
            None => Ok(None),
            Some(text) => text.parse().map(Some).with_context(|| {
                format!(
                    "{} is not a member id",
                    self.root.join("member-id").display()
                )
            }),
        }
    }

    /// Records the member id.
    pub fn write_member_id(&self, id: u64) -> Result<()> {
        write_private(&self.root.join("member-id"), &id.to_string())
    }

    /// Records the join token.
    pub fn write_token(&self, token: &str) -> Result<()> {
        write_private(&self.token_file(), token)
    }

    /// Writes `agent-token`: the token workers join with (it cannot add
    /// masters or read the CA key).
    pub fn write_agent_token(&self, token: &str) -> Result<()> {
        write_private(&self.root.join("agent-token"), token)
    }

    /// The addresses written at the last start.
    pub fn endpoints(&self) -> Result<Endpoints> {
        let path = self.root.join("endpoints.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} the data dir of an orchd server?)",
                path.display(),
                self.root.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    /// Records the addresses served.
    pub fn write_endpoints(&self, endpoints: &Endpoints) -> Result<()> {
        let text = serde_json::to_string_pretty(endpoints).expect("endpoints serialize");
        write_private(&self.root.join("endpoints.json"), &text)
    }

    /// Writes the admin kubeconfig for the API at `api` (HTTPS, trusting
    /// `ca_pem`).
    pub fn write_kubeconfig(&self, api: &str, token: &str, ca_pem: &str) -> Result<()> {
        write_private(
            &self.kubeconfig(),
            &kubeconfig(api, &admin_token(token), ca_pem),
        )
    }

    /// The cluster CA kept here, if any.
    pub fn ca(&self) -> Result<Option<ClusterCa>> {
        let dir = self.root.join("tls");
        match (
            read_trimmed(&dir.join("ca.crt"))?,
            read_trimmed(&dir.join("ca.key"))?,
        ) {
            (Some(cert), Some(key)) => Ok(Some(ClusterCa {
                cert_pem: format!("{cert}\n"),
                key_pem: format!("{key}\n"),
            })),
            _ => Ok(None),
        }
    }

    /// Keeps the cluster CA here.
    pub fn write_ca(&self, ca: &ClusterCa) -> Result<()> {
        let dir = self.root.join("tls");
        write_private(&dir.join("ca.key"), &ca.key_pem)?;
        write_private(&dir.join("ca.crt"), &ca.cert_pem)
    }
}

fn read_trimmed(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `content` to `path` readable by its owner only, replacing it
/// atomically.
fn write_private(path: &Path, content: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("writing {}", temp.display()))?;
    file.write_all(content.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("writing {}", path.display()))
}

/// Checks a token given on the command line.
pub fn check_token(token: &str) -> Result<String> {
    let token = token.trim();
    crate::tls::token_ca_hash(token)?;
    Ok(token.to_string())
}

/// The SHA-256 of a join token (hex), as the store keeps it for joining
/// masters to check theirs against.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The AES-256-GCM key Secrets are sealed with in the store of the
/// cluster whose join token is `token`.
pub fn secret_key(token: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"orch secrets key\0");
    hash.update(token.as_bytes());
    hash.finalize().into()
}

/// The admin bearer token of the cluster whose join token is `token`.
pub fn admin_token(token: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"orch admin token\0");
    hash.update(token.as_bytes());
    format!("orch-admin-{}", hex::encode(hash.finalize()))
}

/// A new member id: random, so that masters joining at once never collide
/// (1 is the first master's).
pub fn new_member_id() -> u64 {
    rand::random_range(2..(1u64 << 53))
}

/// An admin kubeconfig for the API at `api` (HTTPS, trusting `ca_pem`)
/// with `token`.
pub fn kubeconfig(api: &str, token: &str, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: orch\n  cluster:\n    server: https://{api}\n    certificate-authority-data: {ca}\ncontexts:\n- name: orch\n  context:\n    cluster: orch\n    user: admin\n    namespace: default\ncurrent-context: orch\nusers:\n- name: admin\n  user:\n    token: {token}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_follows_from_the_join_token() {
        let ca = ClusterCa::generate().unwrap();
        let a = crate::tls::token_for(&ca);
        let b = crate::tls::token_for(&ca);
        assert_ne!(a, b);
        assert_eq!(admin_token(&a), admin_token(&a));
        assert_ne!(admin_token(&a), admin_token(&b));
        assert!(check_token("short").is_err());
        assert_eq!(check_token(&format!(" {a}\n")).unwrap(), a);
    }

    #[test]
    fn files_round_trip_and_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("d"));
        assert_eq!(data.token().unwrap(), None);
        assert!(!data.has_store());
        data.write_token("orch.abc.def").unwrap();
        data.write_member_id(7).unwrap();
        assert_eq!(data.member_id().unwrap(), Some(7));
        assert!(data.has_store());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.token_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let endpoints = Endpoints {
            api: "127.0.0.1:6443".into(),
            peer: "127.0.0.1:2380".into(),
        };
        data.write_endpoints(&endpoints).unwrap();
        assert_eq!(data.endpoints().unwrap(), endpoints);
    }
}
