//! API errors, answered as Kubernetes `Status` objects with the code and
//! reason clients switch on.

use orch_raft_store::StoreError;
use serde_json::{json, Value};

/// One field-level complaint of a 422 Invalid error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCause {
    /// JSON path of the field, e.g. `metadata.name`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An API error: HTTP code, Kubernetes reason, message, optional details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes `StatusReason` (`NotFound`, `AlreadyExists`, ...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Kind and name of the object concerned, when known.
    pub details: Option<(String, String)>,
    /// Field causes (for `Invalid`).
    pub causes: Vec<FieldCause>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            causes: Vec::new(),
        }
    }

    /// 400: the request cannot be understood.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404: no such object (`plural` `name`).
    pub fn not_found(plural: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{plural} \"{name}\" not found"));
        e.details = Some((plural.to_string(), name.to_string()));
        e
    }

    /// 404 for a path that serves nothing.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 404 with a message of its own (things that are not API objects,
    /// such as a container's log files on a node).
    pub fn not_found_message(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", message)
    }

    /// 401: the request carries no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "Unauthorized", message)
    }

    /// 405: the resource does not support the verb.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 409: the object already exists.
    pub fn already_exists(plural: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{plural} \"{name}\" already exists"),
        );
        e.details = Some((plural.to_string(), name.to_string()));
        e
    }

    /// 409: the object changed since the client read it.
    pub fn conflict(plural: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
        e.details = Some((plural.to_string(), name.to_string()));
        e
    }

    /// 410: the requested resourceVersion was compacted.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413: the request body is too large.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    /// 415: a patch or body type the server does not accept.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 422: the object is invalid; `causes` name the fields.
    pub fn invalid(kind: &str, name: &str, causes: Vec<FieldCause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", summary.join(", ")),
        );
        e.details = Some((kind.to_string(), name.to_string()));
        e.causes = causes;
        e
    }

    /// 422: a patch that is well formed but cannot be applied.
    pub fn invalid_patch(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 403: forbidden (e.g. creating in a terminating namespace).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 503/504: the store cannot serve the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// 500: a real internal fault.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The error a `Status` object describes (as answered by another
    /// server, e.g. a node agent whose answer the API server passes on);
    /// `http_code` is used when the object carries no code. Details and
    /// causes are not carried over.
    pub fn from_status(status: &Value, http_code: u16) -> Self {
        let code = status["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..600).contains(c))
            .unwrap_or(http_code);
        let reason = status["reason"]
            .as_str()
            .and_then(|r| KNOWN_REASONS.iter().find(|known| **known == r).copied())
            .unwrap_or_else(|| reason_of_code(code));
        let message = status["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("the server answered {code}"));
        Self::new(code, reason, message)
    }

    /// The Kubernetes `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.details.is_some() || !self.causes.is_empty() {
            let mut details = json!({});
            if let Some((kind, name)) = &self.details {
                details["kind"] = json!(kind);
                details["name"] = json!(name);
            }
            if !self.causes.is_empty() {
                // A 409 with causes is a server-side apply conflict.
                let cause_reason = if self.reason == "Conflict" {
                    "FieldManagerConflict"
                } else {
                    "FieldValueInvalid"
                };
                details["causes"] = self
                    .causes
                    .iter()
                    .map(
                        |c| json!({"reason": cause_reason, "message": c.message, "field": c.field}),
                    )
                    .collect();
            }
            status["details"] = details;
        }
        status
    }
}

/// The `StatusReason`s clients switch on.
const KNOWN_REASONS: &[&str] = &[
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "AlreadyExists",
    "Conflict",
    "Gone",
    "Expired",
    "Invalid",
    "MethodNotAllowed",
    "NotAcceptable",
    "RequestEntityTooLarge",
    "UnsupportedMediaType",
    "TooManyRequests",
    "InternalError",
    "ServiceUnavailable",
    "Timeout",
];

/// The reason Kubernetes gives an HTTP code when nothing more is known.
fn reason_of_code(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { .. } => {
                ApiError::gone(format!("too old resource version: {e}"))
            }
            StoreError::RequestTooLarge { .. } => ApiError::too_large(e.to_string()),
            StoreError::FutureRevision { .. } => {
                ApiError::new(504, "Timeout", format!("Too large resource version: {e}"))
            }
            StoreError::Unavailable(_)
            | StoreError::NotLeader { .. }
            | StoreError::Stopped
            | StoreError::Fenced { .. } => ApiError::unavailable(e.to_string()),
            StoreError::EmptyKey | StoreError::InvertedRange | StoreError::InvalidArgument(_) => {
                ApiError::bad_request(e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}
