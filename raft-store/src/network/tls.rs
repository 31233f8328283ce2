//! Mutual TLS between members: every member presents a certificate issued
//! by the cluster's CA and accepts only peers (and clients) that present
//! one too. Without a certificate of that CA a connection fails in the
//! handshake, before any request is read.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::StoreError;

/// The TLS settings of a member (or of a client of the members): whom to
/// trust and what to present.
#[derive(Clone)]
pub struct PeerTls {
    /// Accepting connections: presents the member's certificate, requires
    /// one of the CA from the other side.
    pub server: Arc<ServerConfig>,
    /// Making connections: presents the certificate, trusts only members
    /// whose certificate the CA issued for the address dialled.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

/// rustls' ring provider, the one crypto backend of orch.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::InvalidArgument(format!("peer TLS: {what}: {e}"))
}

impl PeerTls {
    /// Settings trusting the CA of `ca_pem` and presenting the certificate
    /// chain `chain_pem` (leaf first) with its key `key_pem`. The leaf
    /// must be valid for both server and client authentication, and name
    /// the addresses the member is dialled at.
    pub fn from_pem(ca_pem: &str, chain_pem: &str, key_pem: &str) -> Result<PeerTls, StoreError> {
        let provider = crypto_provider();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| tls_error("reading the CA certificate", e))?)
                .map_err(|e| tls_error("trusting the CA certificate", e))?;
        }
        if roots.is_empty() {
            return Err(tls_error("the CA bundle", "holds no certificate"));
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| tls_error("reading the member certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| tls_error("reading the member key", e))?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| tls_error("verifying peers", e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("protocol versions", e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_error("the member certificate", e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| tls_error("verifying members", e))?;
        // No ALPN here: the HTTP connector sets h2 itself.
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("protocol versions", e))?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error("the client certificate", e))?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}
