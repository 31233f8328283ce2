//! The node's bridge (`orch0` by default): every pod's veth is attached to
//! it, and it holds the pod CIDR's gateway address, so the host reaches
//! its pods through the connected route and pods route through it.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::netlink::{self, EEXIST};
use super::NetError;

/// Makes sure bridge `name` exists, holds `gateway/prefix` and is up;
/// returns its index. Other addresses on it are left alone (several
/// agents of a test host may share one bridge).
#[tracing::instrument(level = "debug", skip(handle))]
pub async fn ensure(
    handle: &Handle,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<u32, NetError> {
    netlink::check_ifname(name)?;
    let link = match netlink::link_by_name(handle, name).await? {
        Some(link) => link,
        None => {
            match handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => tracing::info!(bridge = name, "bridge created"),
                // Made by another agent of this host in the meantime.
                Err(e) if netlink::errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(NetError::netlink(format!("creating bridge {name}"))(e)),
            }
            netlink::link_by_name(handle, name)
                .await?
                .ok_or_else(|| NetError::NotReady(format!("bridge {name} vanished")))?
        }
    };
    if netlink::link_kind(&link) != Some(&InfoKind::Bridge) {
        return Err(NetError::InvalidName {
            name: name.to_string(),
            reason: "an interface of that name exists and is not a bridge".into(),
        });
    }
    let index = link.header.index;
    if !has_address(handle, index, gateway, prefix).await? {
        match handle
            .address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Ok(()) => tracing::info!(bridge = name, %gateway, prefix, "gateway address added"),
            Err(e) if netlink::errno(&e) == Some(EEXIST) => {}
            Err(e) => {
                return Err(NetError::netlink(format!(
                    "adding {gateway}/{prefix} to bridge {name}"
                ))(e))
            }
        }
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(NetError::netlink(format!("bringing bridge {name} up")))?;
    Ok(index)
}

/// Whether link `index` holds `address/prefix`.
pub async fn has_address(
    handle: &Handle,
    index: u32,
    address: Ipv4Addr,
    prefix: u8,
) -> Result<bool, NetError> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(NetError::netlink(format!(
            "listing the addresses of link {index}"
        )))?
    {
        if message.header.prefix_len != prefix {
            continue;
        }
        let found = message.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address)
        });
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes bridge `name` (its ports are detached, not deleted); false if
/// there was none.
pub async fn delete(handle: &Handle, name: &str) -> Result<bool, NetError> {
    let Some(link) = netlink::link_by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if netlink::errno(&e) == Some(netlink::ENODEV) => Ok(false),
        Err(e) => Err(NetError::netlink(format!("deleting bridge {name}"))(e)),
    }
}
