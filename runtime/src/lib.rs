//! orch's node agent runtime. So far: the image store ([`image`]), with
//! imports, registry pulls and overlayfs container root filesystems.

pub mod agent;
pub mod image;
pub mod pod;
