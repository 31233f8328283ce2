//! TLS for the API: the client side (trusting the cluster's CA), and the
//! bootstrap of a new node, which learns the CA from the API server and
//! pins it to the hash its join token carries (as k3s does).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The crypto orch's TLS uses (ring), without a process-wide default.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM bundle.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, ApiError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::bad_request(format!("reading the CA certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ApiError::bad_request("the CA bundle holds no certificate"));
    }
    Ok(certs)
}

/// A client configuration trusting only the CA certificates in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<ClientConfig, ApiError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| ApiError::bad_request(format!("the CA certificate is unusable: {e}")))?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client configuration for plain-HTTP clients (which never use it: it
/// trusts nothing).
pub fn client_config_without_roots() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// The SHA-256 of a CA bundle as join tokens carry it (hex).
pub fn ca_hash(ca_pem: &str) -> String {
    hex_string(&Sha256::digest(ca_pem.as_bytes()))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA hash a join token names: tokens read `orch.<hash>.<secret>`,
/// the hash being the SHA-256 of the cluster CA's PEM in hex.
pub fn token_ca_hash(token: &str) -> Option<&str> {
    match token.split('.').collect::<Vec<_>>().as_slice() {
        ["orch", hash, secret]
            if hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && secret.len() >= 16 =>
        {
            Some(hash)
        }
        _ => None,
    }
}

/// What an agent token's secret starts with.
const AGENT_SECRET_PREFIX: &str = "agent-";

/// The agents' token of the cluster whose join token (or agents' token)
/// is `token`: `orch.<CA hash>.agent-<SHA-256 of a label and the join
/// token>`. It names the CA as the join token does, so agents check the
/// CA with it; the API accepts it for everything but the cluster's
/// administration (members, the join bundle with the CA key, key
/// rotation), and the API server presents it to the agents. `None` for a
/// malformed token.
pub fn agent_token_for(token: &str) -> Option<String> {
    let hash = token_ca_hash(token)?;
    if is_agent_token(token) {
        return Some(token.to_string());
    }
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update(b"orch agent token\0");
    digest.update(token.as_bytes());
    let secret: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("orch.{hash}.{AGENT_SECRET_PREFIX}{secret}"))
}

/// Whether `token` is an agents' token (not a join token).
pub fn is_agent_token(token: &str) -> bool {
    token
        .rsplit('.')
        .next()
        .is_some_and(|secret| secret.starts_with(AGENT_SECRET_PREFIX))
}

/// Accepts any server certificate: only for fetching the CA bundle, whose
/// hash is checked against the token afterwards.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Fetches the CA bundle from the API server at `addr` (`GET /cacerts`)
/// and accepts it only if its SHA-256 is `expected_hash`: what a node that
/// holds nothing but a join token trusts the cluster with.
pub async fn fetch_ca(addr: &str, expected_hash: &str) -> Result<String, ApiError> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<Bytes>>(connector);
    let uri = format!("https://{addr}/cacerts");
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.get(
            uri.parse()
                .map_err(|e| ApiError::bad_request(format!("{uri}: {e}")))?,
        ),
    )
    .await
    .map_err(|_| ApiError::unavailable(format!("{uri}: no answer within 10s")))?
    .map_err(|e| ApiError::unavailable(format!("{uri}: {e}")))?;
    if !response.status().is_success() {
        return Err(ApiError::unavailable(format!(
            "{uri} answered {}",
            response.status()
        )));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::unavailable(format!("{uri}: {e}")))?
        .to_bytes();
    let pem = String::from_utf8_lossy(&body).into_owned();
    let hash = ca_hash(&pem);
    if hash != expected_hash {
        return Err(ApiError::unauthorized(format!(
            "the CA served at {addr} (sha256 {hash}) is not the one the token names ({expected_hash})"
        )));
    }
    Ok(pem)
}
