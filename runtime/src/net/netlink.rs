//! rtnetlink connections: one in the agent's own (the host's) network
//! namespace, and short-lived ones made inside a pod's namespace, plus the
//! small look-ups every other part needs (a link's index, errnos).
//!
//! A netlink socket belongs to the network namespace of the thread that
//! made it, for good. A connection into a pod's namespace is therefore made
//! on a thread of its own that enters the namespace (`setns`), opens the
//! socket and ends; the socket keeps working from the agent's tokio
//! workers, which never leave the host's namespace.

use std::fs::File;
use std::path::Path;

use futures::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::Handle;

use super::NetError;

/// `ENODEV`: no such interface.
pub const ENODEV: i32 = nix::libc::ENODEV;
/// `EEXIST`: already there.
pub const EEXIST: i32 = nix::libc::EEXIST;
/// `ESRCH`: no such route.
pub const ESRCH: i32 = nix::libc::ESRCH;
/// `EADDRNOTAVAIL`: no such address.
pub const EADDRNOTAVAIL: i32 = nix::libc::EADDRNOTAVAIL;

/// A connection in the calling thread's network namespace (the host's, on
/// the agent's workers). Its I/O runs on a tokio task until every clone
/// of the handle is dropped.
pub fn connect() -> Result<Handle, NetError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(NetError::io("opening a netlink socket"))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A connection inside the network namespace held by the file `netns`
/// (a pod's `ns/net`, or `/proc/<pid>/ns/net`).
pub async fn connect_in(netns: &Path) -> Result<Handle, NetError> {
    let file = File::open(netns).map_err(NetError::io(format!("opening {}", netns.display())))?;
    connect_in_file(file).await
}

/// [`connect_in`] for an open namespace file.
pub async fn connect_in_file(netns: File) -> Result<Handle, NetError> {
    let runtime = tokio::runtime::Handle::current();
    let made = tokio::task::spawn_blocking(move || {
        std::thread::Builder::new()
            .name("orch-netns".into())
            .spawn(move || {
                // The socket registers with the agent's reactor.
                let _entered = runtime.enter();
                nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)
                    .map_err(NetError::sys("entering the pod's network namespace"))?;
                rtnetlink::new_connection().map_err(NetError::io(
                    "opening a netlink socket in the pod's namespace",
                ))
            })
            .map_err(NetError::io("spawning a thread for the pod's namespace"))?
            .join()
            .unwrap_or_else(|_| {
                Err(NetError::NotReady(
                    "the thread entering the pod's namespace panicked".into(),
                ))
            })
    })
    .await
    .map_err(|e| NetError::NotReady(format!("joining the namespace thread: {e}")))??;
    let (connection, handle, _) = made;
    tokio::spawn(connection);
    Ok(handle)
}

/// The errno of a request the kernel refused.
pub fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The link named `name`, if there is one.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let found = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(NetError::netlink(format!("looking up link {name}"))(e)),
    }
}

/// The kind of a link (`bridge`, `veth`, ...), if it says.
pub fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

/// The index of the bridge (or bond) a link is attached to, if any.
pub fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// Checks that `name` is a valid Linux interface name: 1 to 15 bytes, no
/// `/`, no white space, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), NetError> {
    let bad = |reason: &str| NetError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > 15 {
        return Err(bad("interface names have 1 to 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("not a usable interface name"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad("use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}
