//! The cluster CA and the masters' serving certificates.
//!
//! The first master generates the CA (rcgen, ECDSA P-256) and keeps it in
//! `DATA_DIR/tls/`; it also puts it into the store (key [`CA_KEY`]), where
//! a master that joins finds it once it has caught up. The join token
//! carries the CA's SHA-256 (`orch.<hash>.<secret>`), so a joining master
//! checks the CA it read, and an agent the CA it fetches from `/cacerts`
//! (see `orch_core::tls::fetch_ca`). Each master issues its own serving
//! certificate, for its API address, loopback and its host name.
//!
//! A master that joins serves TLS through [`DeferredCert`]: its API
//! listens from the start, but handshakes fail until the certificate is
//! issued after the join.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// The store key holding the CA (certificate and key, PEM, as JSON).
pub const CA_KEY: &str = "/orch/cluster/ca";

/// The store key holding the SHA-256 of the join token (hex).
pub const TOKEN_HASH_KEY: &str = "/orch/cluster/token-sha256";

/// The cluster CA.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterCa {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// The CA's parameters; issuing rebuilds them, so they must not vary.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "orch-ca");
    name.push(DnType::OrganizationName, "orch");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

impl ClusterCa {
    /// A new CA.
    pub fn generate() -> Result<ClusterCa> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = ca_params()
            .self_signed(&key)
            .context("signing the CA certificate")?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Its SHA-256, as join tokens carry it.
    pub fn hash(&self) -> String {
        orch_core::tls::ca_hash(&self.cert_pem)
    }

    /// A serving certificate for a master reached at `ips` and `names`;
    /// returns (certificate chain PEM: leaf then CA, key PEM).
    pub fn issue_server_cert(&self, ips: &[IpAddr], names: &[String]) -> Result<(String, String)> {
        let ca_key = KeyPair::from_pem(&self.key_pem).context("reading the CA key")?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "orch-apiserver");
        params.distinguished_name = name;
        params.subject_alt_names = ips
            .iter()
            .map(|ip| SanType::IpAddress(*ip))
            .chain(
                names
                    .iter()
                    .filter_map(|n| n.clone().try_into().ok().map(SanType::DnsName)),
            )
            .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let key = KeyPair::generate().context("generating a serving key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the serving certificate")?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}

/// The parts of a join token: the CA's hash and the secret.
pub fn token_for(ca: &ClusterCa) -> String {
    format!(
        "orch.{}.{}",
        ca.hash(),
        hex::encode(rand::random::<[u8; 32]>())
    )
}

/// The CA hash a token names (`orch.<hash>.<secret>`).
pub fn token_ca_hash(token: &str) -> Result<&str> {
    orch_core::tls::token_ca_hash(token).context(
        "the token is malformed: expected orch.<CA hash>.<secret> (see DATA_DIR/token on the first master)",
    )
}

/// A serving certificate as rustls uses it.
fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("reading the serving certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading the serving key")?;
    let signing = orch_core::tls::provider()
        .key_provider
        .load_private_key(key)
        .context("loading the serving key")?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// A certificate resolver whose certificate is set once, after start.
#[derive(Debug, Default)]
pub struct DeferredCert {
    key: OnceLock<Arc<CertifiedKey>>,
}

impl DeferredCert {
    /// Sets the certificate (first call only).
    pub fn set(&self, chain_pem: &str, key_pem: &str) -> Result<()> {
        let _ = self.key.set(certified_key(chain_pem, key_pem)?);
        Ok(())
    }
}

impl ResolvesServerCert for DeferredCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.get().cloned()
    }
}

/// A TLS server configuration serving `resolver`'s certificate.
pub fn server_config(resolver: Arc<DeferredCert>) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(orch_core::tls::provider())
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca_and_tokens_name_it() {
        let ca = ClusterCa::generate().unwrap();
        let (chain, key) = ca
            .issue_server_cert(&["127.0.0.1".parse().unwrap()], &["localhost".into()])
            .unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        let resolver = DeferredCert::default();
        resolver.set(&chain, &key).unwrap();
        assert!(resolver.key.get().is_some());
        // The chain verifies against the CA as a client sees it.
        let roots = orch_core::tls::client_config(&ca.cert_pem).unwrap();
        drop(roots);
        let token = token_for(&ca);
        assert_eq!(token_ca_hash(&token).unwrap(), ca.hash());
        assert!(token_ca_hash("orch-abc").is_err());
        assert!(token_ca_hash(&format!("orch.{}.short", ca.hash())).is_err());
    }
}
