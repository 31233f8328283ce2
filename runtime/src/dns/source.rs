//! Where the DNS answers come from: the Services and their EndpointSlices,
//! read from the agent's informer caches (`agent::services::ServiceCaches`)
//! or from fixed lists ([`StaticSource`], for tests and tools).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use orch_core::controller::endpoints::SERVICE_NAME_LABEL;

/// The Services and EndpointSlices the cluster zone is built from. Read on
/// every query, so an implementation must be cheap and never block long.
pub trait ServiceSource: Send + Sync + 'static {
    /// The Service `namespace/name`, if it exists.
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;

    /// Every Service.
    fn services(&self) -> Vec<Arc<Service>>;

    /// The EndpointSlices of the Service `namespace/name` (those in its
    /// namespace labelled `kubernetes.io/service-name: name`).
    fn slices_of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>>;

    /// True when some Service lives in `namespace`.
    fn has_namespace(&self, namespace: &str) -> bool {
        self.services()
            .iter()
            .any(|s| s.metadata.namespace.as_deref() == Some(namespace))
    }
}

/// True when `slice` is one of the Service `namespace/service`'s slices.
fn belongs_to(slice: &EndpointSlice, namespace: &str, service: &str) -> bool {
    slice.metadata.namespace.as_deref() == Some(namespace)
        && slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            .is_some_and(|name| name == service)
}

/// Fixed lists of Services and EndpointSlices.
#[derive(Clone, Default)]
pub struct StaticSource {
    /// The Services.
    pub services: Vec<Arc<Service>>,
    /// The EndpointSlices (matched to Services by their label).
    pub slices: Vec<Arc<EndpointSlice>>,
}

impl ServiceSource for StaticSource {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }

    fn services(&self) -> Vec<Arc<Service>> {
        self.services.clone()
    }

    fn slices_of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .iter()
            .filter(|slice| belongs_to(slice, namespace, service))
            .cloned()
            .collect()
    }
}
