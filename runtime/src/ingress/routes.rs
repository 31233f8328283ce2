//! The routing table, as pure functions of the objects: which backend of
//! which Ingress a request (host, path) goes to ([`route`]), and which
//! endpoints that backend has ([`endpoints`]).
//!
//! Precedence follows Kubernetes (and Gateway API, which spells it out):
//! every (rule, path) of every Ingress of the class is a candidate when its
//! host and path match; the best candidate has the most specific host
//! (exact, then wildcard, then none), then the longest path, then `Exact`
//! before `Prefix`; equal candidates go to the oldest Ingress (then the
//! first by namespace/name), as ingress-nginx resolves conflicts. So a
//! request for a host with rules of its own still reaches a host-less rule
//! when none of its host's paths match. When no path matches, the request
//! goes to a `spec.defaultBackend`: that of an Ingress with a rule for the
//! request's host if there is one (most specific host first), else the
//! oldest Ingress' that has one.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress, IngressBackend, IngressRule};

use super::error::IngressError;
use super::source::IngressSource;

/// The class of Ingresses the proxy serves unless told otherwise.
pub const DEFAULT_CLASS: &str = "orch";

/// The annotation that named an Ingress' class before
/// `spec.ingressClassName`.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// How a rule's host matched the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostMatch {
    /// The rule has no host: any host.
    Any,
    /// `*.example.com` matched one label in front of `example.com`.
    Wildcard,
    /// The same host.
    Exact,
}

/// How a path matched the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathMatch {
    /// `Prefix` (or `ImplementationSpecific`): element-wise prefix.
    Prefix,
    /// `Exact`: the same path.
    Exact,
}

/// What of an Ingress matched a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    /// A path of a rule.
    Rule {
        /// How the rule's host matched.
        host: HostMatch,
        /// The path as written in the Ingress.
        path: String,
        /// How it matched.
        path_match: PathMatch,
    },
    /// No rule matched: the Ingress' `spec.defaultBackend`.
    DefaultBackend,
}

/// The port of a Service an Ingress backend names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    /// `service.port.number`.
    Number(i32),
    /// `service.port.name`.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

/// A backend Service port of an Ingress (in the Ingress' namespace).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    /// The namespace of the Ingress and the Service.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service's port.
    pub port: PortRef,
}

/// Shown as `namespace/name`.
impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a request was routed: an Ingress, what of it matched, and the
/// backend that says.
#[derive(Debug, Clone)]
pub struct Route {
    /// The Ingress.
    pub ingress: Arc<Ingress>,
    /// What of it matched.
    pub matched: Matched,
    /// The backend, as written.
    pub backend: IngressBackend,
}

impl Route {
    /// `namespace/name` of the Ingress.
    pub fn ingress_key(&self) -> String {
        format!("{}/{}", namespace_of(&self.ingress), name_of(&self.ingress))
    }

    /// The Service port the backend names, or why it names none.
    pub fn service(&self) -> Result<ServiceRef, IngressError> {
        let invalid = |detail: &str| IngressError::InvalidBackend {
            ingress: self.ingress_key(),
            detail: detail.to_string(),
        };
        let Some(service) = &self.backend.service else {
            return Err(invalid("only Service backends are supported"));
        };
        let port = service.port.as_ref();
        let port = match (
            port.and_then(|p| p.number),
            port.and_then(|p| p.name.as_deref()),
        ) {
            (Some(number), _) => PortRef::Number(number),
            (None, Some(name)) if !name.is_empty() => PortRef::Name(name.to_string()),
            _ => {
                return Err(invalid(&format!(
                    "the backend Service {} names no port",
                    service.name
                )))
            }
        };
        Ok(ServiceRef {
            namespace: namespace_of(&self.ingress).to_string(),
            name: service.name.clone(),
            port,
        })
    }
}

fn namespace_of(ingress: &Ingress) -> &str {
    ingress.metadata.namespace.as_deref().unwrap_or("default")
}

fn name_of(ingress: &Ingress) -> &str {
    ingress.metadata.name.as_deref().unwrap_or("")
}

/// True if the proxy of `class` serves `ingress`: its
/// `spec.ingressClassName`, else its `kubernetes.io/ingress.class`
/// annotation, is `class` or unset.
pub fn class_matches(ingress: &Ingress, class: &str) -> bool {
    let named = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLASS_ANNOTATION))
                .map(String::as_str)
        });
    named.is_none_or(|named| named == class)
}

/// The host a request is for, as rules are matched against: without the
/// port, lower case, without a trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// How `rule_host` (a rule's `host`) matches `host` (normalized).
pub fn host_matches(rule_host: Option<&str>, host: &str) -> Option<HostMatch> {
    let rule_host = match rule_host {
        None | Some("") => return Some(HostMatch::Any),
        Some(h) => h,
    };
    if let Some(suffix) = rule_host.strip_prefix("*.") {
        let (first, rest) = host.split_once('.')?;
        return (!first.is_empty() && rest.eq_ignore_ascii_case(suffix))
            .then_some(HostMatch::Wildcard);
    }
    rule_host
        .eq_ignore_ascii_case(host)
        .then_some(HostMatch::Exact)
}

/// How an Ingress path matches the request path: its length (of the path
/// without trailing slashes for prefixes, as `/foo/` is the prefix `/foo`)
/// and kind. `Exact` is the same string; `Prefix` and
/// `ImplementationSpecific` (and any other type) match element by element:
/// `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
pub fn path_matches(path: &HTTPIngressPath, request_path: &str) -> Option<(usize, PathMatch)> {
    let rule_path = match path.path.as_deref() {
        None | Some("") => "/",
        Some(p) => p,
    };
    if path.path_type == "Exact" {
        return (rule_path == request_path).then_some((rule_path.len(), PathMatch::Exact));
    }
    let prefix = rule_path.trim_end_matches('/');
    let matches = prefix.is_empty()
        || request_path == prefix
        || (request_path.starts_with(prefix) && request_path.as_bytes()[prefix.len()] == b'/');
    matches.then_some((prefix.len(), PathMatch::Prefix))
}

/// The rank of a candidate: higher is better.
type Rank = (HostMatch, usize, PathMatch);

/// Where a request for `host` (a Host header; its port is ignored) and
/// `path` goes, among the Ingresses of `class`; `None`: nowhere (404).
pub fn route(ingresses: &[Arc<Ingress>], class: &str, host: &str, path: &str) -> Option<Route> {
    let host = normalize_host(host);
    let mut eligible: Vec<&Arc<Ingress>> = ingresses
        .iter()
        .filter(|i| class_matches(i, class))
        .collect();
    // Oldest first, so that on equal ranks the oldest Ingress wins.
    eligible.sort_by(|a, b| {
        let age = |i: &Ingress| i.metadata.creation_timestamp.as_ref().map(|t| t.0);
        age(a)
            .cmp(&age(b))
            .then_with(|| namespace_of(a).cmp(namespace_of(b)))
            .then_with(|| name_of(a).cmp(name_of(b)))
    });
    let mut best: Option<(Rank, Route)> = None;
    for ingress in &eligible {
        for rule in rules_of(ingress) {
            let Some(host_match) = host_matches(rule.host.as_deref(), &host) else {
                continue;
            };
            for http_path in rule.http.iter().flat_map(|h| &h.paths) {
                let Some((len, path_match)) = path_matches(http_path, path) else {
                    continue;
                };
                let rank = (host_match, len, path_match);
                if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                    let route = Route {
                        ingress: Arc::clone(ingress),
                        matched: Matched::Rule {
                            host: host_match,
                            path: http_path.path.clone().unwrap_or_else(|| "/".into()),
                            path_match,
                        },
                        backend: http_path.backend.clone(),
                    };
                    best = Some((rank, route));
                }
            }
        }
    }
    if let Some((_, route)) = best {
        return Some(route);
    }
    // The default backend of the Ingress whose rules are closest to the host.
    let mut default: Option<(Option<HostMatch>, Route)> = None;
    for ingress in &eligible {
        let Some(backend) = ingress
            .spec
            .as_ref()
            .and_then(|s| s.default_backend.clone())
        else {
            continue;
        };
        let closeness = rules_of(ingress)
            .filter_map(|r| host_matches(r.host.as_deref(), &host))
            .max();
        if default.as_ref().is_none_or(|(c, _)| closeness > *c) {
            let route = Route {
                ingress: Arc::clone(ingress),
                matched: Matched::DefaultBackend,
                backend,
            };
            default = Some((closeness, route));
        }
    }
    default.map(|(_, route)| route)
}

fn rules_of(ingress: &Ingress) -> impl Iterator<Item = &IngressRule> {
    ingress.spec.iter().flat_map(|s| s.rules.iter().flatten())
}

/// The ready endpoints (`address:targetPort`, sorted, without duplicates)
/// of a backend: the Service's port, then the EndpointSlices of the
/// Service (`kubernetes.io/service-name`), their port of the same name as
/// the Service port, and their endpoints whose `ready` is not false (first
/// address each, as kube-proxy takes). `ingress` (`namespace/name`) is for
/// the errors.
pub fn endpoints(
    source: &dyn IngressSource,
    ingress: &str,
    backend: &ServiceRef,
) -> Result<Vec<SocketAddr>, IngressError> {
    let error =
        |make: fn(String, ServiceRef) -> IngressError| make(ingress.to_string(), backend.clone());
    let service = source
        .service(&backend.namespace, &backend.name)
        .ok_or_else(|| {
            error(|ingress, service| IngressError::ServiceNotFound { ingress, service })
        })?;
    let mut ports = service.spec.iter().flat_map(|s| s.ports.iter().flatten());
    let port = ports
        .find(|p| match &backend.port {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
        })
        .ok_or_else(|| error(|ingress, service| IngressError::PortNotFound { ingress, service }))?;
    let port_name = port.name.as_deref().unwrap_or("");
    let mut found = Vec::new();
    for slice in source.slices_of(&backend.namespace, &backend.name) {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let target = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let Some(target) = target else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let address = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok());
            if let Some(address) = address {
                found.push(SocketAddr::new(address, target));
            }
        }
    }
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Err(error(|ingress, service| IngressError::NoEndpoints {
            ingress,
            service,
        }));
    }
    Ok(found)
}
