//! A cluster's certificate authority: generated once (rcgen, ECDSA
//! P-256), it issues the API servers' serving certificates and the
//! masters' peer certificates (server and client authentication, for the
//! store's mutual TLS).

use std::net::IpAddr;

use orch_raft_store::network::PeerTls;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct CaError {
    what: String,
    reason: String,
}

impl CaError {
    fn new(what: &str, reason: impl std::fmt::Display) -> Self {
        CaError {
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }
}

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
    pub fn generate() -> Result<ClusterCa, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::new("generating the CA key", e))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| CaError::new("signing the CA certificate", e))?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Its SHA-256, as join tokens carry it.
    pub fn hash(&self) -> String {
        crate::tls::ca_hash(&self.cert_pem)
    }

    /// A serving certificate for a master's API reached at `ips` and
    /// `names`; returns (certificate chain PEM: leaf then CA, key PEM).
    pub fn issue_server_cert(
        &self,
        ips: &[IpAddr],
        names: &[String],
    ) -> Result<(String, String), CaError> {
        self.issue(
            "orch-apiserver",
            ips,
            names,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A master's certificate for its peers, valid for serving and as a
    /// client (mutual TLS) at `ips` and `names`; (chain PEM, key PEM).
    pub fn issue_peer_cert(
        &self,
        ips: &[IpAddr],
        names: &[String],
    ) -> Result<(String, String), CaError> {
        self.issue(
            "orch-peer",
            ips,
            names,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// The peer TLS settings of a master (or of `orchd` commands run on
    /// a master's host) reached at `ips` and `names`.
    pub fn peer_tls(&self, ips: &[IpAddr], names: &[String]) -> Result<PeerTls, CaError> {
        let (chain, key) = self.issue_peer_cert(ips, names)?;
        PeerTls::from_pem(&self.cert_pem, &chain, &key)
            .map_err(|e| CaError::new("configuring peer TLS", e))
    }

    fn issue(
        &self,
        common_name: &str,
        ips: &[IpAddr],
        names: &[String],
        purposes: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), CaError> {
        let ca_key =
            KeyPair::from_pem(&self.key_pem).map_err(|e| CaError::new("reading the CA key", e))?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
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
        params.extended_key_usages = purposes;
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let key = KeyPair::generate().map_err(|e| CaError::new("generating a key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| CaError::new(&format!("signing the {common_name} certificate"), e))?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca() {
        let ca = ClusterCa::generate().unwrap();
        let (chain, _key) = ca
            .issue_server_cert(&["127.0.0.1".parse().unwrap()], &["localhost".into()])
            .unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(chain.ends_with(&ca.cert_pem));
        ca.peer_tls(&["127.0.0.1".parse().unwrap()], &[]).unwrap();
        assert_ne!(ca.hash(), ClusterCa::generate().unwrap().hash());
    }
}
