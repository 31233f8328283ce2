//! Informers: list + watch of one kind into an in-memory, indexed cache, as
//! kube-runtime's reflector does. The cache is filled by a full list, then
//! kept current by the watch from the list's resourceVersion; a compacted
//! resourceVersion (410) or a broken watch sends it back to a full re-list.
//! Every change is handed to a callback so a loop can queue the keys it
//! concerns. The cache also tracks the newest revision it has seen, so a
//! loop can wait until its own writes are visible before acting again.

use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Selectors};
use crate::registry::EventType;

/// `namespace/name` (or `name` for cluster-scoped objects).
pub type ObjectKey = String;

/// The cache key of an object.
pub fn key_of(meta: &ObjectMeta) -> ObjectKey {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// The revision an object was last written at (0 if it has none).
pub fn revision_of(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// Computes the index values of an object (e.g. its node name, or the uids
/// of its owners).
pub type Indexer<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

struct Contents<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    indexers: Vec<(&'static str, Indexer<K>)>,
    indexes: HashMap<&'static str, HashMap<String, BTreeSet<ObjectKey>>>,
}

impl<K> Contents<K> {
    fn add_index(&mut self, name: &'static str, indexer: Indexer<K>) {
        if self.indexers.iter().any(|(n, _)| *n == name) {
            return;
        }
        let mut index: HashMap<String, BTreeSet<ObjectKey>> = HashMap::new();
        for (key, object) in &self.objects {
            for value in indexer(object) {
                index.entry(value).or_default().insert(key.clone());
            }
        }
        self.indexes.insert(name, index);
        self.indexers.push((name, indexer));
    }

    fn unindex(&mut self, key: &str, object: &K) {
        for (name, indexer) in &self.indexers {
            let index = self.indexes.entry(name).or_default();
            for value in indexer(object) {
                if let Some(keys) = index.get_mut(&value) {
                    keys.remove(key);
                    if keys.is_empty() {
                        index.remove(&value);
                    }
                }
            }
        }
    }

    fn insert(&mut self, key: ObjectKey, object: Arc<K>) {
        if let Some(old) = self.objects.remove(&key) {
            self.unindex(&key, &old);
        }
        for (name, indexer) in &self.indexers {
            let index = self.indexes.entry(name).or_default();
            for value in indexer(&object) {
                index.entry(value).or_default().insert(key.clone());
            }
        }
        self.objects.insert(key, object);
    }

    fn remove(&mut self, key: &str) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        self.unindex(key, &old);
        Some(old)
    }
}

/// A read handle on an informer's cache. Cheap to clone.
pub struct Cache<K> {
    contents: Arc<RwLock<Contents<K>>>,
    ready: watch::Receiver<bool>,
    revision: watch::Receiver<u64>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            contents: self.contents.clone(),
            ready: self.ready.clone(),
            revision: self.revision.clone(),
        }
    }
}

impl<K> Cache<K> {
    /// The cached object with this key.
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.contents
            .read()
            .expect("cache lock")
            .objects
            .get(key)
            .cloned()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.contents
            .read()
            .expect("cache lock")
            .objects
            .values()
            .cloned()
            .collect()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.contents.read().expect("cache lock").objects.len()
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached objects whose index `index` has `value`.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        let contents = self.contents.read().expect("cache lock");
        let Some(keys) = contents.indexes.get(index).and_then(|i| i.get(value)) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|key| contents.objects.get(key).cloned())
            .collect()
    }

    /// The values index `index` currently holds.
    pub fn index_values(&self, index: &str) -> Vec<String> {
        let contents = self.contents.read().expect("cache lock");
        contents
            .indexes
            .get(index)
            .map(|i| i.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// True once the first full list has filled the cache.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the first full list has filled the cache.
    pub async fn wait_until_ready(&mut self) {
        let _ = self.ready.wait_for(|ready| *ready).await;
    }

    /// The newest store revision the cache has seen.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits (at most `timeout`) until the cache has seen revision `rev`,
    /// e.g. a write of the caller's own; true if it has.
    pub async fn wait_for_revision(&self, rev: u64, timeout: Duration) -> bool {
        let mut revision = self.revision.clone();
        tokio::time::timeout(timeout, revision.wait_for(|seen| *seen >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Sees every object an informer adds or changes, and the last state of
/// every object it deletes, after the cache was updated.
pub type Handler<K> = Arc<dyn Fn(&K) + Send + Sync>;

/// A running informer: its cache and the handlers its changes go to.
struct Running<K> {
    cache: Cache<K>,
    handlers: Arc<RwLock<Vec<Handler<K>>>>,
}

impl<K> Clone for Running<K> {
    fn clone(&self) -> Self {
        Running {
            cache: self.cache.clone(),
            handlers: self.handlers.clone(),
        }
    }
}

/// A shared informer's identity: its kind and namespace (all: `None`).
type InformerKey = (TypeId, Option<String>);

/// The informers shared by the loops of one context: one list + watch and
/// one cache per kind (and namespace), however many loops look at it, as
/// client-go's shared informer factory does. They stop with `stop`.
#[derive(Clone)]
pub struct SharedInformers {
    stop: CancellationToken,
    running: Arc<std::sync::Mutex<HashMap<InformerKey, Box<dyn Any + Send + Sync>>>>,
}

impl SharedInformers {
    /// No informers yet; those started will stop when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Self {
        SharedInformers {
            stop,
            running: Arc::default(),
        }
    }
}

/// Builds and starts an informer of kind `K`.
pub struct Informer<K> {
    client: Client,
    namespace: Option<String>,
    selectors: Selectors,
    indexers: Vec<(&'static str, Indexer<K>)>,
    shared: Option<SharedInformers>,
}

impl<K> Informer<K>
where
    K: k8s_openapi::Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    /// An informer of every `K` the client can see.
    pub fn new(client: Client) -> Self {
        Informer {
            client,
            namespace: None,
            selectors: Selectors::default(),
            indexers: Vec::new(),
            shared: None,
        }
    }

    /// An informer that joins the one of `shared` for the same kind and
    /// namespace if it runs (adding its indexes and handler to it), or
    /// becomes it.
    pub fn shared(client: Client, shared: SharedInformers) -> Self {
        Informer {
            shared: Some(shared),
            ..Informer::new(client)
        }
    }

    /// Restricts the informer to one namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Restricts the informer to the objects matching `selectors` (not
    /// for shared informers: they are keyed by kind and namespace only).
    pub fn select(mut self, selectors: Selectors) -> Self {
        self.selectors = selectors;
        self
    }

    /// Adds an index named `name`, queried with [`Cache::by_index`].
    pub fn index(
        mut self,
        name: &'static str,
        indexer: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.indexers.push((name, Arc::new(indexer)));
        self
    }

    /// Runs the informer (until `stop` is cancelled, or the shared
    /// informers' stop); returns its cache at once. `on_change` sees every
    /// object that was added or changed, and the last state of every object
    /// that was deleted, after the cache was updated; joining a running
    /// shared informer, it first sees every object already cached.
    pub fn start(
        self,
        stop: CancellationToken,
        on_change: impl Fn(&K) + Send + Sync + 'static,
    ) -> Cache<K> {
        let on_change: Handler<K> = Arc::new(on_change);
        let Some(shared) = self.shared.clone() else {
            return self.spawn(stop, on_change).cache;
        };
        let key = (TypeId::of::<K>(), self.namespace.clone());
        let (running, joined) = {
            let mut all = shared.running.lock().expect("informers lock");
            match all.get(&key).and_then(|r| r.downcast_ref::<Running<K>>()) {
                Some(running) => (running.clone(), true),
                None => {
                    let running = self
                        .clone_config()
                        .spawn(shared.stop.clone(), on_change.clone());
                    all.insert(key, Box::new(running.clone()));
                    (running, false)
                }
            }
        };
        {
            let mut contents = running.cache.contents.write().expect("cache lock");
            for (name, indexer) in self.indexers {
                contents.add_index(name, indexer);
            }
        }
        // Joining: register, then replay what is cached already (a change
        // racing with the replay is seen twice, which queues are made for).
        // The informer's first handler was registered before it started.
        if joined {
            running
                .handlers
                .write()
                .expect("handlers lock")
                .push(on_change.clone());
            for object in running.cache.list() {
                on_change(&object);
            }
        }
        running.cache
    }

    fn clone_config(&self) -> Informer<K> {
        Informer {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            selectors: self.selectors.clone(),
            indexers: self.indexers.clone(),
            shared: None,
        }
    }

    /// Starts the informer with its first handler already registered, so
    /// the first list's announcements reach it.
    fn spawn(self, stop: CancellationToken, first: Handler<K>) -> Running<K> {
        let mut contents = Contents {
            objects: HashMap::new(),
            indexers: Vec::new(),
            indexes: HashMap::new(),
        };
        for (name, indexer) in &self.indexers {
            contents.add_index(name, indexer.clone());
        }
        let contents = Arc::new(RwLock::new(contents));
        let (ready_tx, ready) = watch::channel(false);
        let (revision_tx, revision) = watch::channel(0u64);
        let cache = Cache {
            contents: contents.clone(),
            ready,
            revision,
        };
        let handlers: Arc<RwLock<Vec<Handler<K>>>> = Arc::new(RwLock::new(vec![first]));
        let run = run(
            self.client,
            self.namespace,
            self.selectors,
            contents,
            ready_tx,
            revision_tx,
            handlers.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = run => {}
            }
        });
        Running { cache, handlers }
    }
}

fn announce<K>(handlers: &RwLock<Vec<Handler<K>>>, object: &K) {
    let handlers = handlers.read().expect("handlers lock").clone();
    for handler in handlers {
        handler(object);
    }
}

async fn run<K>(
    client: Client,
    namespace: Option<String>,
    selectors: Selectors,
    contents: Arc<RwLock<Contents<K>>>,
    ready: watch::Sender<bool>,
    revision: watch::Sender<u64>,
    handlers: Arc<RwLock<Vec<Handler<K>>>>,
) where
    K: k8s_openapi::Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    loop {
        // Full list: replace the cache, announce everything that changed.
        let (items, rv) = match client
            .list_selected::<K>(namespace.as_deref(), &selectors)
            .await
        {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(kind = K::KIND, error = %e, "informer list failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut fresh: HashMap<ObjectKey, Arc<K>> = items
            .into_iter()
            .map(|o| (key_of(o.metadata()), Arc::new(o)))
            .collect();
        let announced: Vec<Arc<K>> = {
            let mut cached = contents.write().expect("cache lock");
            let gone: Vec<ObjectKey> = cached
                .objects
                .keys()
                .filter(|k| !fresh.contains_key(*k))
                .cloned()
                .collect();
            let mut announced: Vec<Arc<K>> =
                gone.iter().filter_map(|key| cached.remove(key)).collect();
            for (key, object) in fresh.drain() {
                let unchanged = cached.objects.get(&key).is_some_and(|old| {
                    old.metadata().resource_version == object.metadata().resource_version
                });
                if !unchanged {
                    cached.insert(key, object.clone());
                    announced.push(object);
                }
            }
            announced
        };
        revision.send_modify(|seen| *seen = (*seen).max(rv.parse().unwrap_or(0)));
        for object in &announced {
            announce(&handlers, object);
        }
        ready.send_replace(true);
        // Follow the watch until it breaks or is compacted away.
        let mut stream = match client
            .watch_selected::<K>(namespace.as_deref(), &rv, &selectors)
            .await
        {
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
                    let rev = revision_of(object.metadata());
                    let object = Arc::new(object);
                    {
                        let mut cached = contents.write().expect("cache lock");
                        if kind == EventType::Deleted {
                            cached.remove(&key);
                        } else {
                            cached.insert(key, object.clone());
                        }
                    }
                    revision.send_modify(|seen| *seen = (*seen).max(rev));
                    announce(&handlers, &object);
                }
                Err(e) => {
                    tracing::info!(kind = K::KIND, error = %e, "informer watch ended; re-listing");
                    break;
                }
            }
        }
    }
}
