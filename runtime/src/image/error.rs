//! The image store's error type.

use std::io;
use std::path::PathBuf;

/// What can go wrong in the image store. Messages are meant to be shown to a
/// user as they are (in a pod's status, an Event, or `orchd image` output).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The image is not in the store (and the pull policy forbids pulling it).
    #[error("image {reference} is not present in the image store{hint}")]
    NotPresent {
        /// The normalized reference.
        reference: String,
        /// Extra context, e.g. the pull policy that forbade a pull.
        hint: String,
    },
    /// The registry refused or failed the pull; `message` keeps the registry's words.
    #[error("pulling {reference}: {message}")]
    Registry {
        /// The normalized reference.
        reference: String,
        /// The registry's error text (or the transport error).
        message: String,
    },
    /// A blob's content does not hash to its digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the blob was announced with.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A digest string is not `sha256:` followed by 64 lowercase hex digits.
    #[error("unsupported or malformed digest {0:?} (only sha256 digests are supported)")]
    InvalidDigest(String),
    /// A blob the image needs is missing from the store or the import source.
    #[error("blob {digest} is missing from {place}")]
    BlobMissing {
        /// The missing blob's digest.
        digest: String,
        /// Where it was looked for.
        place: String,
    },
    /// A manifest, config, index or archive does not have the expected shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being read.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A valid but unsupported feature (e.g. zstd layers).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A layer could not be unpacked.
    #[error("unpacking layer {diff_id}: {reason}")]
    Layer {
        /// The layer's uncompressed digest.
        diff_id: String,
        /// What went wrong.
        reason: String,
    },
    /// Mounting a container's rootfs failed.
    #[error("mounting overlayfs at {target}: {reason}")]
    Mount {
        /// The mount point.
        target: PathBuf,
        /// The kernel's error or the option problem.
        reason: String,
    },
    /// Unmounting a container's rootfs failed.
    #[error("unmounting {target}: {source}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The kernel's error.
        source: io::Error,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl ImageError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
        let context = context.into();
        move |source| ImageError::Io { context, source }
    }

    /// A malformed-document error.
    pub(crate) fn malformed(what: impl Into<String>, reason: impl ToString) -> ImageError {
        ImageError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Result alias of the image store.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
