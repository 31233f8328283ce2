//! The cluster zone: what the names under the cluster domain hold,
//! computed on every query from the Services and EndpointSlices of a
//! [`ServiceSource`], following the Kubernetes DNS specification
//! (<https://github.com/kubernetes/dns/blob/master/docs/specification.md>):
//!
//! | name | records |
//! | --- | --- |
//! | `SVC.NS.svc.ZONE` | A/AAAA of the cluster IPs; of the ready endpoints for a headless Service; CNAME for an ExternalName one |
//! | `HOST.SVC.NS.svc.ZONE` | A/AAAA of a headless Service's endpoint whose hostname (or dashed address) is `HOST` |
//! | `_PORT._PROTO.SVC.NS.svc.ZONE` | SRV of a named port: the Service's name, or each ready endpoint of a headless Service |
//! | `A-B-C-D.NS.pod.ZONE` | A `A.B.C.D` (as kube-dns and CoreDNS' `pods insecure`) |
//! | reverse (`in-addr.arpa`, `ip6.arpa`) | PTR of cluster IPs and headless endpoints; other addresses go upstream |
//!
//! Names are matched case-insensitively. A name that exists without
//! records of the asked type answers NODATA; one under the zone that does
//! not exist answers NXDOMAIN.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::source::ServiceSource;
use super::DnsError;

/// The default cluster domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// The default TTL of the zone's records, in seconds (CoreDNS' default).
pub const DEFAULT_TTL: u32 = 5;
/// How many CNAMEs inside the zone an answer follows.
const MAX_CNAME_CHAIN: usize = 8;

/// What the cluster zone says about one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is not ours (outside the cluster domain, or a reverse name
    /// of an address we do not know): ask the upstream servers.
    NotInZone,
    /// The name does not exist in the zone (NXDOMAIN).
    NxDomain,
    /// The name exists: `answers` are its records of the asked type (none:
    /// NODATA), `additionals` the addresses of SRV targets.
    Found {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section.
        additionals: Vec<Record>,
        /// A CNAME target outside the zone (an ExternalName Service's) whose
        /// records of the asked type the server should fetch upstream and
        /// append.
        chase: Option<Name>,
    },
}

/// One endpoint of a Service, as DNS sees it.
struct Endpoint {
    ip: IpAddr,
    /// The endpoint's hostname, or its address with dashes.
    host: String,
    /// `(name, protocol, port)` of its slice's ports.
    ports: Vec<(String, String, u16)>,
}

/// The cluster zone's records, answered from a [`ServiceSource`]. Cheap to
/// clone.
#[derive(Clone)]
pub struct Records {
    source: Arc<dyn ServiceSource>,
    /// The zone apex, lower-case, fully qualified.
    domain: Name,
    /// The same, as text without the final dot.
    domain_text: String,
    ttl: u32,
    serial: u32,
}

impl Records {
    /// The zone of `cluster.local` with a TTL of 5 s, read from `source`.
    pub fn new(source: impl ServiceSource) -> Self {
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Records {
            source: Arc::new(source),
            domain: Name::from_ascii(format!("{DEFAULT_DOMAIN}.")).expect("valid default domain"),
            domain_text: DEFAULT_DOMAIN.to_string(),
            ttl: DEFAULT_TTL,
            serial,
        }
    }

    /// The same zone under another cluster domain (e.g. `cluster.example`).
    pub fn with_domain(mut self, domain: &str) -> Result<Self, DnsError> {
        let text = domain.trim_end_matches('.').to_ascii_lowercase();
        let name = Name::from_ascii(format!("{text}."))
            .ok()
            .filter(|n| !n.is_root())
            .ok_or_else(|| DnsError::Domain(domain.to_string()))?;
        self.domain = name;
        self.domain_text = text;
        Ok(self)
    }

    /// The same zone with records of `ttl` seconds.
    pub fn with_ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// The cluster domain, fully qualified.
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    /// The TTL of the zone's records, in seconds.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The zone's SOA record, sent in the authority section of negative
    /// answers so resolvers cache them for the TTL only.
    pub fn soa(&self) -> Record {
        Record::from_rdata(self.domain.clone(), self.ttl, RData::SOA(self.soa_rdata()))
    }

    fn soa_rdata(&self) -> SOA {
        let under = |label: &str| {
            Name::from_ascii(format!("{label}.{}.", self.domain_text))
                .unwrap_or_else(|_| self.domain.clone())
        };
        SOA::new(
            under("ns.dns"),
            under("hostmaster"),
            self.serial,
            7200,
            1800,
            86400,
            self.ttl,
        )
    }

    /// Answers the question `name` `qtype` (class IN) from the zone.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Answer {
        if !self.domain.zone_of(name) {
            return self.reverse(name, qtype);
        }
        let Some(data) = self.data_at(name) else {
            return Answer::NxDomain;
        };
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let mut chase = None;
        let (mut owner, mut data) = (name.clone(), data);
        for _ in 0..MAX_CNAME_CHAIN {
            let cname = data.iter().find_map(|rdata| match rdata {
                RData::CNAME(CNAME(target)) => Some(target.clone()),
                _ => None,
            });
            match cname {
                Some(target) if qtype != RecordType::CNAME && qtype != RecordType::ANY => {
                    answers.push(Record::from_rdata(
                        owner,
                        self.ttl,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    if !self.domain.zone_of(&target) {
                        chase = Some(target);
                        break;
                    }
                    match self.data_at(&target) {
                        Some(next) => (owner, data) = (target, next),
                        None => break,
                    }
                }
                _ => {
                    for rdata in data.into_iter().filter(|r| answers_type(r, qtype)) {
                        if let RData::SRV(srv) = &rdata {
                            additionals.extend(self.addresses_of(&srv.target));
                        }
                        answers.push(Record::from_rdata(owner.clone(), self.ttl, rdata));
                    }
                    break;
                }
            }
        }
        Answer::Found {
            answers,
            additionals,
            chase,
        }
    }

    /// The A/AAAA records at `name`, if it is in the zone.
    fn addresses_of(&self, name: &Name) -> Vec<Record> {
        if !self.domain.zone_of(name) {
            return Vec::new();
        }
        self.data_at(name)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| matches!(r, RData::A(_) | RData::AAAA(_)))
            .map(|r| Record::from_rdata(name.clone(), self.ttl, r))
            .collect()
    }

    /// Every record at `name` (under the zone), or `None` if it does not
    /// exist.
    fn data_at(&self, name: &Name) -> Option<Vec<RData>> {
        let inside = name.iter().count() - self.domain.iter().count();
        let labels: Vec<String> = name
            .iter()
            .take(inside)
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        match labels.as_slice() {
            [] => Some(vec![RData::SOA(self.soa_rdata())]),
            ["svc"] | ["pod"] | [_, "pod"] => Some(Vec::new()),
            [ns, "svc"] => self.source.has_namespace(ns).then(Vec::new),
            [svc, ns, "svc"] => self.service_data(ns, svc),
            [proto, svc, ns, "svc"] if proto.starts_with('_') => {
                // The parent of the SRV names: exists if one port has this
                // protocol.
                let spec = self
                    .source
                    .service(ns, svc)?
                    .spec
                    .clone()
                    .unwrap_or_default();
                let has = service_ports(&spec)
                    .iter()
                    .any(|(_, p, _)| p == &proto[1..]);
                has.then(Vec::new)
            }
            [host, svc, ns, "svc"] => self.endpoint_data(ns, svc, host),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv_data(ns, svc, &port[1..], &proto[1..])
            }
            [ip, _, "pod"] => pod_address(ip).map(|ip| vec![address(ip)]),
            _ => None,
        }
    }

    /// `SVC.NS.svc.ZONE`.
    fn service_data(&self, ns: &str, name: &str) -> Option<Vec<RData>> {
        let service = self.source.service(ns, name)?;
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec
                .external_name
                .as_deref()
                .and_then(|n| Name::from_ascii(format!("{}.", n.trim_end_matches('.'))).ok());
            return Some(target.map(|t| RData::CNAME(CNAME(t))).into_iter().collect());
        }
        if is_headless(&spec) {
            let mut ips: Vec<IpAddr> = self
                .endpoints(&service, ns, name)
                .iter()
                .map(|e| e.ip)
                .collect();
            ips.dedup();
            return Some(ips.into_iter().map(address).collect());
        }
        Some(cluster_ips(&spec).into_iter().map(address).collect())
    }

    /// `HOST.SVC.NS.svc.ZONE`: the endpoints of a headless Service named by
    /// their hostname, or by their address with dashes.
    fn endpoint_data(&self, ns: &str, name: &str, host: &str) -> Option<Vec<RData>> {
        let service = self.source.service(ns, name)?;
        if !is_headless(&service.spec.clone().unwrap_or_default()) {
            return None;
        }
        let mut ips: Vec<IpAddr> = self
            .endpoints(&service, ns, name)
            .into_iter()
            .filter(|e| e.host == host)
            .map(|e| e.ip)
            .collect();
        ips.dedup();
        (!ips.is_empty()).then(|| ips.into_iter().map(address).collect())
    }

    /// `_PORT._PROTO.SVC.NS.svc.ZONE`.
    fn srv_data(&self, ns: &str, name: &str, port: &str, proto: &str) -> Option<Vec<RData>> {
        let service = self.source.service(ns, name)?;
        let spec = service.spec.clone().unwrap_or_default();
        let wanted = |(n, p, _): &&(String, String, u16)| n == port && p == proto;
        let service_port = service_ports(&spec)
            .iter()
            .find(wanted)
            .map(|(_, _, number)| *number);
        if !is_headless(&spec) {
            let target = if spec.type_.as_deref() == Some("ExternalName") {
                Name::from_ascii(format!(
                    "{}.",
                    spec.external_name.as_deref()?.trim_end_matches('.')
                ))
                .ok()?
            } else {
                self.name_of(&[name, ns, "svc"])?
            };
            return service_port.map(|p| vec![RData::SRV(SRV::new(0, 100, p, target))]);
        }
        // Headless: one SRV per ready endpoint, to its own name and port.
        let endpoints = self.endpoints(&service, ns, name);
        let mut targets = BTreeSet::new();
        for endpoint in &endpoints {
            if let Some((_, _, number)) = endpoint.ports.iter().find(wanted) {
                targets.insert((endpoint.host.clone(), *number));
            }
        }
        if service_port.is_none() && targets.is_empty() {
            return None;
        }
        let weight = (100 / targets.len().max(1)).max(1) as u16;
        Some(
            targets
                .into_iter()
                .filter_map(|(host, number)| {
                    let target = self.name_of(&[&host, name, ns, "svc"])?;
                    Some(RData::SRV(SRV::new(0, weight, number, target)))
                })
                .collect(),
        )
    }

    /// The ready endpoints of a Service (all of them if it publishes
    /// not-ready addresses), sorted by address.
    fn endpoints(&self, service: &Service, ns: &str, name: &str) -> Vec<Endpoint> {
        let publish_not_ready = service
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        let mut endpoints = Vec::new();
        for slice in self.source.slices_of(ns, name) {
            let ports: Vec<(String, String, u16)> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let number = u16::try_from(p.port?).ok()?;
                    Some((
                        p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                        p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        number,
                    ))
                })
                .collect();
            for endpoint in &slice.endpoints {
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                if !ready && !publish_not_ready {
                    continue;
                }
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue; // FQDN slices name no address.
                    };
                    let host = match &endpoint.hostname {
                        Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
                        _ => dashed(ip),
                    };
                    endpoints.push(Endpoint {
                        ip,
                        host,
                        ports: ports.clone(),
                    });
                }
            }
        }
        endpoints.sort_by(|a, b| a.ip.cmp(&b.ip).then_with(|| a.host.cmp(&b.host)));
        endpoints
    }

    /// `labels.ZONE.` as a name.
    fn name_of(&self, labels: &[&str]) -> Option<Name> {
        Name::from_ascii(format!("{}.{}.", labels.join("."), self.domain_text)).ok()
    }

    /// A reverse name (`d.c.b.a.in-addr.arpa`, `…ip6.arpa`) of a cluster IP
    /// or of a headless Service's endpoint: PTR to its name. Any other name
    /// is not ours.
    fn reverse(&self, name: &Name, qtype: RecordType) -> Answer {
        if qtype != RecordType::PTR && qtype != RecordType::ANY {
            return Answer::NotInZone;
        }
        let Ok(net) = name.parse_arpa_name() else {
            return Answer::NotInZone;
        };
        if net.prefix_len() != net.max_prefix_len() {
            return Answer::NotInZone;
        }
        let ip = net.addr();
        let mut targets = Vec::new();
        for service in self.source.services() {
            let (Some(ns), Some(svc)) = (
                service.metadata.namespace.as_deref(),
                service.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let spec = service.spec.clone().unwrap_or_default();
            if cluster_ips(&spec).contains(&ip) {
                targets.extend(self.name_of(&[svc, ns, "svc"]));
            } else if is_headless(&spec) {
                for endpoint in self.endpoints(&service, ns, svc) {
                    if endpoint.ip == ip {
                        targets.extend(self.name_of(&[&endpoint.host, svc, ns, "svc"]));
                    }
                }
            }
        }
        if targets.is_empty() {
            return Answer::NotInZone;
        }
        targets.sort();
        targets.dedup();
        Answer::Found {
            answers: targets
                .into_iter()
                .map(|t| Record::from_rdata(name.clone(), self.ttl, RData::PTR(PTR(t))))
                .collect(),
            additionals: Vec::new(),
            chase: None,
        }
    }
}

/// True when a record of `rdata`'s type answers a question of `qtype`.
fn answers_type(rdata: &RData, qtype: RecordType) -> bool {
    qtype == RecordType::ANY || rdata.record_type() == qtype
}

/// A headless Service: `clusterIP: None`.
fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ip.as_deref() == Some("None")
}

/// The cluster IPs of a Service (both families for a dual-stack one).
fn cluster_ips(spec: &ServiceSpec) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    // `clusterIP` repeats `clusterIPs[0]`; keep the order, drop the repeat.
    let mut seen = Vec::new();
    ips.retain(|ip| {
        let new = !seen.contains(ip);
        seen.push(*ip);
        new
    });
    ips
}

/// `(name, protocol, port)` of a Service's named ports, lower-case.
fn service_ports(spec: &ServiceSpec) -> Vec<(String, String, u16)> {
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let name = p.name.as_deref().filter(|n| !n.is_empty())?;
            Some((
                name.to_ascii_lowercase(),
                p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                u16::try_from(p.port).ok()?,
            ))
        })
        .collect()
}

/// The A or AAAA record data of an address.
fn address(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// An address as a DNS label: `10-0-0-1`, `fd00--1`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address of a pod name's first label: `10-0-0-1` → 10.0.0.1,
/// `fd00--1` → fd00::1.
fn pod_address(label: &str) -> Option<IpAddr> {
    if let Ok(ip) = label.replace('-', ".").parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}
