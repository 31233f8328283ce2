//! The cluster's credentials: join tokens, the CA's place in the store,
//! the API's TLS configuration.
//!
//! The first master generates the CA (rcgen, ECDSA P-256) and keeps it in
//! `DATA_DIR/tls/`; it also puts it into the store (key [`CA_KEY`]), so
//! that a snapshot carries it. The join token carries the CA's SHA-256
//! (`orch.<hash>.<secret>`): a joining master checks the CA it fetches
//! from `/cacerts` and then the CA with its key from
//! `/orch/v1/join-bundle` (which needs the token), an agent the CA it
//! fetches from `/cacerts` (see `orch_core::tls::fetch_ca`). Each master
//! issues itself, at every start, a serving certificate for its API and
//! a peer certificate (server and client authentication) for the store's
//! mutual TLS, both for its addresses, loopback and its host name.

use std::sync::Arc;

use anyhow::{Context, Result};
pub use orch_core::cluster_ca::ClusterCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The store key holding the CA (certificate and key, PEM, as JSON).
pub const CA_KEY: &str = "/orch/cluster/ca";

/// The store key holding the SHA-256 of the join token (hex).
pub const TOKEN_HASH_KEY: &str = "/orch/cluster/token-sha256";

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

/// A TLS server configuration serving the certificate chain `chain_pem`
/// (leaf first) with its key.
pub fn server_config(chain_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("reading the serving certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading the serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(orch_core::tls::provider())
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("loading the serving certificate")?;
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
        server_config(&chain, &key).unwrap();
        ca.peer_tls(&["127.0.0.1".parse().unwrap()], &[]).unwrap();
        // The chain verifies against the CA as a client sees it.
        let roots = orch_core::tls::client_config(&ca.cert_pem).unwrap();
        drop(roots);
        let token = token_for(&ca);
        assert_eq!(token_ca_hash(&token).unwrap(), ca.hash());
        assert!(token_ca_hash("orch-abc").is_err());
        assert!(token_ca_hash(&format!("orch.{}.short", ca.hash())).is_err());
    }
}
