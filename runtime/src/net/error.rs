//! The errors of the pod network.

/// Why a piece of the pod network could not be set up or taken down.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A file of the network's state (IPAM records, the route list) could
    /// not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a netlink request (or the socket failed).
    #[error("{context}: {source}")]
    Netlink {
        /// What was being done.
        context: String,
        /// rtnetlink's error (the kernel's errno for a refused request).
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call failed (entering a network namespace).
    #[error("{context}: {source}")]
    Sys {
        /// What was being done.
        context: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `nft` could not be run or refused the ruleset.
    #[error("{context}: {source}")]
    Nft {
        /// What was being done.
        context: String,
        /// The nftables crate's error (`nft`'s output when it refused).
        #[source]
        source: nftables::helper::NftablesError,
    },
    /// Every address of the pod CIDR is taken.
    #[error("no free address left in pod CIDR {cidr}")]
    Exhausted {
        /// The node's pod CIDR.
        cidr: String,
    },
    /// A pod CIDR that cannot hold pods (unparsable, or too small for a
    /// gateway and one pod).
    #[error("invalid pod CIDR {cidr:?}: {reason}")]
    InvalidCidr {
        /// The CIDR as given.
        cidr: String,
        /// Why it is unusable.
        reason: String,
    },
    /// An interface or nftables table name that Linux would refuse.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A record of the network's state is not what it should be.
    #[error("{path}: {reason}")]
    Record {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The network cannot serve pods yet (the Node has no pod CIDR).
    #[error("pod network not ready: {0}")]
    NotReady(String),
}

impl NetError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
        let context = context.into();
        move |source| NetError::Io { context, source }
    }

    /// Wraps a netlink error with what was being done.
    pub fn netlink(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
        let context = context.into();
        move |source| NetError::Netlink { context, source }
    }

    /// Wraps an errno with what was being done.
    pub fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> NetError {
        let context = context.into();
        move |source| NetError::Sys { context, source }
    }
}
