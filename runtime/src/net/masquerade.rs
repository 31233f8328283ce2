//! Masquerading of pod traffic that leaves the cluster, in an nftables
//! table of the agent's own (`ip <bridge>-nat`), through the JSON API of
//! Debian's `nft` (the `nftables` crate):
//!
//! ```text
//! table ip orch0-nat {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.244.0.0/24 ip daddr != { 10.244.0.0/24, 10.244.1.0/24 } masquerade
//!     }
//! }
//! ```
//!
//! Pod-to-pod traffic (to any pod CIDR of the cluster) keeps the pod's
//! address; traffic to anything else leaves with the node's. The table is
//! rebuilt whole in one `nft` transaction (add, delete, add again, chain,
//! rule), so applying is idempotent and never leaves a moment without the
//! rule. It is not removed when the agent stops: pods keep running across
//! agent restarts and still need it.

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix, SetItem};
use nftables::helper;
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::cidr::{self, Cidr};
use super::nft::nft_error;
use super::NetError;

/// The chain of the table.
pub const CHAIN: &str = "postrouting";

/// srcnat's priority.
const SRCNAT: i32 = 100;

/// The table of the agent whose bridge is `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("{bridge}-nat")
}

/// What the table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// The table's name.
    pub table: String,
    /// This node's pod CIDR: the sources masqueraded.
    pub pod_cidr: Cidr,
    /// Destinations inside the cluster (never masqueraded); the node's own
    /// pod CIDR is always among them.
    pub cluster: Vec<Cidr>,
}

impl Masquerade {
    /// The exempt destinations: `cluster` and the pod CIDR, without
    /// ranges that another one contains (nft refuses overlapping
    /// intervals in a set).
    pub fn exempt(&self) -> Vec<Cidr> {
        let mut all = self.cluster.clone();
        all.push(self.pod_cidr);
        cidr::outermost(&all)
    }

    /// The `nft` transaction that rebuilds the table.
    pub fn ruleset(&self) -> Nftables<'static> {
        let table = || Table {
            family: NfFamily::IP,
            name: Cow::Owned(self.table.clone()),
            handle: None,
        };
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        batch.add(NfListObject::Table(table()));
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(CHAIN),
            _type: Some(NfChainType::NAT),
            hook: Some(NfHook::Postrouting),
            prio: Some(SRCNAT),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
        let exempt: Vec<SetItem<'static>> = self
            .exempt()
            .iter()
            .map(|c| SetItem::Element(prefix(c)))
            .collect();
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            chain: Cow::Borrowed(CHAIN),
            expr: Cow::Owned(vec![
                Statement::Match(Match {
                    left: ip_field("saddr"),
                    right: prefix(&self.pod_cidr),
                    op: Operator::EQ,
                }),
                Statement::Match(Match {
                    left: ip_field("daddr"),
                    right: Expression::Named(NamedExpression::Set(exempt)),
                    op: Operator::NEQ,
                }),
                Statement::Masquerade(None),
            ]),
            comment: Some(Cow::Borrowed("orch: pod traffic leaving the cluster")),
            ..Rule::default()
        }));
        batch.to_nftables()
    }

    /// Rebuilds the table in the kernel.
    #[tracing::instrument(level = "debug", skip(self), fields(table = %self.table))]
    pub async fn apply(&self) -> Result<(), NetError> {
        helper::apply_ruleset_async(&self.ruleset())
            .await
            .map_err(|source| nft_error(format!("applying table ip {}", self.table), source))
    }
}

fn ip_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed(field),
        },
    )))
}

fn prefix(c: &Cidr) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(cidr::network(c).to_string()))),
        len: u32::from(c.prefix),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_rebuilds_the_table_with_one_masquerade_rule() {
        let m = Masquerade {
            table: table_name("orch0"),
            pod_cidr: Cidr::parse("10.244.1.0/24").unwrap(),
            cluster: vec![
                Cidr::parse("10.244.0.0/24").unwrap(),
                Cidr::parse("10.244.1.0/24").unwrap(),
                Cidr::parse("10.244.0.0/16").unwrap(),
                Cidr::parse("10.99.0.0/24").unwrap(),
            ],
        };
        assert_eq!(
            m.exempt(),
            vec![
                Cidr::parse("10.99.0.0/24").unwrap(),
                Cidr::parse("10.244.0.0/16").unwrap()
            ]
        );
        let json = serde_json::to_value(m.ruleset()).unwrap();
        let commands = json["nftables"].as_array().unwrap();
        let verbs: Vec<&str> = commands
            .iter()
            .map(|c| c.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(verbs, ["add", "delete", "add", "add", "add"]);
        assert_eq!(commands[0]["add"]["table"]["name"], "orch0-nat");
        let chain = &commands[3]["add"]["chain"];
        assert_eq!(chain["type"], "nat");
        assert_eq!(chain["hook"], "postrouting");
        let rule = &commands[4]["add"]["rule"]["expr"];
        assert_eq!(rule[0]["match"]["right"]["prefix"]["addr"], "10.244.1.0");
        assert_eq!(rule[1]["match"]["op"], "!=");
        assert_eq!(
            rule[1]["match"]["right"]["set"].as_array().unwrap().len(),
            2
        );
        assert!(rule[2].get("masquerade").is_some(), "{rule}");
    }
}
