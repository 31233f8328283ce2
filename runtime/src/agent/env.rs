//! A container's environment, built as the kubelet builds it: `envFrom`
//! (ConfigMaps and Secrets, with a prefix) first, then `env` in order, an
//! `env` entry replacing an `envFrom` one of the same name. A `value` may
//! use `$(VAR)` to refer to a variable defined before it (`$$` escapes a
//! `$`); `valueFrom` reads a ConfigMap or Secret key, a field of the pod
//! (the downward API) or a container resource.
//!
//! Errors carry the kubelet's messages (`configmap "x" not found`,
//! `couldn't find key k in ConfigMap ns/x`), which the agent reports with
//! reason [`CONFIG_ERROR_REASON`].

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvFromSource, EnvVarSource, Pod, ResourceFieldSelector, Secret,
};
use k8s_openapi::Resource as K8sResource;
use orch_core::quantity;
use orch_core::{ApiError, Client};
use serde::de::DeserializeOwned;

/// The container status reason the kubelet gives when a container's
/// environment (or other configuration) cannot be built.
pub const CONFIG_ERROR_REASON: &str = "CreateContainerConfigError";

/// Why a container's environment could not be built. The messages are the
/// kubelet's.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A non-optional ConfigMap does not exist.
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound {
        /// The ConfigMap's name.
        name: String,
    },
    /// A non-optional Secret does not exist.
    #[error("secret \"{name}\" not found")]
    SecretNotFound {
        /// The Secret's name.
        name: String,
    },
    /// A non-optional `configMapKeyRef` names a key the ConfigMap lacks.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyMissing {
        /// The missing key.
        key: String,
        /// The ConfigMap's namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: String,
    },
    /// A non-optional `secretKeyRef` names a key the Secret lacks.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyMissing {
        /// The missing key.
        key: String,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// Reading a ConfigMap or Secret failed for another reason than its
    /// absence.
    #[error("failed to get {kind} {namespace}/{name}: {source}")]
    Fetch {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// The API's error.
        #[source]
        source: Box<ApiError>,
    },
    /// A `fieldRef` names a field the downward API does not offer.
    #[error("unsupported fieldPath: {path}")]
    UnsupportedFieldPath {
        /// The field path.
        path: String,
    },
    /// A `resourceFieldRef` names a resource the downward API does not offer.
    #[error("unsupported container resource : {resource}")]
    UnsupportedResource {
        /// The resource (`limits.cpu`, ...).
        resource: String,
    },
    /// A `resourceFieldRef` names a container the pod does not have.
    #[error("container {name:?} not found in pod")]
    ContainerNotFound {
        /// The container's name.
        name: String,
    },
    /// A resource quantity or divisor cannot be parsed (or the divisor is 0).
    #[error("invalid quantity {value:?} for {field}")]
    InvalidQuantity {
        /// What the quantity is (`limits.cpu`, `divisor`).
        field: String,
        /// The text.
        value: String,
    },
}

/// What the agent knows about a pod and its node before the pod's status
/// says it: addresses and the node's allocatable resources (the value of
/// `limits.*` for a container without limits, as in Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// The pod's IP (`status.podIP`); else the pod's status is used.
    pub pod_ip: Option<String>,
    /// The node's IP (`status.hostIP`); else the pod's status is used.
    pub host_ip: Option<String>,
    /// The node's allocatable CPU in millicores; else the host's CPU count.
    pub allocatable_cpu_millis: Option<u64>,
    /// The node's allocatable memory in bytes; else the host's MemTotal.
    pub allocatable_memory_bytes: Option<u64>,
    /// The service-link variables of the pod's namespace (see
    /// `agent::service_env`), defined before the container's own.
    pub service_links: Vec<(String, String)>,
}

/// Builds the environment of `container` of `pod`: `(name, value)` in the
/// order first defined (an `env` entry overriding an `envFrom` one keeps the
/// `envFrom` position).
pub async fn container_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut sources = Sources::new(client, namespace_of(pod));
    let mut env = EnvList::default();
    for (name, value) in &facts.service_links {
        env.set(name.clone(), value.clone());
    }
    for from in container.env_from.iter().flatten() {
        for (name, value) in env_from(&mut sources, from).await? {
            env.set(name, value);
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => Some(expand(v, |n| env.get(n).map(str::to_owned))),
            (_, Some(from)) => value_from(&mut sources, pod, container, from, facts).await?,
            _ => Some(String::new()),
        };
        if let Some(value) = value {
            env.set(var.name.clone(), value);
        }
    }
    Ok(env.0)
}

/// Expands `$(VAR)` references in `args` (a container's command or args)
/// with the container's environment, as the kubelet does.
pub fn expand_args(args: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    args.iter().map(|a| expand(a, lookup)).collect()
}

/// Kubernetes' variable expansion: `$(NAME)` becomes `lookup(NAME)`, or
/// stays as written when `lookup` knows no such variable; `$$` becomes `$`
/// (so `$$(NAME)` gives `$(NAME)`); any other `$` stays.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(next) = after.chars().next() else {
            out.push('$');
            rest = after;
            break;
        };
        rest = match next {
            '$' => {
                out.push('$');
                &after[1..]
            }
            '(' => match after.find(')') {
                Some(end) => {
                    let name = &after[1..end];
                    out.push_str(&lookup(name).unwrap_or_else(|| format!("$({name})")));
                    &after[end + 1..]
                }
                None => {
                    out.push_str("$(");
                    &after[1..]
                }
            },
            c => {
                out.push('$');
                out.push(c);
                &after[c.len_utf8()..]
            }
        };
    }
    out.push_str(rest);
    out
}

/// The value of a downward API field of the pod: `metadata.name`,
/// `metadata.namespace`, `metadata.uid`, `metadata.labels['k']`,
/// `metadata.annotations['k']` (empty when absent), `metadata.labels` and
/// `metadata.annotations` (all of them, `k="v"` lines sorted by key, for
/// volumes), `spec.nodeName`, `spec.serviceAccountName` (`default` when
/// unset, as admission sets it in Kubernetes), `status.podIP(s)`,
/// `status.hostIP(s)`.
pub fn pod_field(pod: &Pod, path: &str, facts: &PodFacts) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    if let Some((map, key)) = subscript(path) {
        return match map {
            "metadata.labels" => Ok(map_value(meta.labels.as_ref(), key)),
            "metadata.annotations" => Ok(map_value(meta.annotations.as_ref(), key)),
            _ => Err(unsupported_field(path)),
        };
    }
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => Some(namespace_of(pod).to_string()),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => Some(format_map(meta.labels.as_ref())),
        "metadata.annotations" => Some(format_map(meta.annotations.as_ref())),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_string()),
        ),
        "status.podIP" | "status.podIPs" => facts
            .pod_ip
            .clone()
            .or_else(|| status.and_then(|s| s.pod_ip.clone())),
        "status.hostIP" | "status.hostIPs" => facts
            .host_ip
            .clone()
            .or_else(|| status.and_then(|s| s.host_ip.clone())),
        _ => return Err(unsupported_field(path)),
    };
    Ok(value.unwrap_or_default())
}

/// The value of a `resourceFieldRef` of the pod's container `container`
/// (`limits.cpu`, `limits.memory`, `limits.ephemeral-storage`,
/// `requests.*`), divided by the selector's divisor (default 1) and rounded
/// up. An unset limit is the node's allocatable amount; an unset request
/// is the limit, as API defaulting makes it in Kubernetes.
pub fn resource_field(
    pod: &Pod,
    container: &str,
    selector: &ResourceFieldSelector,
    facts: &PodFacts,
) -> Result<String, EnvError> {
    let c = find_container(pod, container)?;
    let res = c.resources.as_ref();
    let get = |which: &str, name: &str| {
        let map = match which {
            "limits" => res.and_then(|r| r.limits.as_ref()),
            _ => res.and_then(|r| r.requests.as_ref()),
        };
        map.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let (which, name) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| unsupported_resource(&selector.resource))?;
    if !matches!(which, "limits" | "requests")
        || !matches!(name, "cpu" | "memory" | "ephemeral-storage")
    {
        return Err(unsupported_resource(&selector.resource));
    }
    let limit = match get("limits", name) {
        Some(q) => parse_quantity(&selector.resource, &q)?,
        None => allocatable(name, facts),
    };
    let amount = match (which, get("requests", name)) {
        ("requests", Some(q)) => parse_quantity(&selector.resource, &q)?,
        ("requests", None) if get("limits", name).is_none() => 0,
        _ => limit,
    };
    let divisor = match &selector.divisor {
        Some(d) => parse_quantity("divisor", &d.0)?,
        None => 1000,
    };
    if divisor == 0 {
        return Err(EnvError::InvalidQuantity {
            field: "divisor".into(),
            value: "0".into(),
        });
    }
    Ok(((amount + divisor - 1) / divisor).to_string())
}

/// Reads `K` `namespace/name`; `None` when it does not exist.
pub(crate) async fn fetch<K: K8sResource + DeserializeOwned>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, ApiError> {
    match client.get::<K>(Some(namespace), name).await {
        Ok(object) => Ok(Some(object)),
        Err(e) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pod's namespace (`default` when unset).
pub(crate) fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The ConfigMap's entries as bytes: `data` and `binaryData`.
pub(crate) fn config_map_entries(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let text = cm.data.iter().flatten();
    let binary = cm.binary_data.iter().flatten();
    text.map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .chain(binary.map(|(k, v)| (k.clone(), v.0.clone())))
        .collect()
}

/// The Secret's entries (`data`, `stringData` folded in by the API).
pub(crate) fn secret_entries(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let data = secret.data.iter().flatten();
    let strings = secret.string_data.iter().flatten();
    data.map(|(k, v)| (k.clone(), v.0.clone()))
        .chain(strings.map(|(k, v)| (k.clone(), v.clone().into_bytes())))
        .collect()
}

/// The environment being built: names in first-defined order.
#[derive(Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, name: String, value: String) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// ConfigMaps and Secrets of the pod's namespace, each read once per build.
struct Sources<'a> {
    client: &'a Client,
    namespace: &'a str,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl<'a> Sources<'a> {
    fn new(client: &'a Client, namespace: &'a str) -> Self {
        Sources {
            client,
            namespace,
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    /// The ConfigMap `name`; `None` if it is absent and `optional`.
    async fn config_map(
        &mut self,
        name: &str,
        optional: bool,
    ) -> Result<Option<&ConfigMap>, EnvError> {
        if !self.config_maps.contains_key(name) {
            let found = fetch::<ConfigMap>(self.client, self.namespace, name)
                .await
                .map_err(|source| self.fetch_error("configmap", name, source))?;
            self.config_maps.insert(name.to_string(), found);
        }
        match self.config_maps[name].as_ref() {
            None if !optional => Err(EnvError::ConfigMapNotFound { name: name.into() }),
            found => Ok(found),
        }
    }

    /// The Secret `name`; `None` if it is absent and `optional`.
    async fn secret(&mut self, name: &str, optional: bool) -> Result<Option<&Secret>, EnvError> {
        if !self.secrets.contains_key(name) {
            let found = fetch::<Secret>(self.client, self.namespace, name)
                .await
                .map_err(|source| self.fetch_error("secret", name, source))?;
            self.secrets.insert(name.to_string(), found);
        }
        match self.secrets[name].as_ref() {
            None if !optional => Err(EnvError::SecretNotFound { name: name.into() }),
            found => Ok(found),
        }
    }

    fn fetch_error(&self, kind: &'static str, name: &str, source: ApiError) -> EnvError {
        EnvError::Fetch {
            kind,
            namespace: self.namespace.to_string(),
            name: name.to_string(),
            source: Box::new(source),
        }
    }
}

/// The variables one `envFrom` entry contributes (prefixed; keys that
/// cannot be variable names skipped, as the kubelet does).
async fn env_from(
    sources: &mut Sources<'_>,
    from: &EnvFromSource,
) -> Result<Vec<(String, String)>, EnvError> {
    let prefix = from.prefix.as_deref().unwrap_or("");
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(r) = &from.config_map_ref {
        if let Some(cm) = sources
            .config_map(&r.name, r.optional == Some(true))
            .await?
        {
            // envFrom reads `data` only, not `binaryData`.
            let data = cm.data.iter().flatten();
            entries.extend(data.map(|(k, v)| (k.clone(), v.clone().into_bytes())));
        }
    }
    if let Some(r) = &from.secret_ref {
        if let Some(secret) = sources.secret(&r.name, r.optional == Some(true)).await? {
            entries.extend(secret_entries(secret));
        }
    }
    let mut vars = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let name = format!("{prefix}{key}");
        if !valid_env_name(&name) {
            tracing::warn!(%name, "skipping an envFrom key that is not a valid variable name");
            continue;
        }
        vars.push((name, String::from_utf8_lossy(&value).into_owned()));
    }
    Ok(vars)
}

/// The value of one `valueFrom`; `None` when an optional source or key is
/// absent (the variable is then not set).
async fn value_from(
    sources: &mut Sources<'_>,
    pod: &Pod,
    container: &Container,
    from: &EnvVarSource,
    facts: &PodFacts,
) -> Result<Option<String>, EnvError> {
    if let Some(field) = &from.field_ref {
        return pod_field(pod, &field.field_path, facts).map(Some);
    }
    if let Some(selector) = &from.resource_field_ref {
        let name = selector
            .container_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(&container.name);
        return resource_field(pod, name, selector, facts).map(Some);
    }
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional == Some(true);
        let namespace = sources.namespace.to_string();
        let Some(cm) = sources.config_map(&r.name, optional).await? else {
            return Ok(None);
        };
        return match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::ConfigMapKeyMissing {
                key: r.key.clone(),
                namespace,
                name: r.name.clone(),
            }),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional == Some(true);
        let namespace = sources.namespace.to_string();
        let Some(secret) = sources.secret(&r.name, optional).await? else {
            return Ok(None);
        };
        return match secret_entries(secret).remove(&r.key) {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            None if optional => Ok(None),
            None => Err(EnvError::SecretKeyMissing {
                key: r.key.clone(),
                namespace,
                name: r.name.clone(),
            }),
        };
    }
    Ok(Some(String::new()))
}

/// Kubernetes' relaxed variable-name rule: printable ASCII but `=`.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// `metadata.labels['key']` -> (`metadata.labels`, `key`).
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (base, rest) = path.split_once("['")?;
    Some((base, rest.strip_suffix("']")?))
}

fn map_value(map: Option<&BTreeMap<String, String>>, key: &str) -> String {
    map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
}

/// The downward API's format of a whole map: `key="value"` lines (values
/// quoted as Go's `%q`), sorted by key, no trailing newline.
pub(crate) fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A string quoted as Go's `strconv.Quote` does for printable text.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn find_container<'p>(pod: &'p Pod, name: &str) -> Result<&'p Container, EnvError> {
    let spec = pod.spec.as_ref();
    let all = spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    all.into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| EnvError::ContainerNotFound { name: name.into() })
}

fn parse_quantity(field: &str, value: &str) -> Result<i128, EnvError> {
    quantity::parse(value).ok_or_else(|| EnvError::InvalidQuantity {
        field: field.to_string(),
        value: value.to_string(),
    })
}

/// The node's allocatable `resource` in thousandths of its unit.
fn allocatable(resource: &str, facts: &PodFacts) -> i128 {
    match resource {
        "cpu" => facts
            .allocatable_cpu_millis
            .map(i128::from)
            .unwrap_or_else(|| {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                cpus as i128 * 1000
            }),
        "memory" => {
            i128::from(
                facts
                    .allocatable_memory_bytes
                    .unwrap_or_else(host_memory_bytes),
            ) * 1000
        }
        _ => 0,
    }
}

/// The host's MemTotal in bytes (0 if /proc/meminfo cannot be read).
fn host_memory_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn unsupported_field(path: &str) -> EnvError {
    EnvError::UnsupportedFieldPath { path: path.into() }
}

fn unsupported_resource(resource: &str) -> EnvError {
    EnvError::UnsupportedResource {
        resource: resource.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let v = vars(&[("A", "x"), ("EMPTY", "")]);
        assert_eq!(expand("$(A)-$(A)", &v), "x-x");
        assert_eq!(expand("$(UNDEFINED)", &v), "$(UNDEFINED)");
        assert_eq!(expand("$$(A)", &v), "$(A)");
        assert_eq!(expand("$$$(A)", &v), "$x");
        assert_eq!(expand("a$$b", &v), "a$b");
        assert_eq!(expand("$(EMPTY)!", &v), "!");
        assert_eq!(expand("$A $", &v), "$A $");
        assert_eq!(expand("$(A", &v), "$(A");
        assert_eq!(expand("$()", &v), "$()");
        assert_eq!(expand("é$é$(A)", &v), "é$éx");
        assert_eq!(expand("no vars", &v), "no vars");
    }

    #[test]
    fn args_expand_with_the_final_environment() {
        let env = vec![("GREETING".to_string(), "hi".to_string())];
        assert_eq!(
            expand_args(&["echo".into(), "$(GREETING) $(NOPE)".into()], &env),
            vec!["echo", "hi $(NOPE)"]
        );
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                annotations: Some(
                    [
                        ("b".to_string(), "say \"hi\"\n".to_string()),
                        ("a".to_string(), "1".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![Container {
                    name: "main".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some(
                            [
                                ("cpu".to_string(), Quantity("1500m".into())),
                                ("memory".to_string(), Quantity("64Mi".into())),
                            ]
                            .into(),
                        ),
                        requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.9".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pod_fields() {
        let pod = pod();
        let facts = PodFacts {
            host_ip: Some("192.168.1.2".into()),
            ..Default::default()
        };
        let f = |p: &str| pod_field(&pod, p, &facts).unwrap();
        assert_eq!(f("metadata.name"), "web");
        assert_eq!(f("metadata.namespace"), "shop");
        assert_eq!(f("metadata.uid"), "u-1");
        assert_eq!(f("metadata.labels['app']"), "web");
        assert_eq!(f("metadata.labels['none']"), "");
        assert_eq!(f("metadata.annotations['a']"), "1");
        assert_eq!(
            f("metadata.annotations"),
            "a=\"1\"\nb=\"say \\\"hi\\\"\\n\""
        );
        assert_eq!(f("spec.nodeName"), "node-1");
        assert_eq!(f("spec.serviceAccountName"), "default");
        assert_eq!(f("status.podIP"), "10.0.0.9");
        assert_eq!(f("status.hostIP"), "192.168.1.2");
        let err = pod_field(&pod, "spec.hostname", &facts).unwrap_err();
        assert_eq!(err.to_string(), "unsupported fieldPath: spec.hostname");
    }

    fn selector(resource: &str, divisor: Option<&str>) -> ResourceFieldSelector {
        ResourceFieldSelector {
            resource: resource.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
            container_name: None,
        }
    }

    #[test]
    fn resource_fields_divide_and_round_up() {
        let pod = pod();
        let facts = PodFacts {
            allocatable_memory_bytes: Some(8 << 30),
            ..Default::default()
        };
        let r = |res: &str, div: Option<&str>| {
            resource_field(&pod, "main", &selector(res, div), &facts).unwrap()
        };
        assert_eq!(r("limits.cpu", None), "2");
        assert_eq!(r("limits.cpu", Some("1m")), "1500");
        assert_eq!(r("requests.cpu", Some("1m")), "250");
        assert_eq!(r("limits.memory", None), (64u64 << 20).to_string());
        assert_eq!(r("limits.memory", Some("1Mi")), "64");
        // No memory request: the limit, as defaulting makes it.
        assert_eq!(r("requests.memory", Some("1Mi")), "64");
        let err = resource_field(&pod, "main", &selector("limits.gpu", None), &facts);
        assert_eq!(
            err.unwrap_err().to_string(),
            "unsupported container resource : limits.gpu"
        );
        let err = resource_field(&pod, "side", &selector("limits.cpu", None), &facts);
        assert!(matches!(err, Err(EnvError::ContainerNotFound { .. })));
    }

    #[test]
    fn unset_limits_are_the_node_allocatable() {
        let mut pod = pod();
        pod.spec.as_mut().unwrap().containers[0].resources = None;
        let facts = PodFacts {
            allocatable_cpu_millis: Some(4000),
            allocatable_memory_bytes: Some(1 << 30),
            ..Default::default()
        };
        let r = |res: &str| resource_field(&pod, "main", &selector(res, None), &facts).unwrap();
        assert_eq!(r("limits.cpu"), "4");
        assert_eq!(r("limits.memory"), (1u64 << 30).to_string());
        assert_eq!(r("requests.cpu"), "0");
    }

    #[test]
    fn env_names_follow_the_relaxed_rule() {
        assert!(valid_env_name("APP_1"));
        assert!(valid_env_name("my.key-1"));
        assert!(!valid_env_name(""));
        assert!(!valid_env_name("A=B"));
        assert!(!valid_env_name("tab\there"));
    }
}
