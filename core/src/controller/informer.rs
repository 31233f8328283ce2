//! Informers: list + watch of one kind into an in-memory cache, as
//! kube-runtime's reflector does. The cache is filled by a full list, then
//! kept current by the watch from the list's resourceVersion; a compacted
//! resourceVersion (410) or a broken watch sends it back to a full re-list.
//! Every change is announced with the object's key so a loop can queue it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::client::Client;
use crate::registry::EventType;

/// `namespace/name` (or `name` for cluster-scoped objects).
pub type ObjectKey = String;

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// A read handle on an informer's cache. Cheap to clone.
pub struct Cache<K> {
    objects: Arc<RwLock<HashMap<ObjectKey, Arc<K>>>>,
    ready: watch::Receiver<bool>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            objects: self.objects.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K> Cache<K> {
    /// The cached object with this key.
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.objects.read().expect("cache lock").get(key).cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.objects
            .read()
            .expect("cache lock")
            .values()
            .cloned()
            .collect()
    }

    /// Waits until the first full list has filled the cache.
    pub async fn wait_until_ready(&mut self) {
        let _ = self.ready.wait_for(|ready| *ready).await;
    }
}

/// Runs an informer of kind `K` (in `namespace`, or all) until `changes`
/// is closed; returns its cache at once.
pub fn start<K>(
    client: Client,
    namespace: Option<String>,
    changes: mpsc::UnboundedSender<ObjectKey>,
) -> Cache<K>
where
    K: k8s_openapi::Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    let objects = Arc::new(RwLock::new(HashMap::new()));
    let (ready_tx, ready) = watch::channel(false);
    let cache = Cache {
        objects: objects.clone(),
        ready,
    };
    tokio::spawn(async move {
        loop {
            if changes.is_closed() {
                return;
            }
            // Full list: replace the cache, announce every key that changed.
            let (items, rv) = match client.list::<K>(namespace.as_deref(), None).await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(kind = K::KIND, error = %e, "informer list failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let fresh: HashMap<ObjectKey, Arc<K>> = items
                .into_iter()
                .map(|o| (key_of(o.metadata()), Arc::new(o)))
                .collect();
            let announced: Vec<ObjectKey> = {
                let mut cached = objects.write().expect("cache lock");
                let gone: Vec<ObjectKey> = cached
                    .keys()
                    .filter(|k| !fresh.contains_key(*k))
                    .cloned()
                    .collect();
                let all: Vec<ObjectKey> = fresh.keys().cloned().chain(gone).collect();
                *cached = fresh;
                all
            };
            for key in announced {
                let _ = changes.send(key);
            }
            ready_tx.send_replace(true);
            // Follow the watch until it breaks or is compacted away.
            let mut stream = match client.watch::<K>(namespace.as_deref(), &rv).await {
                Ok(stream) => Box::pin(stream),
                Err(e) => {
                    tracing::warn!(kind = K::KIND, error = %e, "informer watch failed; re-listing");
                    continue;
                }
            };
            while let Some(event) = stream.next().await {
                match event {
                    Ok((kind, object)) => {
                        let key = key_of(object.metadata());
                        {
                            let mut cached = objects.write().expect("cache lock");
                            if kind == EventType::Deleted {
                                cached.remove(&key);
                            } else {
                                cached.insert(key.clone(), Arc::new(object));
                            }
                        }
                        if changes.send(key).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::info!(kind = K::KIND, error = %e, "informer watch ended; re-listing");
                        break;
                    }
                }
            }
        }
    });
    cache
}
