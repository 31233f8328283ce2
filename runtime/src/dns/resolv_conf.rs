//! `resolv.conf` both ways: the node's, read for the upstream servers and
//! for pods of `dnsPolicy: Default`; a pod's, written following the
//! kubelet's rules (`pkg/kubelet/network/dns`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use k8s_openapi::api::core::v1::PodDNSConfig;

/// The most nameservers a resolver uses (glibc's `MAXNS`); more are cut.
const MAX_NAMESERVERS: usize = 3;
/// The most search domains a pod gets (Kubernetes' expanded DNS config).
const MAX_SEARCHES: usize = 32;
/// The longest search line a pod gets, in characters.
const MAX_SEARCH_CHARS: usize = 2048;
/// The longest search domain kept (glibc 2.28 aborts on longer ones).
const MAX_SEARCH_LEN: usize = 253;

/// The upstream servers of a `resolv.conf`: its `nameserver` lines, port
/// 53, in order. Leaving out addresses that would send queries back to the
/// cluster DNS itself (or to a host-only stub such as systemd-resolved's
/// 127.0.0.53, unreachable from pods) is the caller's job.
pub fn upstream_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    parse(text)
        .nameservers
        .iter()
        .filter_map(|ns| {
            if let Ok(ip) = ns.parse::<IpAddr>() {
                return Some(SocketAddr::new(ip, 53));
            }
            // `fe80::1%2`: a link-local IPv6 address with its interface.
            let (ip, scope) = ns.split_once('%')?;
            let ip = ip.parse::<Ipv6Addr>().ok()?;
            let scope = scope.parse::<u32>().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)))
        })
        .collect()
}

/// The `/etc/resolv.conf` of a pod, as the kubelet builds it.
///
/// - `dns_policy` (`pod.spec.dnsPolicy`, `None` or unknown: `ClusterFirst`):
///   - `ClusterFirst`: `nameserver` the cluster DNS, `search
///     NS.svc.DOMAIN svc.DOMAIN DOMAIN` then the host's search domains,
///     `options ndots:5`; but a `host_network` pod gets `Default`, as it
///     does when `cluster_dns` is empty;
///   - `ClusterFirstWithHostNet`: `ClusterFirst`, host network or not;
///   - `Default`: the host's nameservers, search domains and options
///     (from `host_resolv_conf`, the node's resolv.conf);
///   - `None`: nothing but `dns_config`;
/// - `dns_config` (`pod.spec.dnsConfig`) is merged on top whatever the
///   policy: its nameservers and searches appended (duplicates dropped),
///   its options replacing those of the same name;
/// - then the limits: 3 nameservers, 32 search domains of at most 253
///   characters, 2048 characters of search line.
pub fn pod_resolv_conf(
    dns_policy: Option<&str>,
    host_network: bool,
    namespace: &str,
    cluster_dns: &[IpAddr],
    cluster_domain: &str,
    host_resolv_conf: &str,
    dns_config: Option<&PodDNSConfig>,
) -> String {
    let cluster_first = match dns_policy.unwrap_or("ClusterFirst") {
        "None" => None,
        "Default" => Some(false),
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" => Some(!host_network),
        other => {
            tracing::warn!(policy = other, "unknown dnsPolicy, using ClusterFirst");
            Some(true)
        }
    };
    let mut conf = match cluster_first {
        None => ResolvConf::default(),
        Some(true) if !cluster_dns.is_empty() => {
            let host = parse(host_resolv_conf);
            let domain = cluster_domain.trim_end_matches('.');
            let mut searches = Vec::new();
            if !domain.is_empty() {
                searches = vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_string(),
                ];
            }
            searches.extend(host.searches);
            ResolvConf {
                nameservers: cluster_dns.iter().map(ToString::to_string).collect(),
                searches,
                options: vec!["ndots:5".to_string()],
            }
        }
        Some(_) => parse(host_resolv_conf),
    };
    if let Some(extra) = dns_config {
        conf.nameservers
            .extend(extra.nameservers.iter().flatten().cloned());
        conf.searches
            .extend(extra.searches.iter().flatten().cloned());
        for option in extra.options.iter().flatten() {
            let Some(name) = option.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let text = match &option.value {
                Some(value) if !value.is_empty() => format!("{name}:{value}"),
                _ => name.to_string(),
            };
            match conf.options.iter_mut().find(|o| option_name(o) == name) {
                Some(existing) => *existing = text,
                None => conf.options.push(text),
            }
        }
    }
    conf.nameservers = dedup(conf.nameservers);
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches = fit_searches(dedup(conf.searches));
    conf.render()
}

/// What a resolv.conf says, as the kubelet reads it.
#[derive(Debug, Default, PartialEq, Eq)]
struct ResolvConf {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

impl ResolvConf {
    fn render(&self) -> String {
        let mut text = String::new();
        for ns in &self.nameservers {
            text.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.searches.is_empty() {
            text.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            text.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        text
    }
}

/// Parses a resolv.conf: `nameserver` lines add up, the last `search` and
/// the last `options` line win (as in glibc); comments start with `#` or
/// `;`.
fn parse(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => conf.nameservers.extend(fields.next().map(str::to_string)),
            Some("search") => {
                conf.searches = fields
                    .filter(|s| *s != ".")
                    .map(|s| s.trim_end_matches('.').to_string())
                    .collect();
            }
            Some("options") => conf.options = fields.map(str::to_string).collect(),
            _ => {}
        }
    }
    conf
}

/// An option's name: `ndots` of `ndots:5`.
fn option_name(option: &str) -> &str {
    option.split_once(':').map_or(option, |(name, _)| name)
}

/// The first of each value, in order.
fn dedup(values: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        if !out.contains(&value) {
            out.push(value);
        }
    }
    out
}

/// The search domains within the limits, as the kubelet cuts them.
fn fit_searches(mut searches: Vec<String>) -> Vec<String> {
    let before = searches.len();
    searches.truncate(MAX_SEARCHES);
    searches.retain(|s| s.len() <= MAX_SEARCH_LEN);
    while searches
        .iter()
        .map(|s| s.len() + 1)
        .sum::<usize>()
        .saturating_sub(1)
        > MAX_SEARCH_CHARS
    {
        searches.pop();
    }
    if searches.len() != before {
        tracing::warn!(
            applied = searches.join(" "),
            "pod DNS search line limits exceeded, some search domains omitted"
        );
    }
    searches
}
