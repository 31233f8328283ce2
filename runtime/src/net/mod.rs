//! The pod network of a node (host-gateway style, as flannel's
//! `host-gw` backend):
//!
//! - [`bridge`]: one bridge per node (`orch0`) holding the first address
//!   of the node's pod CIDR, the pods' gateway;
//! - [`veth`]: a veth pair per pod, the host end on the bridge, the other
//!   end the pod's `eth0` with its address and a default route;
//! - [`ipam`]: pod addresses from the node's pod CIDR, one `O_EXCL` file
//!   per address in the agent's data dir;
//! - [`routes`]: a route `podCIDR via nodeIP` to every other node;
//! - [`masquerade`]: an nftables table SNATing pod traffic that leaves the
//!   cluster to the node's address;
//! - [`sysctl`]: IPv4 forwarding.
//!
//! Everything talks to the kernel over rtnetlink ([`netlink`]) but the
//! masquerade table, which goes through `nft`'s JSON API. Each piece is
//! idempotent: the agent applies the state it wants, again after a
//! restart, without first asking what is there.

pub mod bridge;
pub mod cidr;
mod error;
pub mod ipam;
pub mod masquerade;
pub mod netlink;
pub mod nft;
pub mod routes;
pub mod service_rules;
pub mod sysctl;
pub mod veth;

pub use cidr::Cidr;
pub use error::NetError;
