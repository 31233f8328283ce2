//! orch's node agent runtime: the image store ([`image`]), with imports,
//! registry pulls and overlayfs container root filesystems; pods through
//! libcontainer ([`pod`]); the pod network ([`net`]); the agent that drives
//! them from the API ([`agent`]).

pub mod agent;
pub mod dns;
pub mod image;
pub mod ingress;
pub mod net;
pub mod pod;
