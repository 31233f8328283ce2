//! The errors of the ingress proxy, with the HTTP status each answers and
//! the Event reason each is reported under.

use std::net::SocketAddr;

use hyper::StatusCode;

use super::routes::ServiceRef;

/// What can go wrong serving an Ingress.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The proxy's listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No rule of any Ingress matches the request, and no Ingress has a
    /// default backend.
    #[error("no Ingress rule matches host {host:?} and path {path:?}")]
    NoRoute {
        /// The request's host (normalized).
        host: String,
        /// The request's path.
        path: String,
    },
    /// An Ingress backend names a Service that does not exist.
    #[error("Service {service} not found (Ingress {ingress})")]
    ServiceNotFound {
        /// `namespace/name` of the Ingress.
        ingress: String,
        /// The backend.
        service: ServiceRef,
    },
    /// An Ingress backend names a port the Service does not have.
    #[error("Service {service} has no port {port} (Ingress {ingress})", port = .service.port)]
    PortNotFound {
        /// `namespace/name` of the Ingress.
        ingress: String,
        /// The backend.
        service: ServiceRef,
    },
    /// The backend Service has no ready endpoint for the port.
    #[error("Service {service} has no ready endpoints for port {port} (Ingress {ingress})", port = .service.port)]
    NoEndpoints {
        /// `namespace/name` of the Ingress.
        ingress: String,
        /// The backend.
        service: ServiceRef,
    },
    /// The backend is not a Service with a port (e.g. a `resource` backend).
    #[error("Ingress {ingress}: {detail}")]
    InvalidBackend {
        /// `namespace/name` of the Ingress.
        ingress: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No endpoint tried accepted a connection (nothing was sent).
    #[error("could not connect to Service {service} ({tried} endpoint(s) tried): {source}")]
    Connect {
        /// The backend.
        service: ServiceRef,
        /// How many endpoints were tried.
        tried: usize,
        /// The last endpoint's error.
        source: std::io::Error,
    },
    /// The endpoint failed once the request was on its way.
    #[error("endpoint {endpoint} of Service {service} failed: {source}")]
    Upstream {
        /// The backend.
        service: ServiceRef,
        /// The endpoint connected to.
        endpoint: SocketAddr,
        /// What hyper saw.
        source: hyper::Error,
    },
}

impl IngressError {
    /// The HTTP status a request answered with this error gets: 404 when
    /// nothing routes it, 503 for a
    /// backend that is missing or has nowhere to go, 502 for an endpoint
    /// that failed.
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::NoRoute { .. } => StatusCode::NOT_FOUND,
            IngressError::ServiceNotFound { .. }
            | IngressError::PortNotFound { .. }
            | IngressError::NoEndpoints { .. }
            | IngressError::InvalidBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            IngressError::Connect { .. } | IngressError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            IngressError::Bind { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The reason of the Warning Event recorded on the Ingress for this
    /// error, for errors of the Ingress' configuration (not for failing
    /// endpoints, which are the pods' business).
    pub fn event_reason(&self) -> Option<&'static str> {
        match self {
            IngressError::ServiceNotFound { .. } => Some("ServiceNotFound"),
            IngressError::PortNotFound { .. } => Some("ServicePortNotFound"),
            IngressError::NoEndpoints { .. } => Some("NoEndpoints"),
            IngressError::InvalidBackend { .. } => Some("InvalidBackend"),
            _ => None,
        }
    }
}
