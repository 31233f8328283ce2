//! The service proxy's nftables rules, as kube-proxy's nftables mode
//! writes them, in a table of the agent's own (`ip <bridge>-svc`):
//!
//! ```text
//! table ip orch0-svc {
//!     map service-ips { type ipv4_addr . inet_proto . inet_service : verdict }
//!     map service-nodeports { type inet_proto . inet_service : verdict }
//!     set no-endpoints { type ipv4_addr . inet_proto . inet_service }
//!     chain prerouting  { type nat hook prerouting priority dstnat; jump services }
//!     chain output      { type nat hook output priority -100; jump services }
//!     chain postrouting { type nat hook postrouting priority srcnat;
//!                         meta mark & 0x4000 == 0 return; meta mark set meta mark ^ 0x4000 masquerade }
//!     chain filter-forward, filter-output { ip daddr . meta l4proto . th dport @no-endpoints reject }
//!     chain services {
//!         ip daddr . meta l4proto . th dport vmap @service-ips
//!         fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
//!     }
//!     chain svc-NS/NAME/tcp/PORT {               # one per Service port
//!         ip saddr != @cluster-cidrs jump mark-for-masquerade
//!         meta l4proto tcp dnat ip to numgen random mod 3 map { 0 : 10.244.1.5 . 8080, 1 : ..., 2 : ... }
//!     }
//!     chain ext-NS/NAME/tcp/PORT { jump mark-for-masquerade; goto svc-... }   # its NodePort
//!     set hairpin { type ipv4_addr . ipv4_addr }   # every endpoint as "ip . ip"
//!     (postrouting, first: ct status dnat ip saddr . ip daddr @hairpin masquerade)
//! }
//! ```
//!
//! A Service with `sessionAffinity: ClientIP` instead picks a chain per
//! endpoint (`numgen ... vmap { 0 : goto ep-...__10.244.1.5/8080, ... }`,
//! after `ip saddr @aff-...__10.244.1.5/8080 goto ep-...` for clients seen
//! within the timeout), and each endpoint chain records its client
//! (`update @aff-... { ip saddr }`) and DNATs. Other Services have no chain
//! per endpoint: `nft`'s cost per transaction grows with the chains and
//! rules of the table, so a table of 1,000 Services with 10 endpoints
//! each keeps 1,000 chains, not 11,000.
//!
//! A Service port with endpoints is an element of `service-ips` (and of
//! `service-nodeports` for its NodePort); one without is an element of
//! `no-endpoints`, so connections to it are refused instead of hanging.
//! Traffic from outside the cluster CIDRs (the node itself, other hosts,
//! NodePorts) is masqueraded so replies come back through this node.
//!
//! [`ProxyRules::full`] rebuilds the table in one `nft` transaction;
//! [`ProxyRules::changes_since`] turns a change of some Services into one
//! transaction touching only their Service ports: their map
//! elements, their chains, and the chains and affinity sets of endpoints
//! that came or went, and the `hairpin` elements of addresses that came or
//! went. Endpoints that stay keep their chains and affinity sets, and
//! established connections keep their conntrack entries, so a scale-down
//! drops no connection to a pod that stays.
//!
//! The commands are nft's JSON API (libnftables-json(5)), applied through
//! the `nftables` crate's runner; they are built as JSON values because
//! the crate's typed schema has no verdict maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use nftables::helper;
use serde_json::{json, Value};

use super::cidr::{self, Cidr};
use super::nft::nft_error;
use super::NetError;

/// The mark bit of packets to be masqueraded (kube-proxy's).
const MASQUERADE_MARK: u32 = 0x4000;
/// dstnat's priority.
const DSTNAT: i32 = -100;
/// srcnat's priority.
const SRCNAT: i32 = 100;
/// Before the filter hooks' default priority, as kube-proxy's.
const FILTER_EARLY: i32 = -110;

/// The table of the agent whose bridge is `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("{bridge}-svc")
}

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol name (`TCP`, `UDP`, `SCTP`).
    pub fn parse(name: &str) -> Option<Protocol> {
        match name {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nft's name of it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// What the rules of one Service port say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `NAMESPACE/NAME/PROTOCOL/PORT-NAME-OR-NUMBER`: names its chains.
    pub id: String,
    /// The ClusterIP (`None`: NodePort only, which Kubernetes never makes,
    /// but the rules do not need one).
    pub cluster_ip: Option<Ipv4Addr>,
    /// The Service port's protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// Its NodePort, if the Service has one.
    pub node_port: Option<u16>,
    /// `sessionAffinity: ClientIP`'s timeout in seconds, if set.
    pub affinity_timeout: Option<u32>,
    /// The endpoints traffic is balanced over (sorted, no duplicates).
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePort {
    fn svc_chain(&self) -> String {
        format!("svc-{}", self.id)
    }

    fn ext_chain(&self) -> String {
        format!("ext-{}", self.id)
    }

    /// The endpoints that have a chain of their own: those of a Service
    /// with session affinity (each keeps its clients in a set); other
    /// Services draw endpoints from a map in their own chain.
    fn chained_endpoints(&self) -> &[SocketAddrV4] {
        if self.affinity_timeout.is_some() {
            &self.endpoints
        } else {
            &[]
        }
    }

    fn ep_chain(&self, endpoint: &SocketAddrV4) -> String {
        format!("ep-{}__{}/{}", self.id, endpoint.ip(), endpoint.port())
    }

    fn affinity_set(&self, endpoint: &SocketAddrV4) -> String {
        format!("aff-{}__{}/{}", self.id, endpoint.ip(), endpoint.port())
    }
}

/// Everything the table holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyRules {
    /// The table's name.
    pub table: String,
    /// Sources inside the cluster (pod CIDRs): traffic from anywhere else
    /// to a ClusterIP is masqueraded.
    pub cluster: Vec<Cidr>,
    /// The Service ports, by id.
    pub services: BTreeMap<String, ServicePort>,
}

/// One `nft` transaction under construction.
struct Tx<'a> {
    table: &'a str,
    commands: Vec<Value>,
}

impl<'a> Tx<'a> {
    fn new(table: &'a str) -> Self {
        Tx {
            table,
            commands: Vec::new(),
        }
    }

    fn push(&mut self, verb: &str, kind: &str, mut object: Value) {
        object["family"] = json!("ip");
        object["table"] = json!(self.table);
        self.commands.push(json!({ verb: { kind: object } }));
    }

    fn chain(&mut self, name: &str) {
        self.push("add", "chain", json!({"name": name}));
    }

    fn base_chain(&mut self, name: &str, kind: &str, hook: &str, prio: i32) {
        self.push(
            "add",
            "chain",
            json!({"name": name, "type": kind, "hook": hook, "prio": prio, "policy": "accept"}),
        );
    }

    fn flush_chain(&mut self, name: &str) {
        self.push("flush", "chain", json!({"name": name}));
    }

    fn delete_chain(&mut self, name: &str) {
        self.flush_chain(name);
        self.push("delete", "chain", json!({"name": name}));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Value>) {
        self.push("add", "rule", json!({"chain": chain, "expr": expr}));
    }

    fn element(&mut self, verb: &str, set: &str, elem: Value) {
        self.push(verb, "element", json!({"name": set, "elem": [elem]}));
    }

    fn into_payload(self) -> String {
        json!({ "nftables": self.commands }).to_string()
    }
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn jump(target: &str) -> Value {
    json!({"jump": {"target": target}})
}

fn goto(target: &str) -> Value {
    json!({"goto": {"target": target}})
}

fn prefix(c: &Cidr) -> Value {
    json!({"prefix": {"addr": cidr::network(c).to_string(), "len": c.prefix}})
}

fn service_key(ip: Ipv4Addr, protocol: Protocol, port: u16) -> Value {
    json!({"concat": [ip.to_string(), protocol.nft(), port]})
}

fn hairpin_key(ip: Ipv4Addr) -> Value {
    json!({"concat": [ip.to_string(), ip.to_string()]})
}

fn node_port_key(protocol: Protocol, port: u16) -> Value {
    json!({"concat": [protocol.nft(), port]})
}

impl ProxyRules {
    /// An empty table named `table`.
    pub fn new(table: impl Into<String>, cluster: Vec<Cidr>) -> Self {
        ProxyRules {
            table: table.into(),
            cluster,
            services: BTreeMap::new(),
        }
    }

    /// The transaction that (re)creates the table with everything in it.
    pub fn full(&self) -> String {
        let mut tx = Tx::new(&self.table);
        let table = || json!({"family": "ip", "name": self.table});
        tx.commands.push(json!({"add": {"table": table()}}));
        tx.commands.push(json!({"delete": {"table": table()}}));
        tx.commands.push(json!({"add": {"table": table()}}));
        let addr_proto_port = json!(["ipv4_addr", "inet_proto", "inet_service"]);
        tx.push(
            "add",
            "map",
            json!({"name": "service-ips", "type": addr_proto_port, "map": "verdict"}),
        );
        tx.push(
            "add",
            "map",
            json!({"name": "service-nodeports", "type": ["inet_proto", "inet_service"], "map": "verdict"}),
        );
        tx.push(
            "add",
            "set",
            json!({"name": "no-endpoints", "type": addr_proto_port}),
        );
        tx.base_chain("prerouting", "nat", "prerouting", DSTNAT);
        tx.base_chain("output", "nat", "output", DSTNAT);
        tx.base_chain("postrouting", "nat", "postrouting", SRCNAT);
        tx.base_chain("filter-forward", "filter", "forward", FILTER_EARLY);
        tx.base_chain("filter-output", "filter", "output", FILTER_EARLY);
        tx.chain("services");
        tx.chain("mark-for-masquerade");
        tx.rule(
            "mark-for-masquerade",
            vec![json!({"mangle": {"key": meta("mark"), "value": {"|": [meta("mark"), MASQUERADE_MARK]}}})],
        );
        tx.push(
            "add",
            "set",
            json!({"name": "hairpin", "type": ["ipv4_addr", "ipv4_addr"]}),
        );
        let inside: Vec<Value> = cidr::outermost(&self.cluster).iter().map(prefix).collect();
        let mut cluster_set =
            json!({"name": "cluster-cidrs", "type": "ipv4_addr", "flags": ["interval"]});
        if !inside.is_empty() {
            cluster_set["elem"] = json!(inside);
        }
        tx.push("add", "set", cluster_set);
        // A pod reaching itself through a Service: masqueraded, or it
        // would get its own packets from itself.
        tx.rule(
            "postrouting",
            vec![
                matches("in", json!({"ct": {"key": "status"}}), json!("dnat")),
                matches(
                    "==",
                    json!({"concat": [payload("ip", "saddr"), payload("ip", "daddr")]}),
                    json!("@hairpin"),
                ),
                json!({"masquerade": null}),
            ],
        );
        tx.rule(
            "postrouting",
            vec![
                matches(
                    "==",
                    json!({"&": [meta("mark"), MASQUERADE_MARK]}),
                    json!(0),
                ),
                json!({"return": null}),
            ],
        );
        tx.rule(
            "postrouting",
            vec![
                json!({"mangle": {"key": meta("mark"), "value": {"^": [meta("mark"), MASQUERADE_MARK]}}}),
                json!({"masquerade": null}),
            ],
        );
        tx.rule("prerouting", vec![jump("services")]);
        tx.rule("output", vec![jump("services")]);
        let destination =
            json!({"concat": [payload("ip", "daddr"), meta("l4proto"), payload("th", "dport")]});
        for chain in ["filter-forward", "filter-output"] {
            tx.rule(
                chain,
                vec![
                    matches("==", destination.clone(), json!("@no-endpoints")),
                    json!({"reject": null}),
                ],
            );
        }
        tx.rule(
            "services",
            vec![json!({"vmap": {"key": destination, "data": "@service-ips"}})],
        );
        tx.rule(
            "services",
            vec![
                matches(
                    "==",
                    json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                    json!("local"),
                ),
                matches(
                    "!=",
                    payload("ip", "daddr"),
                    json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                ),
                json!({"vmap": {"key": {"concat": [meta("l4proto"), payload("th", "dport")]}, "data": "@service-nodeports"}}),
            ],
        );
        for service in self.services.values() {
            self.add_service(&mut tx, service, &BTreeSet::new(), false);
        }
        let ips: BTreeSet<Ipv4Addr> = self
            .services
            .values()
            .flat_map(|s| s.endpoints.iter().map(|e| *e.ip()))
            .collect();
        for ip in ips {
            tx.element("add", "hairpin", hairpin_key(ip));
        }
        tx.into_payload()
    }

    /// Replaces the ports of Service `key` (`namespace/name`) with `ports`;
    /// returns those it had.
    pub fn replace_service(&mut self, key: &str, ports: Vec<ServicePort>) -> Vec<ServicePort> {
        let prefix = format!("{key}/");
        let ids: Vec<String> = self
            .services
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix))
            .map(|(id, _)| id.clone())
            .collect();
        let before = ids
            .iter()
            .filter_map(|id| self.services.remove(id))
            .collect();
        for port in ports {
            self.services.insert(port.id.clone(), port);
        }
        before
    }

    /// The transaction for a change of the Services `keys` only: `before`
    /// are the ports they had (what [`replace_service`](Self::replace_service)
    /// returned), `self` holds their new ones. `None` if nothing changed.
    pub fn changes_since(&self, before: &[ServicePort], keys: &BTreeSet<String>) -> Option<String> {
        let old: BTreeMap<&str, &ServicePort> = before.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut new: BTreeMap<&str, &ServicePort> = BTreeMap::new();
        for key in keys {
            let prefix = format!("{key}/");
            for (id, port) in self
                .services
                .range(prefix.clone()..)
                .take_while(|(id, _)| id.starts_with(&prefix))
            {
                new.insert(id.as_str(), port);
            }
        }
        let mut tx = Tx::new(&self.table);
        for (id, was) in &old {
            match new.get(id) {
                None => self.remove_service(&mut tx, was),
                Some(now) if now != was => self.update_service(&mut tx, was, now),
                Some(_) => {}
            }
        }
        for (id, now) in &new {
            if !old.contains_key(id) {
                self.add_service(&mut tx, now, &BTreeSet::new(), false);
            }
        }
        // Hairpin elements: an address stays while any Service uses it.
        let ips = |ports: &mut dyn Iterator<Item = &&ServicePort>| -> BTreeSet<Ipv4Addr> {
            ports
                .flat_map(|p| p.endpoints.iter().map(|e| *e.ip()))
                .collect()
        };
        let (old_ips, new_ips) = (ips(&mut old.values()), ips(&mut new.values()));
        let elsewhere = |ip: &Ipv4Addr| {
            self.services
                .iter()
                .filter(|(id, _)| !new.contains_key(id.as_str()))
                .any(|(_, p)| p.endpoints.iter().any(|e| e.ip() == ip))
        };
        for gone in old_ips.difference(&new_ips) {
            if !elsewhere(gone) {
                tx.element("delete", "hairpin", hairpin_key(*gone));
            }
        }
        for came in new_ips.difference(&old_ips) {
            if !elsewhere(came) {
                tx.element("add", "hairpin", hairpin_key(*came));
            }
        }
        (!tx.commands.is_empty()).then(|| tx.into_payload())
    }

    /// Map elements of a Service port: where its ClusterIP and NodePort
    /// lead.
    fn elements(tx: &mut Tx<'_>, verb: &str, service: &ServicePort) {
        let has_endpoints = !service.endpoints.is_empty();
        if let Some(ip) = service.cluster_ip {
            let key = service_key(ip, service.protocol, service.port);
            if has_endpoints {
                tx.element(
                    verb,
                    "service-ips",
                    json!([key, goto(&service.svc_chain())]),
                );
            } else {
                tx.element(verb, "no-endpoints", key);
            }
        }
        if let (Some(port), true) = (service.node_port, has_endpoints) {
            tx.element(
                verb,
                "service-nodeports",
                json!([
                    node_port_key(service.protocol, port),
                    goto(&service.ext_chain())
                ]),
            );
        }
    }

    /// Adds a Service port's chains, the chains (and affinity sets) of its
    /// endpoints but those in `kept`, and its elements. With `existing`,
    /// its svc/ext chains exist already (flushed).
    fn add_service(
        &self,
        tx: &mut Tx<'_>,
        service: &ServicePort,
        kept: &BTreeSet<SocketAddrV4>,
        existing: bool,
    ) {
        for endpoint in service.chained_endpoints() {
            if kept.contains(endpoint) {
                continue;
            }
            let chain = service.ep_chain(endpoint);
            if let Some(timeout) = service.affinity_timeout {
                tx.push(
                    "add",
                    "set",
                    json!({"name": service.affinity_set(endpoint), "type": "ipv4_addr",
                           "flags": ["timeout"], "timeout": timeout}),
                );
                tx.chain(&chain);
                tx.rule(
                    &chain,
                    vec![
                        json!({"set": {"op": "update", "elem": payload("ip", "saddr"),
                                        "set": format!("@{}", service.affinity_set(endpoint))}}),
                    ],
                );
            }
            tx.rule(
                &chain,
                vec![
                    matches("==", meta("l4proto"), json!(service.protocol.nft())),
                    json!({"dnat": {"addr": endpoint.ip().to_string(), "port": endpoint.port()}}),
                ],
            );
        }
        let svc = service.svc_chain();
        if !existing {
            tx.chain(&svc);
        }
        // One named set, not an anonymous one per chain: nft's cost per
        // transaction grows with the sets of the table.
        tx.rule(
            &svc,
            vec![
                matches("!=", payload("ip", "saddr"), json!("@cluster-cidrs")),
                jump("mark-for-masquerade"),
            ],
        );
        if service.affinity_timeout.is_some() {
            for endpoint in &service.endpoints {
                tx.rule(
                    &svc,
                    vec![
                        matches(
                            "==",
                            payload("ip", "saddr"),
                            json!(format!("@{}", service.affinity_set(endpoint))),
                        ),
                        goto(&service.ep_chain(endpoint)),
                    ],
                );
            }
        }
        let pick =
            json!({"numgen": {"mode": "random", "mod": service.endpoints.len(), "offset": 0}});
        if service.endpoints.is_empty() {
            // Nothing to balance over: the ClusterIP is in `no-endpoints`.
        } else if service.affinity_timeout.is_some() {
            let choices: Vec<Value> = service
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| json!([i, goto(&service.ep_chain(e))]))
                .collect();
            tx.rule(
                &svc,
                vec![json!({"vmap": {"key": pick, "data": {"set": choices}}})],
            );
        } else {
            // No chain per endpoint: the endpoint is drawn straight from
            // an anonymous map of addresses and ports.
            let choices: Vec<Value> = service
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| json!([i, {"concat": [e.ip().to_string(), e.port()]}]))
                .collect();
            tx.rule(
                &svc,
                vec![
                    matches("==", meta("l4proto"), json!(service.protocol.nft())),
                    json!({"dnat": {"family": "ip", "addr": {"map": {"key": pick, "data": {"set": choices}}}}}),
                ],
            );
        }
        if service.node_port.is_some() {
            let ext = service.ext_chain();
            if !existing {
                tx.chain(&ext);
            }
            tx.rule(&ext, vec![jump("mark-for-masquerade")]);
            tx.rule(&ext, vec![goto(&svc)]);
        }
        Self::elements(tx, "add", service);
    }

    /// Removes everything of a Service port.
    fn remove_service(&self, tx: &mut Tx<'_>, service: &ServicePort) {
        Self::elements(tx, "delete", service);
        tx.delete_chain(&service.svc_chain());
        if service.node_port.is_some() {
            tx.delete_chain(&service.ext_chain());
        }
        for endpoint in service.chained_endpoints() {
            tx.delete_chain(&service.ep_chain(endpoint));
            tx.push(
                "delete",
                "set",
                json!({"name": service.affinity_set(endpoint)}),
            );
        }
    }

    /// Rewrites a changed Service port, keeping the chains and affinity
    /// sets of endpoints that stay.
    fn update_service(&self, tx: &mut Tx<'_>, old: &ServicePort, new: &ServicePort) {
        Self::elements(tx, "delete", old);
        tx.flush_chain(&old.svc_chain());
        match (old.node_port.is_some(), new.node_port.is_some()) {
            (true, true) => tx.flush_chain(&old.ext_chain()),
            (true, false) => tx.delete_chain(&old.ext_chain()),
            (false, true) => tx.chain(&new.ext_chain()),
            (false, false) => {}
        }
        let same_endpoint_rules =
            old.affinity_timeout == new.affinity_timeout && old.protocol == new.protocol;
        let mut kept = BTreeSet::new();
        for endpoint in old.chained_endpoints() {
            if same_endpoint_rules && new.endpoints.contains(endpoint) {
                kept.insert(*endpoint);
                continue;
            }
            tx.delete_chain(&old.ep_chain(endpoint));
            tx.push("delete", "set", json!({"name": old.affinity_set(endpoint)}));
        }
        self.add_service(tx, new, &kept, true);
    }

    /// Applies a transaction made by [`ProxyRules::full`] or
    /// [`ProxyRules::changes_since`].
    pub async fn apply(table: &str, transaction: &str) -> Result<(), NetError> {
        helper::apply_ruleset_raw_async(
            transaction,
            helper::DEFAULT_NFT,
            std::iter::empty::<&str>(),
        )
        .await
        .map(|_| ())
        .map_err(|source| nft_error(format!("updating table ip {table}"), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: &str, ip: [u8; 4], endpoints: &[([u8; 4], u16)]) -> ServicePort {
        ServicePort {
            id: id.to_string(),
            cluster_ip: Some(Ipv4Addr::from(ip)),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            affinity_timeout: None,
            endpoints: endpoints
                .iter()
                .map(|(ip, p)| SocketAddrV4::new(Ipv4Addr::from(*ip), *p))
                .collect(),
        }
    }

    fn commands(payload: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(payload).unwrap();
        v["nftables"].as_array().unwrap().clone()
    }

    #[test]
    fn unchanged_rules_need_no_transaction_and_changes_touch_only_their_service() {
        let mut a = ProxyRules::new("orch0-svc", vec![Cidr::parse("10.244.0.0/16").unwrap()]);
        a.services.insert(
            "ns/a/tcp/80".into(),
            port("ns/a/tcp/80", [10, 96, 0, 10], &[([10, 244, 0, 5], 8080)]),
        );
        a.services.insert(
            "ns/b/tcp/80".into(),
            port("ns/b/tcp/80", [10, 96, 0, 11], &[([10, 244, 0, 6], 8080)]),
        );
        let keys = |k: &str| BTreeSet::from([k.to_string()]);
        let mut same = a.clone();
        let before = same.replace_service("ns/a", vec![a.services["ns/a/tcp/80"].clone()]);
        assert_eq!(same.changes_since(&before, &keys("ns/a")), None);

        // Endpoint 10.244.1.7 of ns/a goes away.
        let mut b = a.clone();
        b.services
            .get_mut("ns/a/tcp/80")
            .unwrap()
            .endpoints
            .push(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 7), 8080));
        let before = b.replace_service("ns/a", vec![a.services["ns/a/tcp/80"].clone()]);
        let tx = b
            .changes_since(&before, &keys("ns/a"))
            .expect("a removed endpoint changes the rules");
        let text = tx.to_string();
        assert!(!text.contains("ns/b/"), "{text}");
        // The address that went leaves the hairpin set; no other Service
        // is touched and no endpoint chain exists to delete.
        let commands = commands(&tx);
        let deleted: Vec<&Value> = commands.iter().filter_map(|c| c.get("delete")).collect();
        assert!(deleted.iter().all(|d| d.get("chain").is_none()), "{text}");
        assert!(
            deleted.iter().any(|d| d["element"]["name"] == "hairpin"
                && d["element"]["elem"][0]["concat"][0] == "10.244.1.7"),
            "{text}"
        );
    }

    #[test]
    fn a_service_without_endpoints_is_refused_not_balanced() {
        let mut rules = ProxyRules::new("t", vec![]);
        rules.services.insert(
            "ns/a/tcp/80".into(),
            port("ns/a/tcp/80", [10, 96, 0, 10], &[]),
        );
        let all = commands(&rules.full());
        let elements: Vec<&Value> = all
            .iter()
            .filter_map(|c| c.get("add").and_then(|a| a.get("element")))
            .collect();
        assert_eq!(elements.len(), 1);
        assert_eq!(elements[0]["name"], "no-endpoints");
    }

    /// nft itself checks (`nft -c`, nothing applied) a full table with
    /// every kind of rule, and a change of it.
    #[tokio::test]
    async fn nft_accepts_the_transactions() {
        let mut before = ProxyRules::new(
            "orch-check-svc",
            vec![Cidr::parse("10.244.0.0/16").unwrap()],
        );
        let mut sticky = port(
            "ns/a/tcp/http",
            [10, 96, 0, 10],
            &[([10, 244, 0, 5], 8080), ([10, 244, 1, 5], 8080)],
        );
        sticky.node_port = Some(30080);
        sticky.affinity_timeout = Some(60);
        before.services.insert(sticky.id.clone(), sticky.clone());
        before.services.insert(
            "ns/b/udp/53".into(),
            ServicePort {
                protocol: Protocol::Udp,
                ..port("ns/b/udp/53", [10, 96, 0, 11], &[([10, 244, 0, 6], 53)])
            },
        );
        let check = |tx: String| async move {
            helper::apply_ruleset_raw_async(&tx, helper::DEFAULT_NFT, ["-c"])
                .await
                .map_err(|e| format!("{e:?}"))
        };
        check(before.full()).await.expect("the full table is valid");
        let mut after = before.clone();
        let mut moved = after.services["ns/a/tcp/http"].clone();
        moved.endpoints.remove(0);
        moved.node_port = None;
        let mut old = after.replace_service("ns/a", vec![moved]);
        old.extend(after.replace_service("ns/b", vec![]));
        let keys = BTreeSet::from(["ns/a".to_string(), "ns/b".to_string()]);
        // A change is checked against the table it applies to: build the
        // table and apply the change in one checked transaction.
        let full: Value = serde_json::from_str(&before.full()).unwrap();
        let change: Value =
            serde_json::from_str(&after.changes_since(&old, &keys).unwrap()).unwrap();
        let gone_chain = change["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["delete"]["chain"]["name"] == "ep-ns/a/tcp/http__10.244.0.5/8080");
        assert!(
            gone_chain,
            "the sticky Service's gone endpoint loses its chain"
        );
        let mut both = full["nftables"].as_array().unwrap().clone();
        both.extend(change["nftables"].as_array().unwrap().iter().cloned());
        check(json!({ "nftables": both }).to_string())
            .await
            .expect("the change is valid");
    }
}
