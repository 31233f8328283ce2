//! A link from the host to a network namespace of a test: a veth pair
//! whose host end has `host_ip/24` and whose other end is `eth0` in the
//! namespace with `peer_ip/24`, both up. Shared by the runtime's own
//! network tests (which include this file by path) and orch-tests.

use std::net::Ipv4Addr;
use std::path::Path;

use orch_runtime::net::netlink;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

/// Makes the veth pair `name` (host end) / `eth0` (in the namespace whose
/// file is `netns`) and gives both ends their address.
pub async fn link_to_namespace(
    host: &rtnetlink::Handle,
    name: &str,
    netns: &Path,
    host_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
) {
    let fd = std::fs::File::open(netns).unwrap();
    let peer = LinkUnspec::new_with_name("eth0")
        .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .build();
    host.link()
        .add(
            LinkMessageBuilder::<LinkVeth>::new(name, "eth0")
                .set_info_data(rtnetlink::packet_route::link::InfoData::Veth(
                    rtnetlink::packet_route::link::InfoVeth::Peer(peer),
                ))
                .up()
                .build(),
        )
        .execute()
        .await
        .unwrap();
    let index = netlink::link_by_name(host, name)
        .await
        .unwrap()
        .unwrap()
        .header
        .index;
    host.address()
        .add(index, host_ip.into(), 24)
        .execute()
        .await
        .unwrap();
    let inside = netlink::connect_in(netns).await.unwrap();
    let eth0 = netlink::link_by_name(&inside, "eth0")
        .await
        .unwrap()
        .unwrap()
        .header
        .index;
    inside
        .link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await
        .unwrap();
    inside
        .address()
        .add(eth0, peer_ip.into(), 24)
        .execute()
        .await
        .unwrap();
}
