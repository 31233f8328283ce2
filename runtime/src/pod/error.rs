//! The pod runtime's error type.

use std::io;

use crate::image::ImageError;

/// What can go wrong running a pod's containers. Messages are meant for a
/// pod's status or an Event as they are.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The container's configuration cannot be turned into a runtime spec
    /// (no command, bad user, bad resource value, invalid name).
    #[error("invalid container configuration: {0}")]
    InvalidConfig(String),
    /// The image store failed (image missing, rootfs mount failed).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// libcontainer refused or failed an operation.
    #[error("{context}: {source}")]
    Container {
        /// What was being done, with the container id.
        context: String,
        /// libcontainer's error.
        source: libcontainer::error::LibcontainerError,
    },
    /// A namespace, mount or signal system call failed.
    #[error("{context}: {source}")]
    Sys {
        /// What was being done.
        context: String,
        /// The errno.
        source: nix::Error,
    },
    /// Setting up the pod's network namespace failed.
    #[error("{context}: {source}")]
    Network {
        /// What was being done.
        context: String,
        /// The netlink error.
        source: libcontainer::network::NetworkError,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A record the runtime keeps on disk does not parse.
    #[error("malformed record {path}: {reason}")]
    Record {
        /// The file.
        path: String,
        /// The parse error.
        reason: String,
    },
    /// The container (this run of it) exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// No such pod sandbox or container.
    #[error("{0} not found")]
    NotFound(String),
    /// The runtime's worker thread has stopped (the runtime is shutting down).
    #[error("the pod runtime's worker thread has stopped")]
    WorkerGone,
}

impl PodError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> PodError {
        let context = context.into();
        move |source| PodError::Io { context, source }
    }

    /// Wraps an errno with a description of what was being done.
    pub(crate) fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> PodError {
        let context = context.into();
        move |source| PodError::Sys { context, source }
    }

    /// Wraps a libcontainer error with a description of what was being done.
    pub(crate) fn container(
        context: impl Into<String>,
    ) -> impl FnOnce(libcontainer::error::LibcontainerError) -> PodError {
        let context = context.into();
        move |source| PodError::Container { context, source }
    }
}

/// Result alias of the pod runtime.
pub type Result<T, E = PodError> = std::result::Result<T, E>;
