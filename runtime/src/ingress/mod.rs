//! The Ingress proxy: what an ingress controller (ingress-nginx, k3s'
//! Traefik) does for `networking.k8s.io/v1` Ingresses, run on each node.
//!
//! # Design
//!
//! - [`source`]: the objects are read through [`IngressSource`], in
//!   practice the informer caches of Ingresses, Services and EndpointSlices
//!   ([`CacheSource`]); tests use an in-memory [`MemorySource`].
//! - [`routes`]: routing is a pure function of those objects, computed
//!   anew for every request from the source's current contents (a scan of
//!   the Ingresses of the class, then the Service and its slices), so there
//!   is no table to keep fresh: a change the informers have seen takes
//!   effect on the next request, without a restart.
//! - [`proxy`]: [`IngressProxy`] is a hyper HTTP/1.1 server. Each request
//!   is routed by host (without port) and path, load-balanced round robin
//!   over the backend's ready endpoints, and sent over a new connection to
//!   the chosen endpoint (the next one is tried when a connection is
//!   refused, before anything was sent). Bodies stream both ways; upgrades
//!   (WebSocket) are tunnelled. `X-Forwarded-For`, `-Host` and `-Proto` are
//!   set; `Host` is kept. The proxy answers 404 when nothing routes the
//!   request, 503 when the backend Service is missing or has no ready
//!   endpoint, 502 when the endpoints fail, each with a text body saying
//!   why.
//! - [`events`]: a backend that cannot be served is reported as a Warning
//!   Event on the Ingress (`ServiceNotFound`, `ServicePortNotFound`,
//!   `NoEndpoints`, `InvalidBackend`), once per Ingress generation and
//!   reason.
//!
//! # Not supported
//!
//! TLS termination (`spec.tls`), `resource` backends, ExternalName
//! Services, HTTP/2 to clients or backends, and connection reuse to
//! backends (every request gets a connection of its own).

mod balance;
pub mod error;
pub mod events;
mod headers;
pub mod proxy;
pub mod routes;
pub mod source;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod proxy_tests;
#[cfg(test)]
mod routes_tests;

pub use error::IngressError;
pub use events::EventRecorder;
pub use proxy::{IngressProxy, ProxyBody, ProxyConfig};
pub use routes::{Route, ServiceRef, DEFAULT_CLASS};
pub use source::{CacheSource, IngressSource, MemorySource};
