//! Where the proxy reads Ingresses, Services and EndpointSlices from: a
//! small trait, implemented by the informer caches of a node
//! ([`CacheSource`]) and by a plain in-memory store ([`MemorySource`], for
//! tests and for embedding without an API).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orch_core::controller::{Cache, Informer};
use orch_core::Client;
use tokio_util::sync::CancellationToken;

use crate::agent::services::{slice_service, ServiceCaches};

/// The objects routing reads, as they are now. Read on every request, so
/// implementations must be cheap (in-memory).
pub trait IngressSource: Send + Sync {
    /// Every Ingress (of every class; the router filters).
    fn ingresses(&self) -> Vec<Arc<Ingress>>;
    /// The Service `namespace/name`.
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    /// The EndpointSlices of Service `namespace/service` (labelled
    /// `kubernetes.io/service-name: service`, in `namespace`).
    fn slices_of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>>;
}

/// The informer caches of Ingresses and of the node's Services and
/// EndpointSlices (shared with the service proxy and DNS): always as
/// current as the watches, so changes take effect on the next request.
#[derive(Clone)]
pub struct CacheSource {
    ingresses: Cache<Ingress>,
    services: ServiceCaches,
}

impl CacheSource {
    /// Reads Ingresses from `ingresses`, the rest from `services`.
    pub fn new(ingresses: Cache<Ingress>, services: ServiceCaches) -> Self {
        CacheSource {
            ingresses,
            services,
        }
    }

    /// Starts an Ingress informer (stopped by `stop`) next to `services`.
    pub fn start(client: &Client, services: ServiceCaches, stop: &CancellationToken) -> Self {
        let ingresses = Informer::<Ingress>::new(client.clone()).start(stop.clone(), |_| {});
        CacheSource::new(ingresses, services)
    }

    /// True once every cache was filled by its first list.
    pub fn is_ready(&self) -> bool {
        self.ingresses.is_ready()
            && self.services.services.is_ready()
            && self.services.slices.is_ready()
    }

    /// Waits until every cache was filled by its first list.
    pub async fn wait_until_ready(&mut self) {
        self.ingresses.wait_until_ready().await;
        self.services.services.wait_until_ready().await;
        self.services.slices.wait_until_ready().await;
    }
}

impl IngressSource for CacheSource {
    fn ingresses(&self) -> Vec<Arc<Ingress>> {
        self.ingresses.list()
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.services.get(&format!("{namespace}/{name}"))
    }

    fn slices_of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.services.slices_of(namespace, service)
    }
}

/// Objects kept in memory, changed by hand (tests, or routing without an
/// API server).
#[derive(Default)]
pub struct MemorySource {
    objects: RwLock<Objects>,
}

#[derive(Default)]
struct Objects {
    ingresses: BTreeMap<String, Arc<Ingress>>,
    services: BTreeMap<String, Arc<Service>>,
    slices: BTreeMap<String, Arc<EndpointSlice>>,
}

fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

impl MemorySource {
    /// An empty store.
    pub fn new() -> Self {
        MemorySource::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Objects> {
        self.objects.write().expect("ingress source lock")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects> {
        self.objects.read().expect("ingress source lock")
    }

    /// Adds or replaces an Ingress (by namespace/name).
    pub fn put_ingress(&self, ingress: Ingress) {
        self.write()
            .ingresses
            .insert(key(&ingress.metadata), Arc::new(ingress));
    }

    /// Removes Ingress `namespace/name`; true if it was there.
    pub fn remove_ingress(&self, namespace: &str, name: &str) -> bool {
        self.write()
            .ingresses
            .remove(&format!("{namespace}/{name}"))
            .is_some()
    }

    /// Adds or replaces a Service (by namespace/name).
    pub fn put_service(&self, service: Service) {
        self.write()
            .services
            .insert(key(&service.metadata), Arc::new(service));
    }

    /// Removes Service `namespace/name`; true if it was there.
    pub fn remove_service(&self, namespace: &str, name: &str) -> bool {
        self.write()
            .services
            .remove(&format!("{namespace}/{name}"))
            .is_some()
    }

    /// Adds or replaces an EndpointSlice (by namespace/name).
    pub fn put_slice(&self, slice: EndpointSlice) {
        self.write()
            .slices
            .insert(key(&slice.metadata), Arc::new(slice));
    }

    /// Removes EndpointSlice `namespace/name`; true if it was there.
    pub fn remove_slice(&self, namespace: &str, name: &str) -> bool {
        self.write()
            .slices
            .remove(&format!("{namespace}/{name}"))
            .is_some()
    }
}

impl IngressSource for MemorySource {
    fn ingresses(&self) -> Vec<Arc<Ingress>> {
        self.read().ingresses.values().cloned().collect()
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.read()
            .services
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    fn slices_of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        let wanted = format!("{namespace}/{service}");
        self.read()
            .slices
            .values()
            .filter(|s| slice_service(s).first() == Some(&wanted))
            .cloned()
            .collect()
    }
}
