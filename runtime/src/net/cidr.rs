//! IPv4 ranges as the pod network reads them: orch-core's [`Cidr`] (what
//! node IPAM hands out as `spec.podCIDR`) with its gateway, its broadcast
//! address and the addresses pods may get.

use std::net::Ipv4Addr;

pub use orch_core::controller::node_ipam::Cidr;

use super::NetError;

/// Parses a node's pod CIDR and checks it can hold a gateway and at least
/// one pod (a prefix of /30 or shorter).
pub fn parse_pod_cidr(text: &str) -> Result<Cidr, NetError> {
    let cidr = Cidr::parse(text).ok_or_else(|| NetError::InvalidCidr {
        cidr: text.to_string(),
        reason: "not an IPv4 range a.b.c.d/n".into(),
    })?;
    if cidr.prefix > 30 {
        return Err(NetError::InvalidCidr {
            cidr: text.to_string(),
            reason: "a pod CIDR needs room for a network, a gateway, a pod and a broadcast address (at most /30)".into(),
        });
    }
    Ok(cidr)
}

/// `ranges` sorted, without duplicates and without ranges another one
/// contains (nft refuses overlapping intervals in a set).
pub fn outermost(ranges: &[Cidr]) -> Vec<Cidr> {
    let mut all = ranges.to_vec();
    all.sort_by_key(|c| (c.prefix, c.base));
    let mut kept: Vec<Cidr> = Vec::new();
    for c in all {
        if !kept.iter().any(|k| k.contains(&c)) {
            kept.push(c);
        }
    }
    kept.sort();
    kept
}

/// The range's network address.
pub fn network(cidr: &Cidr) -> Ipv4Addr {
    Ipv4Addr::from(cidr.base)
}

/// The bridge's address: the first host address of the range.
pub fn gateway(cidr: &Cidr) -> Ipv4Addr {
    Ipv4Addr::from(cidr.base.wrapping_add(1))
}

/// The range's broadcast address (its last).
pub fn broadcast(cidr: &Cidr) -> Ipv4Addr {
    Ipv4Addr::from(cidr.base | host_mask(cidr.prefix))
}

/// True if `ip` lies in the range.
pub fn contains(cidr: &Cidr, ip: Ipv4Addr) -> bool {
    u32::from(ip) & !host_mask(cidr.prefix) == cidr.base
}

/// The addresses pods may get, lowest first: every host address but the
/// gateway (so neither the network nor the broadcast address).
pub fn pod_addresses(cidr: &Cidr) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(gateway(cidr)) + 1;
    let last = u32::from(broadcast(cidr));
    (first..last).map(Ipv4Addr::from)
}

fn host_mask(prefix: u8) -> u32 {
    if prefix >= 32 {
        0
    } else {
        u32::MAX >> prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_24_has_253_pod_addresses_after_its_gateway() {
        let cidr = parse_pod_cidr("10.244.3.0/24").unwrap();
        assert_eq!(network(&cidr), Ipv4Addr::new(10, 244, 3, 0));
        assert_eq!(gateway(&cidr), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(broadcast(&cidr), Ipv4Addr::new(10, 244, 3, 255));
        let all: Vec<Ipv4Addr> = pod_addresses(&cidr).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all[0], Ipv4Addr::new(10, 244, 3, 2));
        assert_eq!(all[252], Ipv4Addr::new(10, 244, 3, 254));
        assert!(contains(&cidr, Ipv4Addr::new(10, 244, 3, 77)));
        assert!(!contains(&cidr, Ipv4Addr::new(10, 244, 4, 1)));
    }

    #[test]
    fn tiny_or_malformed_ranges_are_refused() {
        assert!(parse_pod_cidr("10.0.0.0/31").is_err());
        assert!(parse_pod_cidr("10.0.0.0").is_err());
        assert!(parse_pod_cidr("fd00::/64").is_err());
        let smallest = parse_pod_cidr("10.0.0.4/30").unwrap();
        assert_eq!(
            pod_addresses(&smallest).collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 6)]
        );
    }
}
