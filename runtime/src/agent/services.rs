//! The agent's view of the cluster's Services: one informer of Services
//! and one of EndpointSlices (indexed by their Service), shared by the
//! service proxy, the cluster DNS server and the Ingress proxy, and a
//! signal that wakes the proxy on every change.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use orch_core::controller::endpoints::SERVICE_NAME_LABEL;
use orch_core::controller::{Cache, Informer};
use orch_core::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dns::ServiceSource;

/// The index of the slice cache by Service (`namespace/name`).
pub const BY_SERVICE: &str = "service";

/// The Services and EndpointSlices of the cluster, as the agent's
/// informers cache them, and the signal that one changed.
#[derive(Clone)]
pub struct ServiceCaches {
    /// Every Service.
    pub services: Cache<Service>,
    /// Every EndpointSlice, indexed by [`BY_SERVICE`].
    pub slices: Cache<EndpointSlice>,
    /// Notified on every change of either.
    pub changed: Arc<Notify>,
    /// The Services (`namespace/name`) whose object or slices changed
    /// since the service proxy last took them.
    dirty: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl ServiceCaches {
    /// Starts the two informers (until `stop`).
    pub fn start(client: &Client, stop: &CancellationToken) -> ServiceCaches {
        let changed = Arc::new(Notify::new());
        let dirty: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        let (wake, marks) = (changed.clone(), dirty.clone());
        let services = Informer::<Service>::new(client.clone()).start(
            stop.clone(),
            move |service: &Service| {
                let ns = service.metadata.namespace.as_deref().unwrap_or("default");
                let name = service.metadata.name.as_deref().unwrap_or_default();
                lock(&marks).insert(format!("{ns}/{name}"));
                wake.notify_one();
            },
        );
        let (wake, marks) = (changed.clone(), dirty.clone());
        let slices = Informer::<EndpointSlice>::new(client.clone())
            .index(BY_SERVICE, slice_service)
            .start(stop.clone(), move |slice: &EndpointSlice| {
                lock(&marks).extend(slice_service(slice));
                wake.notify_one();
            });
        ServiceCaches {
            services,
            slices,
            changed,
            dirty,
        }
    }

    /// Takes the Services (`namespace/name`) that changed since the last
    /// call (their object or one of their slices).
    pub fn take_changed(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut *lock(&self.dirty))
    }

    /// The EndpointSlices of Service `namespace/name`.
    pub fn slices_of(&self, namespace: &str, name: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .by_index(BY_SERVICE, &format!("{namespace}/{name}"))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `namespace/name` of the Service an EndpointSlice belongs to.
pub fn slice_service(slice: &EndpointSlice) -> Vec<String> {
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|svc| vec![format!("{ns}/{svc}")])
        .unwrap_or_default()
}

impl ServiceSource for ServiceCaches {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&format!("{namespace}/{name}"))
    }

    fn services(&self) -> Vec<Arc<Service>> {
        self.services.list()
    }

    fn slices_of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        ServiceCaches::slices_of(self, namespace, service)
    }
}
