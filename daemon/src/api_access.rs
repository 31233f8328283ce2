//! How `orchd` commands reach a cluster's API: from a master's data dir
//! (its endpoints, token and CA) or from a kubeconfig (its current
//! context's server, CA and token).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::data_dir::DataDir;

/// An API address with the credentials to call it.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    /// `host:port`.
    pub server: String,
    /// The CA the server's certificate chains to (PEM).
    pub ca_pem: String,
    /// The bearer token.
    pub token: Option<String>,
}

impl ApiAccess {
    /// The API of the master whose data dir this is, with its admin
    /// token.
    pub fn from_data_dir(data: &DataDir) -> Result<ApiAccess> {
        let endpoints = data.endpoints()?;
        let token = data
            .token()?
            .with_context(|| format!("{} has no token", data.root().display()))?;
        let ca = data
            .ca()?
            .with_context(|| format!("{} has no CA", data.root().display()))?;
        Ok(ApiAccess {
            server: endpoints.api,
            ca_pem: ca.cert_pem,
            token: Some(crate::data_dir::admin_token(&token)),
        })
    }

    /// The API the current context of the kubeconfig at `path` names.
    pub fn from_kubeconfig(path: &Path) -> Result<ApiAccess> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        parse_kubeconfig(&text).with_context(|| format!("in {}", path.display()))
    }

    /// A client of this API.
    pub fn client(&self) -> Result<orch_core::Client> {
        orch_core::Client::https_servers(
            vec![self.server.clone()],
            self.token.clone(),
            &self.ca_pem,
        )
        .map_err(|e| anyhow::anyhow!("{}", e.message))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<Context_>>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Deserialize)]
struct Context_ {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    certificate_authority: Option<String>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    token: Option<String>,
}

fn find<'a, T>(items: &'a [Named<T>], name: &str, what: &str) -> Result<&'a T> {
    items
        .iter()
        .find(|item| item.name == name)
        .map(|item| &item.value)
        .with_context(|| format!("no {what} named {name:?}"))
}

fn parse_kubeconfig(text: &str) -> Result<ApiAccess> {
    use base64::Engine;
    let config: Kubeconfig = serde_yaml_ng::from_str(text).context("not a kubeconfig")?;
    let context = find(&config.contexts, &config.current_context, "context")?;
    let cluster = find(&config.clusters, &context.cluster, "cluster")?;
    let token = if context.user.is_empty() {
        None
    } else {
        find(&config.users, &context.user, "user")?.token.clone()
    };
    let Some(server) = cluster.server.strip_prefix("https://") else {
        bail!(
            "the server {} is not https:// (orchd serves its API over TLS)",
            cluster.server
        );
    };
    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .context("certificate-authority-data is not base64")?;
            String::from_utf8(bytes).context("certificate-authority-data is not PEM")?
        }
        (None, Some(file)) => {
            std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
        }
        (None, None) => bail!(
            "the cluster {} names no certificate authority",
            context.cluster
        ),
    };
    Ok(ApiAccess {
        server: server.trim_end_matches('/').to_string(),
        ca_pem,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_orchd_writes_gives_its_server_ca_and_token() {
        let text = crate::data_dir::kubeconfig("127.0.0.1:6443", "secret", "PEM\n");
        let access = parse_kubeconfig(&text).unwrap();
        assert_eq!(access.server, "127.0.0.1:6443");
        assert_eq!(access.ca_pem, "PEM\n");
        assert_eq!(access.token.as_deref(), Some("secret"));
        let other = text.replace("current-context: orch", "current-context: other");
        let err = parse_kubeconfig(&other).unwrap_err();
        assert!(
            format!("{err:#}").contains("no context named \"other\""),
            "{err:#}"
        );
        let plain = text.replace("https://", "http://");
        assert!(parse_kubeconfig(&plain).is_err());
    }
}
