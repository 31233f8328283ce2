//! orch's node agent runtime: the image store ([`image`]), with imports,
//! registry pulls and overlayfs container root filesystems; pods through
//! libcontainer ([`pod`]); the pod network ([`net`]); the agent that drives
//! them from the API ([`agent`]).

pub mod agent;
pub mod image;
pub mod net;
pub mod pod;
