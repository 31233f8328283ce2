//! A pod's link to the node: a veth pair whose host end (`veth` and 11 hex
//! digits of the pod uid's SHA-256) is attached to the bridge, and whose
//! other end is created straight inside the pod's network namespace as
//! `eth0`, with the pod's address and a default route via the gateway.
//! Deleting the host end deletes the pair (and so does the namespace going
//! away).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use super::bridge;
use super::netlink::{self, EEXIST, ENODEV};
use super::NetError;

/// The name of the pod's end of the pair, inside its namespace.
pub const POD_IFNAME: &str = "eth0";

/// The host end's name for pod `uid`: `veth` and 11 hex digits (15 bytes,
/// Linux's limit), the same every time for one pod.
pub fn host_name(uid: &str) -> String {
    let digest = hex::encode(Sha256::digest(uid.as_bytes()));
    format!("veth{}", &digest[..11])
}

/// What a pod's interface is to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The pod's network namespace file (`<pod>/ns/net`).
    pub netns: PathBuf,
    /// The host end's name ([`host_name`]).
    pub host_name: String,
    /// The pod's address.
    pub address: Ipv4Addr,
    /// The pod CIDR's prefix length.
    pub prefix: u8,
    /// The bridge's address: the pod's default route.
    pub gateway: Ipv4Addr,
}

/// Makes sure the pod has its interface: creates the pair if it is
/// missing (or half there), attaches the host end to bridge `bridge` and
/// brings it up, and gives the pod's `eth0` its address, up, and the
/// default route. Safe to run again on a pod that has it all.
#[tracing::instrument(level = "debug", skip(host, pod), fields(veth = %pod.host_name, ip = %pod.address))]
pub async fn attach(host: &Handle, bridge: u32, pod: &PodInterface) -> Result<(), NetError> {
    netlink::check_ifname(&pod.host_name)?;
    let netns =
        File::open(&pod.netns).map_err(NetError::io(format!("opening {}", pod.netns.display())))?;
    let inside = netlink::connect_in_file(
        netns
            .try_clone()
            .map_err(NetError::io("duplicating a namespace descriptor"))?,
    )
    .await?;
    let mut host_end = netlink::link_by_name(host, &pod.host_name).await?;
    let mut pod_end = netlink::link_by_name(&inside, POD_IFNAME).await?;
    if host_end.is_some() != pod_end.is_some() {
        // Half a pair (an agent died while making it, or an interface left
        // from elsewhere): start over.
        tracing::info!(veth = %pod.host_name, "replacing half a veth pair");
        if let Some(link) = host_end.take() {
            delete_index(host, link.header.index, &pod.host_name).await?;
        }
        if let Some(link) = pod_end.take() {
            delete_index(&inside, link.header.index, POD_IFNAME).await?;
        }
    }
    let host_index = match host_end {
        Some(link) => {
            let index = link.header.index;
            if netlink::link_controller(&link) != Some(bridge) {
                host.link()
                    .set(LinkUnspec::new_with_index(index).controller(bridge).build())
                    .execute()
                    .await
                    .map_err(NetError::netlink(format!(
                        "attaching {} to the bridge",
                        pod.host_name
                    )))?;
            }
            index
        }
        None => create_pair(host, bridge, pod, &netns).await?,
    };
    host.link()
        .set(LinkUnspec::new_with_index(host_index).up().build())
        .execute()
        .await
        .map_err(NetError::netlink(format!("bringing {} up", pod.host_name)))?;
    // Hairpin: a pod reaching itself through a Service goes out the port
    // it came in by (with br_netfilter, the DNATed frame is bridged back).
    host.link()
        .set_port(
            rtnetlink::LinkBridgePort::new(host_index)
                .hairpin(true)
                .build(),
        )
        .execute()
        .await
        .map_err(NetError::netlink(format!(
            "setting hairpin mode on {}",
            pod.host_name
        )))?;

    let eth0 = netlink::link_by_name(&inside, POD_IFNAME)
        .await?
        .ok_or_else(|| NetError::NotReady(format!("{POD_IFNAME} missing in the pod")))?
        .header
        .index;
    inside
        .link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await
        .map_err(NetError::netlink(format!(
            "bringing the pod's {POD_IFNAME} up"
        )))?;
    if !bridge::has_address(&inside, eth0, pod.address, pod.prefix).await? {
        match inside
            .address()
            .add(eth0, IpAddr::V4(pod.address), pod.prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if netlink::errno(&e) == Some(EEXIST) => {}
            Err(e) => {
                return Err(NetError::netlink(format!(
                    "giving the pod {}/{}",
                    pod.address, pod.prefix
                ))(e))
            }
        }
    }
    inside
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(pod.gateway)
                .output_interface(eth0)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(NetError::netlink(format!(
            "adding the pod's default route via {}",
            pod.gateway
        )))?;
    Ok(())
}

/// Creates the pair: the host end attached to the bridge, the pod end
/// made inside the pod's namespace as `eth0`. Returns the host end's
/// index.
async fn create_pair(
    host: &Handle,
    bridge: u32,
    pod: &PodInterface,
    netns: &File,
) -> Result<u32, NetError> {
    let peer = LinkUnspec::new_with_name(POD_IFNAME)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let message = LinkMessageBuilder::<LinkVeth>::new(&pod.host_name, POD_IFNAME)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .controller(bridge)
        .build();
    host.link()
        .add(message)
        .execute()
        .await
        .map_err(NetError::netlink(format!(
            "creating veth pair {}/{POD_IFNAME}",
            pod.host_name
        )))?;
    tracing::debug!(veth = %pod.host_name, "veth pair created");
    netlink::link_by_name(host, &pod.host_name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetError::NotReady(format!("{} vanished", pod.host_name)))
}

async fn delete_index(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if netlink::errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("deleting {name}"))(e)),
    }
}

/// Deletes the pair of host end `host_name`; false if it was not there.
#[tracing::instrument(level = "debug", skip(host))]
pub async fn detach(host: &Handle, host_name: &str) -> Result<bool, NetError> {
    let Some(link) = netlink::link_by_name(host, host_name).await? else {
        return Ok(false);
    };
    delete_index(host, link.header.index, host_name).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_and_fit_linux_limit() {
        let a = host_name("2f1c9a52-6c1e-4c2a-9d1e-6a1b2c3d4e5f");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_name("2f1c9a52-6c1e-4c2a-9d1e-6a1b2c3d4e5f"));
        assert_ne!(a, host_name("another"));
        netlink::check_ifname(&a).unwrap();
    }
}
