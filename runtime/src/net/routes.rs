//! Host-gateway routes: for every other node, `podCIDR via nodeIP` in the
//! host's main table, so pods reach other nodes' pods through the nodes'
//! own network.
//!
//! The routes this agent installed are listed in a file of its own
//! (`routes.json`), so after a restart it still removes the routes of
//! nodes that went away meanwhile, and it never touches routes it did not
//! make (other agents of a test host, the host's own).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use rtnetlink::{Handle, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use super::cidr::{self, Cidr};
use super::netlink::{self, ESRCH};
use super::NetError;

/// The routes wanted or installed: pod CIDR -> the node address it goes
/// through.
pub type RouteSet = BTreeMap<Cidr, Ipv4Addr>;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    destination: String,
    gateway: Ipv4Addr,
}

/// The peer routes of one agent.
#[derive(Debug)]
pub struct PeerRoutes {
    handle: Handle,
    state: PathBuf,
    installed: RouteSet,
}

/// What one [`PeerRoutes::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Routes added or replaced.
    pub replaced: Vec<(Cidr, Ipv4Addr)>,
    /// Routes deleted.
    pub deleted: Vec<(Cidr, Ipv4Addr)>,
    /// Routes the kernel refused (tried again at the next sync).
    pub failed: Vec<(Cidr, Ipv4Addr, NetError)>,
}

impl PeerRoutes {
    /// The routes recorded in `state` (none if the file does not exist).
    pub fn open(handle: Handle, state: impl Into<PathBuf>) -> Result<PeerRoutes, NetError> {
        let state = state.into();
        let installed = match fs::read(&state) {
            Ok(bytes) => {
                let records: Vec<Record> =
                    serde_json::from_slice(&bytes).map_err(|e| NetError::Record {
                        path: state.display().to_string(),
                        reason: e.to_string(),
                    })?;
                records
                    .into_iter()
                    .filter_map(|r| Some((Cidr::parse(&r.destination)?, r.gateway)))
                    .collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => RouteSet::new(),
            Err(e) => return Err(NetError::io(format!("reading {}", state.display()))(e)),
        };
        Ok(PeerRoutes {
            handle,
            state,
            installed,
        })
    }

    /// The routes installed now.
    pub fn installed(&self) -> &RouteSet {
        &self.installed
    }

    /// Brings the host's routes to `desired`: deletes the installed routes
    /// no longer wanted, adds (replacing whatever route the destination
    /// had) the new or changed ones, and with `refresh` every wanted route
    /// again (repairing routes someone else removed). Failures are
    /// reported, not fatal: the next sync tries again.
    #[tracing::instrument(level = "debug", skip_all, fields(routes = desired.len()))]
    pub async fn sync(
        &mut self,
        desired: &RouteSet,
        refresh: bool,
    ) -> Result<SyncReport, NetError> {
        let mut report = SyncReport::default();
        let stale: Vec<(Cidr, Ipv4Addr)> = self
            .installed
            .iter()
            .filter(|(dst, _)| !desired.contains_key(dst))
            .map(|(d, g)| (*d, *g))
            .collect();
        for (destination, gateway) in stale {
            match delete_route(&self.handle, destination, gateway).await {
                Ok(()) => {
                    self.installed.remove(&destination);
                    report.deleted.push((destination, gateway));
                }
                Err(e) => report.failed.push((destination, gateway, e)),
            }
        }
        for (destination, gateway) in desired {
            if !refresh && self.installed.get(destination) == Some(gateway) {
                continue;
            }
            match replace_route(&self.handle, *destination, *gateway).await {
                Ok(()) => {
                    self.installed.insert(*destination, *gateway);
                    report.replaced.push((*destination, *gateway));
                }
                Err(e) => {
                    // A route that was ours and could not be replaced is
                    // not known to be there any more.
                    self.installed.remove(destination);
                    report.failed.push((*destination, *gateway, e));
                }
            }
        }
        self.save()?;
        for (destination, gateway) in &report.replaced {
            tracing::info!(%destination, %gateway, "peer route set");
        }
        for (destination, gateway) in &report.deleted {
            tracing::info!(%destination, %gateway, "peer route deleted");
        }
        Ok(report)
    }

    fn save(&self) -> Result<(), NetError> {
        let records: Vec<Record> = self
            .installed
            .iter()
            .map(|(d, g)| Record {
                destination: d.to_string(),
                gateway: *g,
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&records).map_err(|e| NetError::Record {
            path: self.state.display().to_string(),
            reason: e.to_string(),
        })?;
        let tmp = self.state.with_extension("tmp");
        fs::write(&tmp, bytes).map_err(NetError::io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &self.state).map_err(NetError::io(format!(
            "renaming to {}",
            self.state.display()
        )))
    }
}

fn message(destination: Cidr, gateway: Ipv4Addr) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cidr::network(&destination), destination.prefix)
        .gateway(gateway)
        .build()
}

/// Adds `destination via gateway` to the main table, replacing the route
/// the destination had.
pub async fn replace_route(
    handle: &Handle,
    destination: Cidr,
    gateway: Ipv4Addr,
) -> Result<(), NetError> {
    handle
        .route()
        .add(message(destination, gateway))
        .replace()
        .execute()
        .await
        .map_err(NetError::netlink(format!(
            "adding route {destination} via {gateway}"
        )))
}

/// Deletes `destination via gateway` (no error if it is not there).
pub async fn delete_route(
    handle: &Handle,
    destination: Cidr,
    gateway: Ipv4Addr,
) -> Result<(), NetError> {
    match handle
        .route()
        .del(message(destination, gateway))
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if netlink::errno(&e) == Some(ESRCH) => Ok(()),
        Err(e) => Err(NetError::netlink(format!(
            "deleting route {destination} via {gateway}"
        ))(e)),
    }
}

/// Every IPv4 address of the host's interfaces (a peer node whose address
/// is one of them is this host: no route to it).
pub async fn local_addresses(
    handle: &Handle,
) -> Result<std::collections::BTreeSet<Ipv4Addr>, NetError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut all = std::collections::BTreeSet::new();
    let mut addresses = handle.address().get().execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(NetError::netlink("listing the host's addresses"))?
    {
        for attribute in &message.attributes {
            if let AddressAttribute::Local(std::net::IpAddr::V4(ip))
            | AddressAttribute::Address(std::net::IpAddr::V4(ip)) = attribute
            {
                all.insert(*ip);
            }
        }
    }
    Ok(all)
}

/// The gateway of the main table's route to `destination`, if it has one.
pub async fn gateway_of(handle: &Handle, destination: Cidr) -> Result<Option<Ipv4Addr>, NetError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let network = cidr::network(&destination);
    while let Some(route) = routes
        .try_next()
        .await
        .map_err(NetError::netlink("listing the host's routes"))?
    {
        let matches = route.header.destination_prefix_length == destination.prefix
            && route.attributes.iter().any(|a| {
                matches!(a, RouteAttribute::Destination(RouteAddress::Inet(ip)) if *ip == network)
            });
        if matches {
            return Ok(route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            }));
        }
    }
    Ok(None)
}
