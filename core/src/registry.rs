//! Objects in the store: create, get, list, update, delete and watch of
//! Kubernetes objects as JSON under `/registry/{plural}/{namespace}/{name}`,
//! with `resourceVersion` = the store's mod revision and optimistic
//! concurrency through store transactions.

use futures::{Stream, StreamExt};
use orch_raft_store::Kv;
use orch_raft_store::{
    Compare, CompareOp, DeleteRequest, EventKind, KeyRange, KeyValue, PutRequest, RangeRequest,
    StoreNode, TxnOp, TxnRequest, WatchRequest,
};
use serde_json::{json, Value};

use crate::admission::QuotaLock;
use crate::encryption::{self, SecretKeys, KEYRING_KEY};
use crate::error::ApiError;
use crate::managed_fields::{self, FieldManager};
use crate::node_ports;
use crate::object;
use crate::resource::{self, Resource};
use crate::selector::{FieldSelector, LabelSelector};
use crate::service_ips;

/// The allocation keys a Service holds: its ClusterIP's and its node
/// ports'.
fn service_allocations(service: &Value) -> Vec<String> {
    service_ips::held_ip(service)
        .map(service_ips::allocation_key)
        .into_iter()
        .chain(
            node_ports::held(service)
                .into_iter()
                .map(node_ports::allocation_key),
        )
        .collect()
}

/// What a Secrets key rotation did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotation {
    /// The new primary key's id.
    pub primary: String,
    /// Secrets sealed again with it.
    pub rewritten: usize,
    /// Keys dropped because no Secret used them any more.
    pub dropped: Vec<String>,
    /// The keys the keyring holds now.
    pub keys: Vec<String>,
}

/// How a list or watch is narrowed.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0: all).
    pub limit: usize,
    /// `continue` token from a previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion` (list: ignored except for continue; watch: start after it).
    pub resource_version: Option<i64>,
    /// Read this member's local state without a leadership round (may be
    /// slightly stale; admission reads policy objects this way, as
    /// Kubernetes reads them from informer caches).
    pub serializable: bool,
}

impl ListOptions {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// What happens to the dependents of a deleted object
/// (`DeleteOptions.propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the object now; the garbage collector deletes its dependents.
    Background,
    /// Delete the dependents first, then the object.
    Foreground,
    /// Keep the dependents, removing their owner references.
    Orphan,
}

/// The options of a delete (`DeleteOptions`).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `preconditions.resourceVersion`.
    pub precondition: Option<i64>,
    /// `propagationPolicy` (`orphanDependents: true` means Orphan).
    pub propagation: Option<Propagation>,
    /// `gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    /// `dryRun: [All]`: check everything, delete nothing.
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` body (and the same fields as query
    /// parameters, which kubectl also uses).
    pub fn from_json(options: &Value) -> Result<DeleteOptions, ApiError> {
        let precondition = match &options["preconditions"]["resourceVersion"] {
            Value::Null => None,
            Value::String(rv) => Some(
                rv.parse::<i64>()
                    .map_err(|_| ApiError::bad_request("invalid preconditions.resourceVersion"))?,
            ),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid preconditions.resourceVersion",
                ))
            }
        };
        let propagation = match options["propagationPolicy"].as_str() {
            None if options["orphanDependents"] == json!(true) => Some(Propagation::Orphan),
            None => None,
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some("Orphan") => Some(Propagation::Orphan),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid propagationPolicy {other:?}: must be Background, Foreground or Orphan"
                )))
            }
        };
        let grace_period_seconds = match &options["gracePeriodSeconds"] {
            Value::Null => None,
            Value::Number(n) => Some(n.as_i64().filter(|g| *g >= 0).ok_or_else(|| {
                ApiError::bad_request("gracePeriodSeconds must be a non-negative integer")
            })?),
            Value::String(s) => {
                Some(s.parse::<i64>().ok().filter(|g| *g >= 0).ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be a non-negative integer")
                })?)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "gracePeriodSeconds must be a non-negative integer",
                ))
            }
        };
        let dry_run = match &options["dryRun"] {
            Value::Null => false,
            Value::Array(values) if values.is_empty() => false,
            Value::Array(values) if values.iter().all(|v| v == "All") => true,
            _ => {
                return Err(ApiError::bad_request(
                    "dryRun: the only supported value is All",
                ))
            }
        };
        Ok(DeleteOptions {
            precondition,
            propagation,
            grace_period_seconds,
            dry_run,
        })
    }
}

/// How [`Registry::create_with`] creates.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions<'a> {
    /// The creator: it owns every field of the object as created, the
    /// defaults the server filled in included. `None`: no entry is added
    /// (a creator that recorded its own, like server-side apply, or a
    /// write that tracks no ownership).
    pub manager: Option<&'a FieldManager>,
    /// `dryRun=All`: go through everything a create checks (defaults,
    /// validation, namespace, quota and limits, the name being free) and
    /// answer the object it would have created, writing nothing (no
    /// ClusterIP or node port is allocated either).
    pub dry_run: bool,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ObjectList {
    /// The objects, in key order.
    pub items: Vec<Value>,
    /// The store revision the list was read at.
    pub resource_version: i64,
    /// Token for the next page, if any.
    pub continue_token: Option<String>,
}

/// Type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object appeared (or started matching the selector).
    Added,
    /// The object changed.
    Modified,
    /// The object went away (or stopped matching the selector).
    Deleted,
    /// A bookmark: every event up to this resourceVersion was sent.
    Bookmark,
}

impl EventType {
    /// The wire name (`ADDED`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
            EventType::Bookmark => "BOOKMARK",
        }
    }
}

/// One watch event.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventType,
    /// The object (for DELETED: its last state, at the deletion revision).
    pub object: Value,
}

/// Stores Kubernetes objects in an orch store.
#[derive(Clone)]
pub struct Registry {
    store: StoreNode,
    codec: Codec,
}

/// How objects become stored values and back: JSON, Secrets sealed when a
/// key is configured (see [`crate::encryption`]).
#[derive(Clone, Default)]
struct Codec {
    secrets: Option<std::sync::Arc<SecretKeys>>,
}

/// A stored value, and for a sealed Secret the keyring revision its write
/// must still find.
struct Encoded {
    body: Vec<u8>,
    keyring_revision: Option<i64>,
}

impl Encoded {
    /// The guard that fails the write if the keyring changed since the
    /// value was sealed (it would be sealed with a key being retired).
    fn guard(&self) -> Option<Compare> {
        self.keyring_revision
            .map(|rev| Compare::mod_revision(KEYRING_KEY, CompareOp::Equal, rev))
    }
}

impl Codec {
    fn decode(&self, kv: &KeyValue) -> Result<Value, ApiError> {
        let opened;
        let bytes: &[u8] = if encryption::is_sealed(&kv.value) {
            let keys = self.secrets.as_ref().ok_or_else(|| {
                ApiError::internal(format!(
                    "{} is encrypted and this master has no key",
                    String::from_utf8_lossy(&kv.key)
                ))
            })?;
            opened = keys.open(&kv.key, &kv.value)?;
            &opened
        } else {
            &kv.value
        };
        let mut object: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
        object::set_resource_version(&mut object, kv.mod_revision);
        Ok(object)
    }

    fn encode(&self, resource: &Resource, key: &str, object: &Value) -> Result<Encoded, ApiError> {
        let body = serde_json::to_vec(object).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(match &self.secrets {
            Some(keys) if is_secret(resource) => {
                let (body, revision) = keys.seal(key.as_bytes(), &body);
                Encoded {
                    body,
                    keyring_revision: Some(revision),
                }
            }
            _ => Encoded {
                body,
                keyring_revision: None,
            },
        })
    }
}

fn is_secret(resource: &Resource) -> bool {
    resource.plural == "secrets" && resource.group.is_empty()
}

fn encode_token(key: &[u8], revision: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({"k": String::from_utf8_lossy(key), "rv": revision}))
            .unwrap_or_default(),
    )
}

fn decode_token(token: &str) -> Result<(Vec<u8>, i64), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let key = v["k"].as_str().ok_or_else(bad)?.as_bytes().to_vec();
    let rv = v["rv"].as_i64().ok_or_else(bad)?;
    Ok((key, rv))
}

impl Registry {
    /// A registry over a store member.
    pub fn new(store: StoreNode) -> Self {
        Registry {
            store,
            codec: Codec::default(),
        }
    }

    /// This registry sealing Secrets with `key` (AES-256-GCM) from now on,
    /// and opening the sealed ones.
    pub fn with_secret_key(mut self, key: [u8; 32]) -> Self {
        self.codec.secrets = Some(std::sync::Arc::new(SecretKeys::new(key)));
        self
    }

    /// After a sealed Secret's write failed its guards: true (and the
    /// keyring reloaded) if the keyring changed since the value was
    /// sealed, so the write should be sealed and tried again.
    async fn reload_keyring_if_moved(&self, encoded: &Encoded) -> Result<bool, ApiError> {
        let Some(used) = encoded.keyring_revision else {
            return Ok(false);
        };
        let current = self.read(KEYRING_KEY).await?;
        let now = current.as_ref().map_or(0, |kv| kv.mod_revision);
        if now == used {
            return Ok(false);
        }
        if let Some(keys) = &self.codec.secrets {
            keys.load(current.as_ref().map(|kv| kv.value.as_slice()), now)?;
        }
        Ok(true)
    }

    /// Reads the Secrets keyring into this registry's keys (nothing
    /// happens without a key).
    pub async fn load_keyring(&self) -> Result<(), ApiError> {
        let Some(keys) = &self.codec.secrets else {
            return Ok(());
        };
        let current = self.read(KEYRING_KEY).await?;
        keys.load(
            current.as_ref().map(|kv| kv.value.as_slice()),
            current.as_ref().map_or(0, |kv| kv.mod_revision),
        )
    }

    /// Keeps this registry's Secrets keyring in step with the store (a
    /// rotation on another master) until `stop`. Without a key, returns.
    pub async fn follow_keyring(&self, stop: tokio_util::sync::CancellationToken) {
        let Some(keys) = self.codec.secrets.clone() else {
            return;
        };
        loop {
            let followed = async {
                self.load_keyring().await?;
                let mut req = WatchRequest::new(KeyRange::key(KEYRING_KEY));
                req.start_revision = keys.ring().1.max(0) + 1;
                let mut stream = self.store.watch(req).await?;
                while let Some(item) = stream.next().await {
                    for event in item?.events {
                        let value =
                            (event.kind == EventKind::Put).then_some(event.kv.value.as_slice());
                        keys.load(value, event.kv.mod_revision)?;
                        tracing::info!(
                            revision = event.kv.mod_revision,
                            "Secrets keyring reloaded"
                        );
                    }
                }
                Ok::<(), ApiError>(())
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                outcome = followed => {
                    if let Err(e) = outcome {
                        tracing::debug!(error = %e, "following the Secrets keyring; trying again");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// Rotates the Secrets key: adds a new primary data key to the keyring,
    /// rewrites every Secret sealed with another key, then drops the keys
    /// no Secret uses. Every write of a sealed Secret requires the keyring
    /// it sealed with to be current, so no write on any master can use a
    /// retired key once the new one is in the store.
    pub async fn rotate_secret_key(&self) -> Result<KeyRotation, ApiError> {
        let keys = self
            .codec
            .secrets
            .clone()
            .ok_or_else(|| ApiError::bad_request("this control plane has no Secrets key"))?;
        // 1. A new primary.
        let primary = loop {
            self.load_keyring().await?;
            let (ring, revision) = keys.ring();
            let mut ring = ring.unwrap_or_default();
            let id = ring.add_primary();
            let put = TxnOp::Put(PutRequest::new(KEYRING_KEY, keys.seal_ring(&ring)));
            let guard = Compare::mod_revision(KEYRING_KEY, CompareOp::Equal, revision);
            if let Some(rev) = self.guarded(guard, put).await? {
                keys.load(Some(&keys.seal_ring(&ring)), rev)?;
                break id;
            }
        };
        // 2. Every Secret sealed with it.
        let secrets = resource::find("", "v1", "secrets").expect("secrets are served");
        let prefix = secrets.key_prefix(None);
        let mut rewritten = 0;
        let all = self
            .store
            .range(RangeRequest::new(KeyRange::prefix(prefix.clone())))
            .await?
            .kvs;
        for kv in all {
            let mut current = Some(kv);
            while let Some(kv) = current.take() {
                if encryption::key_id_of(&kv.value) == Some(primary.as_str()) {
                    break;
                }
                let object = self.codec.decode(&kv)?;
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let encoded = self.codec.encode(secrets, &key, &object)?;
                let mut compare = vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision,
                )];
                compare.extend(encoded.guard());
                let resp = self
                    .store
                    .txn(TxnRequest {
                        compare,
                        success: vec![TxnOp::Put(PutRequest::new(key.clone(), encoded.body))],
                        failure: vec![],
                    })
                    .await?;
                if resp.succeeded {
                    rewritten += 1;
                } else {
                    // Changed meanwhile (its new value may already use the
                    // new key) or another rotation: look again.
                    self.load_keyring().await?;
                    current = self.read(&key).await?;
                }
            }
        }
        // 3. Drop the keys nothing is sealed with any more.
        let dropped = loop {
            let in_use: std::collections::BTreeSet<String> = self
                .store
                .range(RangeRequest::new(KeyRange::prefix(prefix.clone())))
                .await?
                .kvs
                .iter()
                .filter_map(|kv| encryption::key_id_of(&kv.value).map(str::to_string))
                .collect();
            self.load_keyring().await?;
            let (ring, revision) = keys.ring();
            let mut ring = ring.unwrap_or_default();
            let unused: Vec<String> = ring
                .keys
                .keys()
                .filter(|id| **id != ring.primary && !in_use.contains(*id))
                .cloned()
                .collect();
            if unused.is_empty() {
                break unused;
            }
            for id in &unused {
                ring.keys.remove(id);
            }
            let put = TxnOp::Put(PutRequest::new(KEYRING_KEY, keys.seal_ring(&ring)));
            let guard = Compare::mod_revision(KEYRING_KEY, CompareOp::Equal, revision);
            if let Some(rev) = self.guarded(guard, put).await? {
                keys.load(Some(&keys.seal_ring(&ring)), rev)?;
                break unused;
            }
        };
        let (ring, _) = keys.ring();
        tracing::info!(%primary, rewritten, ?dropped, "Secrets key rotated");
        Ok(KeyRotation {
            primary,
            rewritten,
            dropped,
            keys: ring
                .map(|r| r.keys.into_keys().collect())
                .unwrap_or_default(),
        })
    }

    /// The same registry over another handle on the store (a fenced one).
    pub fn over(&self, store: StoreNode) -> Self {
        Registry {
            store,
            codec: self.codec.clone(),
        }
    }

    /// The store member.
    pub fn store(&self) -> &StoreNode {
        &self.store
    }

    async fn read(&self, key: &str) -> Result<Option<KeyValue>, ApiError> {
        let resp = self
            .store
            .range(RangeRequest::new(KeyRange::key(key)))
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Reads a key from this member's local state (serializable).
    /// The mod revision of `key` on this member (0 if absent).
    pub(crate) async fn local_mod_revision(&self, key: &str) -> Result<i64, ApiError> {
        Ok(self.read_local(key).await?.map_or(0, |kv| kv.mod_revision))
    }

    async fn read_local(&self, key: &str) -> Result<Option<KeyValue>, ApiError> {
        let mut req = RangeRequest::new(KeyRange::key(key));
        req.serializable = true;
        Ok(self.store.range(req).await?.kvs.into_iter().next())
    }

    /// Runs `op` if `guard` holds; the new revision, or `None` when the
    /// guard failed (someone else changed the key first).
    async fn guarded(&self, guard: Compare, op: TxnOp) -> Result<Option<i64>, ApiError> {
        let resp = self
            .store
            .txn(TxnRequest {
                compare: vec![guard],
                success: vec![op],
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Checks that `namespace` exists and is not terminating.
    async fn check_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        let namespaces = resource::find("", "v1", "namespaces").expect("namespaces are served");
        match self.read_local(&namespaces.key(None, namespace)).await? {
            None => Err(ApiError::not_found("namespaces", namespace)),
            Some(kv) => {
                let ns = self.codec.decode(&kv)?;
                if ns["metadata"]["deletionTimestamp"].is_string()
                    || ns["status"]["phase"] == "Terminating"
                {
                    Err(ApiError::forbidden(format!(
                        "unable to create new content in namespace {namespace} because it is being terminated"
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// How often a create is admitted again when other creates under the
    /// same quota overtake it.
    const QUOTA_ATTEMPTS: usize = 32;

    /// Creates an object; fills server-owned metadata.
    pub async fn create(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<Value, ApiError> {
        self.create_with(resource, namespace, object, CreateOptions::default())
            .await
    }

    /// Creates an object as `options` say: recording its creator's
    /// fields, or only going through the checks (see [`CreateOptions`]).
    pub async fn create_with(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        mut object: Value,
        options: CreateOptions<'_>,
    ) -> Result<Value, ApiError> {
        let CreateOptions { manager, dry_run } = options;
        // The envelope is checked as sent; the name once generateName had
        // its turn.
        object::check_envelope(resource, &object, namespace)?;
        object::prepare_create(resource, &mut object, namespace);
        object::check_name(resource, &object)?;
        crate::validation::check(resource, &object)?;
        if let Some(manager) = manager {
            managed_fields::record_create(&mut object, manager, &resource.api_version())?;
        }
        let namespace = if resource.namespaced {
            let ns = namespace
                .or_else(|| object::namespace(&object))
                .ok_or_else(|| ApiError::bad_request("a namespace is required"))?
                .to_string();
            object["metadata"]["namespace"] = json!(ns);
            self.check_namespace(&ns).await?;
            Some(ns)
        } else {
            None
        };
        if resource.kind == "ResourceQuota" {
            crate::admission::quota_status(&mut object);
        }
        if resource.kind == "Namespace" {
            object["status"] = json!({"phase": "Active"});
            object["spec"]["finalizers"] = json!(["kubernetes"]);
        }
        // Admission reads the namespace's quotas and usage; a create that
        // another quota-bound create overtook is admitted again.
        for _ in 0..Self::QUOTA_ATTEMPTS {
            let mut candidate = object.clone();
            let quota_lock = match &namespace {
                Some(ns) => {
                    crate::admission::admit_create(self, resource, ns, &mut candidate).await?
                }
                None => None,
            };
            let name = object::name(&candidate).to_string();
            let key = resource.key(namespace.as_deref(), &name);
            if dry_run {
                if self.read(&key).await?.is_some() {
                    return Err(ApiError::already_exists(resource.plural, &name));
                }
                return Ok(candidate);
            }
            if let Some(created) = self
                .create_once(resource, &key, &name, candidate, quota_lock.as_ref())
                .await?
            {
                return Ok(created);
            }
        }
        Err(ApiError::unavailable(format!(
            "{} \"{}\": the namespace's quota usage kept changing; try again",
            resource.plural,
            object::name(&object)
        )))
    }

    /// One try at writing a new object (for a Service, with its ClusterIP
    /// and node ports: the requested ones, or random ones until free ones
    /// are found), guarded by the namespace's quota lock when a quota
    /// applies. `None`: another create under the same quota came first.
    async fn create_once(
        &self,
        resource: &Resource,
        key: &str,
        name: &str,
        mut object: Value,
        quota_lock: Option<&QuotaLock>,
    ) -> Result<Option<Value>, ApiError> {
        let is_service = resource.kind == "Service";
        let needs_ip = is_service && service_ips::needs_cluster_ip(&object);
        let requested = if needs_ip {
            service_ips::requested_ip(&object, name)?
        } else {
            None
        };
        let requested_ports = node_ports::held(&object);
        let template = object.clone();
        for _ in 0..64 {
            object = template.clone();
            let mut compare = vec![Compare::create_revision(key, CompareOp::Equal, 0)];
            let mut success = Vec::new();
            let ip = needs_ip.then(|| requested.unwrap_or_else(service_ips::random_ip));
            if let Some(ip) = ip {
                object["spec"]["clusterIP"] = json!(ip.to_string());
                object["spec"]["clusterIPs"] = json!([ip.to_string()]);
            }
            if is_service {
                node_ports::fill_missing(&mut object);
                for allocation in service_allocations(&object) {
                    compare.push(Compare::create_revision(
                        allocation.clone(),
                        CompareOp::Equal,
                        0,
                    ));
                    success.push(TxnOp::Put(PutRequest::new(
                        allocation,
                        key.as_bytes().to_vec(),
                    )));
                }
            }
            if let Some(lock) = quota_lock {
                compare.push(Compare::mod_revision(
                    lock.key.clone(),
                    CompareOp::Equal,
                    lock.revision,
                ));
                success.push(TxnOp::Put(PutRequest::new(lock.key.clone(), Vec::new())));
            }
            let encoded = self.codec.encode(resource, key, &object)?;
            compare.extend(encoded.guard());
            success.push(TxnOp::Put(PutRequest::new(key, encoded.body.clone())));
            let resp = self
                .store
                .txn(TxnRequest {
                    compare,
                    success,
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                object::set_resource_version(&mut object, resp.revision);
                return Ok(Some(object));
            }
            if self.read(key).await?.is_some() {
                return Err(ApiError::already_exists(resource.plural, name));
            }
            if let Some(lock) = quota_lock {
                let now = self.read(&lock.key).await?.map_or(0, |kv| kv.mod_revision);
                if now != lock.revision {
                    return Ok(None);
                }
            }
            if self.reload_keyring_if_moved(&encoded).await? {
                continue;
            }
            if !is_service {
                return Err(ApiError::internal("a create transaction failed its guard"));
            }
            self.check_requested_allocations(&object, name, requested, &requested_ports, None)
                .await?;
        }
        Err(ApiError::internal(
            "no free ClusterIP or node port found after 64 tries",
        ))
    }

    /// After a Service's write failed its allocation guards: a 422 if an
    /// address or node port the client asked for is taken (by a Service
    /// other than the one at `own_key`), else `Ok` (a random pick collided:
    /// try again).
    async fn check_requested_allocations(
        &self,
        service: &Value,
        name: &str,
        ip: Option<std::net::Ipv4Addr>,
        ports: &std::collections::BTreeSet<u16>,
        own_key: Option<&str>,
    ) -> Result<(), ApiError> {
        let taken = |kv: Option<KeyValue>| {
            kv.is_some_and(|kv| own_key.is_none_or(|own| kv.value != own.as_bytes()))
        };
        if let Some(ip) = ip {
            if taken(self.read(&service_ips::allocation_key(ip)).await?) {
                return Err(service_ips::already_allocated(name, ip));
            }
        }
        for port in ports {
            if taken(self.read(&node_ports::allocation_key(*port)).await?) {
                return Err(node_ports::already_allocated(service, name, *port));
            }
        }
        Ok(())
    }

    /// Reads one object.
    pub async fn get(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        match self.read(&resource.key(namespace, name)).await? {
            Some(kv) => self.codec.decode(&kv),
            None => Err(ApiError::not_found(resource.plural, name)),
        }
    }

    /// Lists objects (in one namespace or all), filtered and paged.
    pub async fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<ObjectList, ApiError> {
        let prefix = resource.key_prefix(namespace);
        let range = KeyRange::prefix(prefix.clone());
        let (mut start, revision) = match &options.continue_token {
            Some(token) => {
                let (key, rv) = decode_token(token)?;
                if !key.starts_with(prefix.as_bytes()) {
                    return Err(ApiError::bad_request(
                        "continue token does not belong to this list",
                    ));
                }
                (key, rv)
            }
            None => (prefix.clone().into_bytes(), 0),
        };
        let mut items = Vec::new();
        let mut list_revision = revision;
        let chunk = if options.limit == 0 {
            0
        } else {
            options.limit.max(100) + 1
        };
        loop {
            let mut req = RangeRequest::new(KeyRange {
                start: start.clone(),
                end: range.end.clone(),
            });
            req.limit = chunk;
            req.revision = list_revision;
            req.serializable = options.serializable;
            let resp = self.store.range(req).await?;
            if list_revision == 0 {
                list_revision = resp.revision;
            }
            let exhausted = !resp.more;
            for kv in &resp.kvs {
                let object = self.codec.decode(kv)?;
                if !options.matches(&object) {
                    continue;
                }
                if options.limit > 0 && items.len() == options.limit {
                    return Ok(ObjectList {
                        items,
                        resource_version: list_revision,
                        continue_token: Some(encode_token(&kv.key, list_revision)),
                    });
                }
                items.push(object);
            }
            match resp.kvs.last() {
                Some(last) if !exhausted => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(ObjectList {
            items,
            resource_version: list_revision,
            continue_token: None,
        })
    }

    /// Replaces an object. A resourceVersion in `object` must match the
    /// stored one (409 otherwise); without one, the write is unconditional
    /// on the client side but still atomic against concurrent writers.
    pub async fn update(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        object::check_identity(resource, &object, namespace)?;
        if object::name(&object) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object::name(&object)
            )));
        }
        let key = resource.key(namespace, name);
        let Some(current) = self.read(&key).await? else {
            return Err(ApiError::not_found(resource.plural, name));
        };
        let expected = object::resource_version(&object)?.unwrap_or(current.mod_revision);
        if expected != current.mod_revision {
            return Err(ApiError::conflict(resource.plural, name));
        }
        let old = self.codec.decode(&current)?;
        object::prepare_update(resource, &old, &mut object);
        crate::validation::check_update(resource, &old, &object)?;
        self.write_if_unchanged(resource, &key, name, expected, object)
            .await
    }

    /// Writes `object` at `key` if its mod revision is still `expected`.
    /// An object marked for deletion whose last finalizer this write
    /// removes is deleted instead.
    pub async fn write_if_unchanged(
        &self,
        resource: &Resource,
        key: &str,
        name: &str,
        expected: i64,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        if finalized(resource, &object) {
            return self.remove(resource, key, name, expected, object).await;
        }
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        if resource.kind == "Service" {
            return self
                .write_service(resource, key, name, expected, object)
                .await;
        }
        for _ in 0..8 {
            let encoded = self.codec.encode(resource, key, &object)?;
            let mut compare = vec![Compare::mod_revision(key, CompareOp::Equal, expected)];
            compare.extend(encoded.guard());
            let resp = self
                .store
                .txn(TxnRequest {
                    compare,
                    success: vec![TxnOp::Put(PutRequest::new(key, encoded.body.clone()))],
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                object::set_resource_version(&mut object, resp.revision);
                return Ok(object);
            }
            if !self.reload_keyring_if_moved(&encoded).await? {
                break;
            }
        }
        Err(ApiError::conflict(resource.plural, name))
    }

    /// Writes a changed Service: node ports its ports newly need are
    /// allocated (the requested ones, or random free ones) and those it no
    /// longer holds are freed, in the same transaction as the write.
    async fn write_service(
        &self,
        resource: &Resource,
        key: &str,
        name: &str,
        expected: i64,
        object: Value,
    ) -> Result<Value, ApiError> {
        let Some(current) = self.read(key).await? else {
            return Err(ApiError::not_found(resource.plural, name));
        };
        if current.mod_revision != expected {
            return Err(ApiError::conflict(resource.plural, name));
        }
        let before: std::collections::BTreeSet<String> =
            service_allocations(&self.codec.decode(&current)?)
                .into_iter()
                .collect();
        let requested: std::collections::BTreeSet<u16> = node_ports::held(&object)
            .into_iter()
            .filter(|p| !before.contains(&node_ports::allocation_key(*p)))
            .collect();
        for _ in 0..64 {
            let mut candidate = object.clone();
            node_ports::fill_missing(&mut candidate);
            let after: std::collections::BTreeSet<String> =
                service_allocations(&candidate).into_iter().collect();
            let mut compare = vec![Compare::mod_revision(key, CompareOp::Equal, expected)];
            let mut success = Vec::new();
            for added in after.difference(&before) {
                compare.push(Compare::create_revision(added.clone(), CompareOp::Equal, 0));
                success.push(TxnOp::Put(PutRequest::new(
                    added.clone(),
                    key.as_bytes().to_vec(),
                )));
            }
            for freed in before.difference(&after) {
                success.push(TxnOp::Delete(DeleteRequest {
                    range: KeyRange::key(freed.clone()),
                    prev_kv: false,
                }));
            }
            success.push(TxnOp::Put(PutRequest::new(
                key,
                self.codec.encode(resource, key, &candidate)?.body,
            )));
            let resp = self
                .store
                .txn(TxnRequest {
                    compare,
                    success,
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                object::set_resource_version(&mut candidate, resp.revision);
                return Ok(candidate);
            }
            if self.read(key).await?.map(|kv| kv.mod_revision) != Some(expected) {
                return Err(ApiError::conflict(resource.plural, name));
            }
            self.check_requested_allocations(&candidate, name, None, &requested, Some(key))
                .await?;
        }
        Err(ApiError::internal("no free node port found after 64 tries"))
    }

    /// Deletes an object, as Kubernetes does:
    /// - with finalizers (present, or added by a `Foreground` or `Orphan`
    ///   propagation policy) it is only marked (deletionTimestamp,
    ///   deletionGracePeriodSeconds 0) and goes away when the last one is
    ///   removed;
    /// - a Namespace is marked Terminating until the namespace controller
    ///   has emptied it and cleared `spec.finalizers`;
    /// - a Pod bound to a node gets a grace period (the option, else its
    ///   `terminationGracePeriodSeconds`): it is marked and its node agent
    ///   deletes it once its containers are stopped (a second delete with
    ///   grace 0 forces it);
    /// - anything else is removed at once (dependents are then collected by
    ///   the garbage collector: background propagation).
    ///
    /// Without a precondition, a delete that raced with another write (the
    /// object changed or went between the read and the guarded write) is
    /// tried again on what is there now, as kube-apiserver does: the caller
    /// sees the outcome (or 404), not a conflict it did not ask about.
    pub async fn delete(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        const ATTEMPTS: usize = 16;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.delete_once(resource, namespace, name, options).await {
                Err(e) if e.code == 409 && options.precondition.is_none() && attempt < ATTEMPTS => {
                    continue
                }
                outcome => return outcome,
            }
        }
    }

    async fn delete_once(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let key = resource.key(namespace, name);
        let Some(current) = self.read(&key).await? else {
            return Err(ApiError::not_found(resource.plural, name));
        };
        if options
            .precondition
            .is_some_and(|rv| rv != current.mod_revision)
        {
            return Err(ApiError::conflict(resource.plural, name));
        }
        let mut object = self.codec.decode(&current)?;
        if options.dry_run {
            return Ok(object);
        }
        let marked = object["metadata"]["deletionTimestamp"].is_string();
        let mut finalizers: Vec<Value> = object["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let added = match options.propagation {
            Some(Propagation::Foreground) => Some("foregroundDeletion"),
            Some(Propagation::Orphan) => Some("orphan"),
            _ => None,
        };
        if let Some(f) = added {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        let waits_for_namespace_finalizers = resource.kind == "Namespace"
            && object["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
        let pod_grace = (resource.kind == "Pod"
            && object["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && object["status"]["phase"] != "Succeeded"
            && object["status"]["phase"] != "Failed")
            .then(|| {
                options.grace_period_seconds.unwrap_or_else(|| {
                    object["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .unwrap_or(30)
                })
            })
            .filter(|grace| *grace > 0);
        if !finalizers.is_empty() || waits_for_namespace_finalizers || pod_grace.is_some() {
            let already = object["metadata"]["finalizers"]
                .as_array()
                .map_or(0, |f| f.len());
            if marked && already == finalizers.len() {
                // Already being deleted: nothing more to do now.
                return Ok(object);
            }
            if !marked {
                object["metadata"]["deletionTimestamp"] = json!(object::now_rfc3339());
                object["metadata"]["deletionGracePeriodSeconds"] = json!(pod_grace.unwrap_or(0));
            }
            if !finalizers.is_empty() {
                object["metadata"]["finalizers"] = Value::Array(finalizers);
            }
            if resource.kind == "Namespace" {
                object["status"]["phase"] = json!("Terminating");
            }
            return self
                .write_if_unchanged(resource, &key, name, current.mod_revision, object)
                .await;
        }
        self.remove(resource, &key, name, current.mod_revision, object)
            .await
    }

    /// Removes the object at `key` if its mod revision is still `expected`;
    /// returns it with the revision of its removal.
    async fn remove(
        &self,
        resource: &Resource,
        key: &str,
        name: &str,
        expected: i64,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let guard = Compare::mod_revision(key, CompareOp::Equal, expected);
        let mut success = vec![TxnOp::Delete(DeleteRequest {
            range: KeyRange::key(key),
            prev_kv: false,
        })];
        // A Service's ClusterIP and node ports are free again once the
        // Service is gone.
        if resource.kind == "Service" {
            for allocation in service_allocations(&object) {
                success.push(TxnOp::Delete(DeleteRequest {
                    range: KeyRange::key(allocation),
                    prev_kv: false,
                }));
            }
        }
        let resp = self
            .store
            .txn(TxnRequest {
                compare: vec![guard],
                success,
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(ApiError::conflict(resource.plural, name));
        }
        let revision = resp.revision;
        object::set_resource_version(&mut object, revision);
        Ok(object)
    }

    /// Watches objects. Without a resourceVersion (or "0"), first sends an
    /// ADDED event per existing object, as Kubernetes does; with one, sends
    /// every change after it (410 Gone if it was compacted).
    pub async fn watch(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        options: ListOptions,
        bookmark_ms: u64,
    ) -> Result<impl Stream<Item = Result<WatchEvent, ApiError>> + Send + 'static, ApiError> {
        let (initial, start) = match options.resource_version {
            Some(rv) if rv > 0 => (Vec::new(), rv + 1),
            _ => {
                let mut all = options.clone();
                all.limit = 0;
                all.continue_token = None;
                let list = self.list(resource, namespace, &all).await?;
                let events: Vec<Result<WatchEvent, ApiError>> = list
                    .items
                    .into_iter()
                    .map(|object| {
                        Ok(WatchEvent {
                            kind: EventType::Added,
                            object,
                        })
                    })
                    .collect();
                (events, list.resource_version + 1)
            }
        };
        let mut req = WatchRequest::new(KeyRange::prefix(resource.key_prefix(namespace)));
        req.start_revision = start;
        req.prev_kv = true;
        req.progress_notify_ms = bookmark_ms;
        let stream = self.store.watch(req).await?;
        let codec = self.codec.clone();
        let live = stream.flat_map(move |item| {
            let events: Vec<Result<WatchEvent, ApiError>> = match item {
                Err(e) => vec![Err(ApiError::from(e))],
                Ok(resp) if resp.events.is_empty() => {
                    let mut object = json!({"kind": "", "apiVersion": "", "metadata": {}});
                    object::set_resource_version(&mut object, resp.revision);
                    vec![Ok(WatchEvent {
                        kind: EventType::Bookmark,
                        object,
                    })]
                }
                Ok(resp) => resp
                    .events
                    .iter()
                    .filter_map(|event| translate(&codec, event, &options).transpose())
                    .collect(),
            };
            futures::stream::iter(events)
        });
        Ok(futures::stream::iter(initial).chain(live))
    }
}

/// True when `object` is marked for deletion (waiting only on finalizers,
/// not on a grace period) and has none left.
fn finalized(resource: &Resource, object: &Value) -> bool {
    let meta = &object["metadata"];
    let empty = |v: &Value| v.as_array().is_none_or(|a| a.is_empty());
    meta["deletionTimestamp"].is_string()
        && meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0
        && empty(&meta["finalizers"])
        && (resource.kind != "Namespace" || empty(&object["spec"]["finalizers"]))
}

/// Turns a store event into a watch event as seen through a selector.
fn translate(
    codec: &Codec,
    event: &orch_raft_store::Event,
    options: &ListOptions,
) -> Result<Option<WatchEvent>, ApiError> {
    let selects_all = options.labels.is_empty() && options.fields.is_empty();
    // Without selectors a change only needs to know whether the object
    // existed before; decoding the previous value is for deletes and for
    // objects entering or leaving a selector.
    let prev = if selects_all && event.kind == EventKind::Put {
        None
    } else {
        event
            .prev_kv
            .as_ref()
            .map(|kv| codec.decode(kv))
            .transpose()?
    };
    let existed = event.prev_kv.is_some();
    let was = existed && (selects_all || prev.as_ref().is_some_and(|p| options.matches(p)));
    match event.kind {
        EventKind::Put => {
            let object = codec.decode(&event.kv)?;
            let is = options.matches(&object);
            Ok(match (was, is) {
                (false, true) => Some(WatchEvent {
                    kind: EventType::Added,
                    object,
                }),
                (true, true) => Some(WatchEvent {
                    kind: EventType::Modified,
                    object,
                }),
                (true, false) => Some(WatchEvent {
                    kind: EventType::Deleted,
                    object,
                }),
                (false, false) => None,
            })
        }
        EventKind::Delete => Ok(match prev {
            Some(mut object) if was => {
                object::set_resource_version(&mut object, event.kv.mod_revision);
                Some(WatchEvent {
                    kind: EventType::Deleted,
                    object,
                })
            }
            _ => None,
        }),
    }
}
