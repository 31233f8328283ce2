//! Kubernetes protobuf request bodies, decoded to JSON.
//!
//! kubectl's typed commands (`kubectl create namespace|configmap|secret|
//! deployment|job|service|quota|ingress`, `kubectl autoscale`) send their
//! object as `application/vnd.kubernetes.protobuf`: the magic `k8s\0`, then
//! a `runtime.Unknown` whose `raw` field holds the object's own protobuf
//! encoding. This module turns such a body into the JSON kubectl would have
//! sent, so the rest of the request path (validation, defaulting, strict
//! field validation) runs unchanged.
//!
//! The object encodings are described by a compact table below (message →
//! field number, JSON name, kind, cardinality), with the field numbers of
//! the upstream `generated.proto` files. Fields the table does not list are
//! skipped. Values that Go leaves out of JSON (`omitempty` on a non-pointer
//! field: empty string, zero, false, zero time) are left out here as well,
//! while pointer fields keep an explicit zero (`replicas: 0`).

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The body does not start with `k8s\0`.
    #[error("the protobuf body does not start with the magic number \"k8s\\x00\"")]
    MissingMagic,
    /// The bytes are not valid protobuf (or not the expected field types).
    #[error("malformed protobuf body at {path}: {problem}")]
    Malformed {
        /// Where: message and field names from the object's root.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The envelope names a kind this server cannot decode from protobuf.
    #[error("protobuf bodies of kind {kind:?} (apiVersion {api_version:?}) are not supported; send JSON")]
    UnsupportedKind {
        /// `typeMeta.apiVersion` of the envelope.
        api_version: String,
        /// `typeMeta.kind` of the envelope.
        kind: String,
    },
    /// The envelope's `contentEncoding` is set (nothing but none is known).
    #[error("the protobuf content encoding {0:?} is not supported; send JSON")]
    UnsupportedEncoding(String),
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::MissingMagic | DecodeError::Malformed { .. } => {
                ApiError::bad_request(e.to_string())
            }
            DecodeError::UnsupportedKind { .. } | DecodeError::UnsupportedEncoding(_) => {
                ApiError::unsupported_media_type(e.to_string())
            }
        }
    }
}

/// Decodes a `application/vnd.kubernetes.protobuf` body to JSON bytes.
pub(crate) fn decode(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    Ok(to_json(body)?.to_string().into_bytes())
}

/// Decodes a `application/vnd.kubernetes.protobuf` body to a JSON object
/// with `apiVersion` and `kind` from the envelope.
pub(crate) fn to_json(body: &[u8]) -> Result<Value, DecodeError> {
    let unknown = body
        .strip_prefix(b"k8s\0")
        .ok_or(DecodeError::MissingMagic)?;
    let Envelope {
        type_meta,
        raw,
        encoding,
    } = envelope(unknown).map_err(|e| e.at("Unknown"))?;
    let text = |key: &str| {
        type_meta
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    if !encoding.is_empty() {
        return Err(DecodeError::UnsupportedEncoding(encoding));
    }
    let Some(message) = message_for(&api_version, &kind) else {
        return Err(DecodeError::UnsupportedKind { api_version, kind });
    };
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    decode_message(message, raw, &mut object).map_err(|e| e.at(message.name))?;
    Ok(Value::Object(object))
}

/// The parts of a `runtime.Unknown` envelope that matter here.
struct Envelope<'a> {
    type_meta: Map<String, Value>,
    raw: &'a [u8],
    encoding: String,
}

/// Reads the `runtime.Unknown` envelope.
fn envelope(buf: &[u8]) -> Result<Envelope<'_>, Malformed> {
    let mut reader = Reader::new(buf);
    let (mut type_meta, mut raw, mut encoding) = (Map::new(), &buf[..0], String::new());
    while !reader.done() {
        let (num, wire) = reader.key()?;
        let name = match num {
            1 => "typeMeta",
            2 => "raw",
            3 => "contentEncoding",
            _ => {
                reader.skip(wire)?;
                continue;
            }
        };
        let within = |e: Malformed| e.within(name);
        if wire != LEN {
            return Err(within(Malformed::new(format!(
                "wire type {} where length-delimited was expected",
                wire_name(wire)
            ))));
        }
        let data = reader.bytes().map_err(within)?;
        match num {
            1 => decode_message(&TYPE_META, data, &mut type_meta).map_err(within)?,
            2 => raw = data,
            _ => encoding = utf8(data).map_err(within)?,
        }
    }
    Ok(Envelope {
        type_meta,
        raw,
        encoding,
    })
}

/// The message of a top-level kind.
fn message_for(api_version: &str, kind: &str) -> Option<&'static Message> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => &NAMESPACE,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "Secret") => &SECRET,
        ("v1", "Service") => &SERVICE,
        ("v1", "ResourceQuota") => &RESOURCE_QUOTA,
        ("v1", "Pod") => &POD,
        ("v1", "Binding") => &BINDING,
        ("apps/v1", "Deployment") => &DEPLOYMENT,
        ("apps/v1", "ReplicaSet") => &REPLICA_SET,
        ("batch/v1", "Job") => &JOB,
        ("networking.k8s.io/v1", "Ingress") => &INGRESS,
        ("autoscaling/v2", "HorizontalPodAutoscaler") => &HPA,
        ("autoscaling/v1", "Scale") => &SCALE,
        ("coordination.k8s.io/v1", "Lease") => &LEASE,
        (_, "DeleteOptions") => &DELETE_OPTIONS,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------

/// What a field holds and how it becomes JSON.
#[derive(Clone, Copy)]
enum Kind {
    /// `string` → JSON string.
    Str,
    /// `bool` (varint).
    Bool,
    /// `int32`/`int64` (varint; negatives are 10-byte two's complement).
    Int,
    /// A nested message → JSON object.
    Msg(&'static Message),
    /// A nested message whose fields are inlined into the parent in JSON
    /// (Go's `json:",inline"`).
    Inline(&'static Message),
    /// `map<string, string>`.
    StrMap,
    /// `map<string, bytes>` → values base64.
    BytesMap,
    /// `map<string, Quantity>` → values strings.
    QtyMap,
    /// `resource.Quantity` (field 1 `string`) → JSON string.
    Quantity,
    /// `meta.Time` (seconds 1, nanos 2) → RFC 3339, seconds precision.
    Time,
    /// `meta.MicroTime` → RFC 3339 with microseconds.
    MicroTime,
    /// `intstr.IntOrString` (type 1, intVal 2, strVal 3) → number or string.
    IntOrString,
}

/// How often a field occurs and whether a zero value is kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Card {
    /// A Go value field with `omitempty`: a zero value is left out.
    Value,
    /// A Go pointer field: present means set, zero is kept.
    Pointer,
    /// `repeated` → JSON array.
    Repeated,
}

/// One field of a message.
struct Field {
    num: u64,
    name: &'static str,
    kind: Kind,
    card: Card,
}

/// A message: its name (for error paths) and its fields.
struct Message {
    name: &'static str,
    fields: &'static [Field],
}

/// A value field.
const fn v(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        card: Card::Value,
    }
}

/// A pointer field.
const fn p(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        card: Card::Pointer,
    }
}

/// A repeated field.
const fn r(num: u64, name: &'static str, kind: Kind) -> Field {
    Field {
        num,
        name,
        kind,
        card: Card::Repeated,
    }
}

const fn m(name: &'static str, fields: &'static [Field]) -> Message {
    Message { name, fields }
}

/// The message tables: one message per line or few lines, field numbers
/// as in the upstream `generated.proto` files.
#[rustfmt::skip]
mod schema {
    use super::{m, p, r, v, Message};
    use super::Kind::{
        Bool, BytesMap, Inline, Int, IntOrString, MicroTime, Msg, QtyMap, Quantity, Str, StrMap,
        Time,
    };

    // runtime
    pub(super) static TYPE_META: Message = m("TypeMeta", &[
        v(1, "apiVersion", Str), v(2, "kind", Str),
    ]);

    // meta/v1
    pub(super) static OBJECT_META: Message = m("ObjectMeta", &[
        v(1, "name", Str), v(2, "generateName", Str), v(3, "namespace", Str), v(4, "selfLink", Str),
        v(5, "uid", Str), v(6, "resourceVersion", Str), v(7, "generation", Int),
        v(8, "creationTimestamp", Time), p(9, "deletionTimestamp", Time),
        p(10, "deletionGracePeriodSeconds", Int), v(11, "labels", StrMap),
        v(12, "annotations", StrMap), r(13, "ownerReferences", Msg(&OWNER_REFERENCE)),
        r(14, "finalizers", Str),
        // 17 managedFields: skipped.
    ]);
    pub(super) static OWNER_REFERENCE: Message = m("OwnerReference", &[
        v(5, "apiVersion", Str), v(1, "kind", Str), v(3, "name", Str), v(4, "uid", Str),
        p(6, "controller", Bool), p(7, "blockOwnerDeletion", Bool),
    ]);
    pub(super) static LABEL_SELECTOR: Message = m("LabelSelector", &[
        v(1, "matchLabels", StrMap), r(2, "matchExpressions", Msg(&LABEL_SELECTOR_REQUIREMENT)),
    ]);
    pub(super) static LABEL_SELECTOR_REQUIREMENT: Message = m("LabelSelectorRequirement", &[
        v(1, "key", Str), v(2, "operator", Str), r(3, "values", Str),
    ]);
    pub(super) static DELETE_OPTIONS: Message = m("DeleteOptions", &[
        p(1, "gracePeriodSeconds", Int), p(2, "preconditions", Msg(&PRECONDITIONS)),
        p(3, "orphanDependents", Bool), p(4, "propagationPolicy", Str), r(5, "dryRun", Str),
    ]);
    pub(super) static PRECONDITIONS: Message = m("Preconditions", &[
        p(1, "uid", Str), p(2, "resourceVersion", Str),
    ]);

    // core/v1: the kinds
    pub(super) static NAMESPACE: Message = m("Namespace", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&NAMESPACE_SPEC)),
        v(3, "status", Msg(&NAMESPACE_STATUS)),
    ]);
    pub(super) static NAMESPACE_SPEC: Message = m("NamespaceSpec", &[r(1, "finalizers", Str)]);
    pub(super) static NAMESPACE_STATUS: Message = m("NamespaceStatus", &[
        v(1, "phase", Str), r(2, "conditions", Msg(&NAMESPACE_CONDITION)),
    ]);
    pub(super) static NAMESPACE_CONDITION: Message = m("NamespaceCondition", &[
        v(1, "type", Str), v(2, "status", Str), v(4, "lastTransitionTime", Time),
        v(5, "reason", Str), v(6, "message", Str),
    ]);
    pub(super) static CONFIG_MAP: Message = m("ConfigMap", &[
        v(1, "metadata", Msg(&OBJECT_META)), p(4, "immutable", Bool), v(2, "data", StrMap),
        v(3, "binaryData", BytesMap),
    ]);
    pub(super) static SECRET: Message = m("Secret", &[
        v(1, "metadata", Msg(&OBJECT_META)), p(5, "immutable", Bool), v(2, "data", BytesMap),
        v(4, "stringData", StrMap), v(3, "type", Str),
    ]);
    pub(super) static SERVICE: Message = m("Service", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&SERVICE_SPEC)),
        // 3 status: set by the server.
    ]);
    pub(super) static SERVICE_SPEC: Message = m("ServiceSpec", &[
        r(1, "ports", Msg(&SERVICE_PORT)), v(2, "selector", StrMap), v(3, "clusterIP", Str),
        r(18, "clusterIPs", Str), v(4, "type", Str), r(5, "externalIPs", Str),
        v(7, "sessionAffinity", Str), v(8, "loadBalancerIP", Str),
        r(9, "loadBalancerSourceRanges", Str), v(10, "externalName", Str),
        v(11, "externalTrafficPolicy", Str), v(12, "healthCheckNodePort", Int),
        v(13, "publishNotReadyAddresses", Bool),
        p(14, "sessionAffinityConfig", Msg(&SESSION_AFFINITY_CONFIG)), r(19, "ipFamilies", Str),
        p(17, "ipFamilyPolicy", Str), p(20, "allocateLoadBalancerNodePorts", Bool),
        p(21, "loadBalancerClass", Str), p(22, "internalTrafficPolicy", Str),
        p(23, "trafficDistribution", Str),
    ]);
    pub(super) static SERVICE_PORT: Message = m("ServicePort", &[
        v(1, "name", Str), v(2, "protocol", Str), p(6, "appProtocol", Str), v(3, "port", Int),
        v(4, "targetPort", IntOrString), v(5, "nodePort", Int),
    ]);
    pub(super) static SESSION_AFFINITY_CONFIG: Message = m("SessionAffinityConfig", &[
        p(1, "clientIP", Msg(&CLIENT_IP_CONFIG)),
    ]);
    pub(super) static CLIENT_IP_CONFIG: Message = m("ClientIPConfig", &[
        p(1, "timeoutSeconds", Int),
    ]);
    pub(super) static RESOURCE_QUOTA: Message = m("ResourceQuota", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&RESOURCE_QUOTA_SPEC)),
        v(3, "status", Msg(&RESOURCE_QUOTA_STATUS)),
    ]);
    pub(super) static RESOURCE_QUOTA_SPEC: Message = m("ResourceQuotaSpec", &[
        v(1, "hard", QtyMap), r(2, "scopes", Str), p(3, "scopeSelector", Msg(&SCOPE_SELECTOR)),
    ]);
    pub(super) static SCOPE_SELECTOR: Message = m("ScopeSelector", &[
        r(1, "matchExpressions", Msg(&SCOPED_RESOURCE_SELECTOR_REQUIREMENT)),
    ]);
    pub(super) static SCOPED_RESOURCE_SELECTOR_REQUIREMENT: Message = m("ScopedResourceSelectorRequirement", &[
        v(1, "scopeName", Str), v(2, "operator", Str), r(3, "values", Str),
    ]);
    pub(super) static RESOURCE_QUOTA_STATUS: Message = m("ResourceQuotaStatus", &[
        v(1, "hard", QtyMap), v(2, "used", QtyMap),
    ]);
    pub(super) static POD: Message = m("Pod", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&POD_SPEC)),
        // 3 status: set by the server and the node agent.
    ]);
    pub(super) static BINDING: Message = m("Binding", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "target", Msg(&OBJECT_REFERENCE)),
    ]);
    pub(super) static OBJECT_REFERENCE: Message = m("ObjectReference", &[
        v(1, "kind", Str), v(2, "namespace", Str), v(3, "name", Str), v(4, "uid", Str),
        v(5, "apiVersion", Str), v(6, "resourceVersion", Str), v(7, "fieldPath", Str),
    ]);

    // core/v1: pods
    pub(super) static POD_TEMPLATE_SPEC: Message = m("PodTemplateSpec", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&POD_SPEC)),
    ]);
    pub(super) static POD_SPEC: Message = m("PodSpec", &[
        r(1, "volumes", Msg(&VOLUME)), r(20, "initContainers", Msg(&CONTAINER)),
        r(2, "containers", Msg(&CONTAINER)), v(3, "restartPolicy", Str),
        p(4, "terminationGracePeriodSeconds", Int), p(5, "activeDeadlineSeconds", Int),
        v(6, "dnsPolicy", Str), v(7, "nodeSelector", StrMap), v(8, "serviceAccountName", Str),
        v(9, "serviceAccount", Str), p(21, "automountServiceAccountToken", Bool),
        v(10, "nodeName", Str), v(11, "hostNetwork", Bool), v(12, "hostPID", Bool),
        v(13, "hostIPC", Bool), p(27, "shareProcessNamespace", Bool),
        p(14, "securityContext", Msg(&POD_SECURITY_CONTEXT)),
        r(15, "imagePullSecrets", Msg(&LOCAL_OBJECT_REFERENCE)), v(16, "hostname", Str),
        v(17, "subdomain", Str), v(19, "schedulerName", Str),
        r(22, "tolerations", Msg(&TOLERATION)), v(24, "priorityClassName", Str),
        p(25, "priority", Int), p(29, "runtimeClassName", Str), p(30, "enableServiceLinks", Bool),
        p(31, "preemptionPolicy", Str), v(32, "overhead", QtyMap), p(35, "setHostnameAsFQDN", Bool),
        p(37, "hostUsers", Bool),
    ]);
    pub(super) static POD_SECURITY_CONTEXT: Message = m("PodSecurityContext", &[
        p(2, "runAsUser", Int), p(6, "runAsGroup", Int), p(3, "runAsNonRoot", Bool),
        r(4, "supplementalGroups", Int), p(12, "supplementalGroupsPolicy", Str),
        p(5, "fsGroup", Int), p(9, "fsGroupChangePolicy", Str),
    ]);
    pub(super) static TOLERATION: Message = m("Toleration", &[
        v(1, "key", Str), v(2, "operator", Str), v(3, "value", Str), v(4, "effect", Str),
        p(5, "tolerationSeconds", Int),
    ]);
    pub(super) static LOCAL_OBJECT_REFERENCE: Message = m("LocalObjectReference", &[
        v(1, "name", Str),
    ]);
    pub(super) static CONTAINER: Message = m("Container", &[
        v(1, "name", Str), v(2, "image", Str), r(3, "command", Str), r(4, "args", Str),
        v(5, "workingDir", Str), r(6, "ports", Msg(&CONTAINER_PORT)),
        r(19, "envFrom", Msg(&ENV_FROM_SOURCE)), r(7, "env", Msg(&ENV_VAR)),
        v(8, "resources", Msg(&RESOURCE_REQUIREMENTS)),
        r(23, "resizePolicy", Msg(&CONTAINER_RESIZE_POLICY)), p(24, "restartPolicy", Str),
        r(9, "volumeMounts", Msg(&VOLUME_MOUNT)), p(10, "livenessProbe", Msg(&PROBE)),
        p(11, "readinessProbe", Msg(&PROBE)), p(22, "startupProbe", Msg(&PROBE)),
        p(12, "lifecycle", Msg(&LIFECYCLE)), v(13, "terminationMessagePath", Str),
        v(20, "terminationMessagePolicy", Str), v(14, "imagePullPolicy", Str),
        p(15, "securityContext", Msg(&SECURITY_CONTEXT)), v(16, "stdin", Bool),
        v(17, "stdinOnce", Bool), v(18, "tty", Bool),
    ]);
    pub(super) static CONTAINER_PORT: Message = m("ContainerPort", &[
        v(1, "name", Str), v(2, "hostPort", Int), v(3, "containerPort", Int), v(4, "protocol", Str),
        v(5, "hostIP", Str),
    ]);
    pub(super) static CONTAINER_RESIZE_POLICY: Message = m("ContainerResizePolicy", &[
        v(1, "resourceName", Str), v(2, "restartPolicy", Str),
    ]);
    pub(super) static ENV_VAR: Message = m("EnvVar", &[
        v(1, "name", Str), v(2, "value", Str), p(3, "valueFrom", Msg(&ENV_VAR_SOURCE)),
    ]);
    pub(super) static ENV_VAR_SOURCE: Message = m("EnvVarSource", &[
        p(1, "fieldRef", Msg(&OBJECT_FIELD_SELECTOR)),
        p(2, "resourceFieldRef", Msg(&RESOURCE_FIELD_SELECTOR)),
        p(3, "configMapKeyRef", Msg(&KEY_SELECTOR)), p(4, "secretKeyRef", Msg(&KEY_SELECTOR)),
    ]);
    pub(super) static OBJECT_FIELD_SELECTOR: Message = m("ObjectFieldSelector", &[
        v(1, "apiVersion", Str), v(2, "fieldPath", Str),
    ]);
    pub(super) static RESOURCE_FIELD_SELECTOR: Message = m("ResourceFieldSelector", &[
        v(1, "containerName", Str), v(2, "resource", Str), v(3, "divisor", Quantity),
    ]);
    /// ConfigMapKeySelector and SecretKeySelector share their encoding.
    pub(super) static KEY_SELECTOR: Message = m("KeySelector", &[
        v(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)), v(2, "key", Str),
        p(3, "optional", Bool),
    ]);
    pub(super) static ENV_FROM_SOURCE: Message = m("EnvFromSource", &[
        v(1, "prefix", Str), p(2, "configMapRef", Msg(&ENV_SOURCE)),
        p(3, "secretRef", Msg(&ENV_SOURCE)),
    ]);
    /// ConfigMapEnvSource and SecretEnvSource share their encoding.
    pub(super) static ENV_SOURCE: Message = m("EnvSource", &[
        v(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)), p(2, "optional", Bool),
    ]);
    pub(super) static RESOURCE_REQUIREMENTS: Message = m("ResourceRequirements", &[
        v(1, "limits", QtyMap), v(2, "requests", QtyMap), r(3, "claims", Msg(&RESOURCE_CLAIM)),
    ]);
    pub(super) static RESOURCE_CLAIM: Message = m("ResourceClaim", &[
        v(1, "name", Str), v(2, "request", Str),
    ]);
    pub(super) static VOLUME_MOUNT: Message = m("VolumeMount", &[
        v(1, "name", Str), v(2, "readOnly", Bool), p(7, "recursiveReadOnly", Str),
        v(3, "mountPath", Str), v(4, "subPath", Str), p(5, "mountPropagation", Str),
        v(6, "subPathExpr", Str),
    ]);
    pub(super) static PROBE: Message = m("Probe", &[
        v(1, "handler", Inline(&PROBE_HANDLER)), v(2, "initialDelaySeconds", Int),
        v(3, "timeoutSeconds", Int), v(4, "periodSeconds", Int), v(5, "successThreshold", Int),
        v(6, "failureThreshold", Int), p(7, "terminationGracePeriodSeconds", Int),
    ]);
    pub(super) static PROBE_HANDLER: Message = m("ProbeHandler", &[
        p(1, "exec", Msg(&EXEC_ACTION)), p(2, "httpGet", Msg(&HTTP_GET_ACTION)),
        p(3, "tcpSocket", Msg(&TCP_SOCKET_ACTION)), p(4, "grpc", Msg(&GRPC_ACTION)),
    ]);
    pub(super) static LIFECYCLE: Message = m("Lifecycle", &[
        p(1, "postStart", Msg(&LIFECYCLE_HANDLER)), p(2, "preStop", Msg(&LIFECYCLE_HANDLER)),
        p(3, "stopSignal", Str),
    ]);
    pub(super) static LIFECYCLE_HANDLER: Message = m("LifecycleHandler", &[
        p(1, "exec", Msg(&EXEC_ACTION)), p(2, "httpGet", Msg(&HTTP_GET_ACTION)),
        p(3, "tcpSocket", Msg(&TCP_SOCKET_ACTION)), p(4, "sleep", Msg(&SLEEP_ACTION)),
    ]);
    pub(super) static EXEC_ACTION: Message = m("ExecAction", &[r(1, "command", Str)]);
    pub(super) static HTTP_GET_ACTION: Message = m("HTTPGetAction", &[
        v(1, "path", Str), v(2, "port", IntOrString), v(3, "host", Str), v(4, "scheme", Str),
        r(5, "httpHeaders", Msg(&HTTP_HEADER)),
    ]);
    pub(super) static HTTP_HEADER: Message = m("HTTPHeader", &[
        v(1, "name", Str), v(2, "value", Str),
    ]);
    pub(super) static TCP_SOCKET_ACTION: Message = m("TCPSocketAction", &[
        v(1, "port", IntOrString), v(2, "host", Str),
    ]);
    pub(super) static GRPC_ACTION: Message = m("GRPCAction", &[
        v(1, "port", Int), p(2, "service", Str),
    ]);
    pub(super) static SLEEP_ACTION: Message = m("SleepAction", &[v(1, "seconds", Int)]);
    pub(super) static SECURITY_CONTEXT: Message = m("SecurityContext", &[
        p(1, "capabilities", Msg(&CAPABILITIES)), p(2, "privileged", Bool), p(4, "runAsUser", Int),
        p(8, "runAsGroup", Int), p(5, "runAsNonRoot", Bool), p(6, "readOnlyRootFilesystem", Bool),
        p(7, "allowPrivilegeEscalation", Bool), p(9, "procMount", Str),
    ]);
    pub(super) static CAPABILITIES: Message = m("Capabilities", &[
        r(1, "add", Str), r(2, "drop", Str),
    ]);
    pub(super) static VOLUME: Message = m("Volume", &[
        v(1, "name", Str), v(2, "volumeSource", Inline(&VOLUME_SOURCE)),
    ]);
    pub(super) static VOLUME_SOURCE: Message = m("VolumeSource", &[
        p(1, "hostPath", Msg(&HOST_PATH_VOLUME_SOURCE)),
        p(2, "emptyDir", Msg(&EMPTY_DIR_VOLUME_SOURCE)), p(6, "secret", Msg(&SECRET_VOLUME_SOURCE)),
        p(10, "persistentVolumeClaim", Msg(&PVC_VOLUME_SOURCE)),
        p(16, "downwardAPI", Msg(&DOWNWARD_API_VOLUME_SOURCE)),
        p(19, "configMap", Msg(&CONFIG_MAP_VOLUME_SOURCE)),
    ]);
    pub(super) static HOST_PATH_VOLUME_SOURCE: Message = m("HostPathVolumeSource", &[
        v(1, "path", Str), p(2, "type", Str),
    ]);
    pub(super) static EMPTY_DIR_VOLUME_SOURCE: Message = m("EmptyDirVolumeSource", &[
        v(1, "medium", Str), p(2, "sizeLimit", Quantity),
    ]);
    pub(super) static SECRET_VOLUME_SOURCE: Message = m("SecretVolumeSource", &[
        v(1, "secretName", Str), r(2, "items", Msg(&KEY_TO_PATH)), p(3, "defaultMode", Int),
        p(4, "optional", Bool),
    ]);
    pub(super) static CONFIG_MAP_VOLUME_SOURCE: Message = m("ConfigMapVolumeSource", &[
        v(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        r(2, "items", Msg(&KEY_TO_PATH)), p(3, "defaultMode", Int), p(4, "optional", Bool),
    ]);
    pub(super) static KEY_TO_PATH: Message = m("KeyToPath", &[
        v(1, "key", Str), v(2, "path", Str), p(3, "mode", Int),
    ]);
    pub(super) static PVC_VOLUME_SOURCE: Message = m("PersistentVolumeClaimVolumeSource", &[
        v(1, "claimName", Str), v(2, "readOnly", Bool),
    ]);
    pub(super) static DOWNWARD_API_VOLUME_SOURCE: Message = m("DownwardAPIVolumeSource", &[
        r(1, "items", Msg(&DOWNWARD_API_VOLUME_FILE)), p(2, "defaultMode", Int),
    ]);
    pub(super) static DOWNWARD_API_VOLUME_FILE: Message = m("DownwardAPIVolumeFile", &[
        v(1, "path", Str), p(2, "fieldRef", Msg(&OBJECT_FIELD_SELECTOR)),
        p(3, "resourceFieldRef", Msg(&RESOURCE_FIELD_SELECTOR)), p(4, "mode", Int),
    ]);

    // apps/v1
    pub(super) static DEPLOYMENT: Message = m("Deployment", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&DEPLOYMENT_SPEC)),
        // 3 status: set by the deployment controller.
    ]);
    pub(super) static DEPLOYMENT_SPEC: Message = m("DeploymentSpec", &[
        p(1, "replicas", Int), p(2, "selector", Msg(&LABEL_SELECTOR)),
        v(3, "template", Msg(&POD_TEMPLATE_SPEC)), v(4, "strategy", Msg(&DEPLOYMENT_STRATEGY)),
        v(5, "minReadySeconds", Int), p(6, "revisionHistoryLimit", Int), v(7, "paused", Bool),
        p(9, "progressDeadlineSeconds", Int),
    ]);
    pub(super) static DEPLOYMENT_STRATEGY: Message = m("DeploymentStrategy", &[
        v(1, "type", Str), p(2, "rollingUpdate", Msg(&ROLLING_UPDATE_DEPLOYMENT)),
    ]);
    pub(super) static ROLLING_UPDATE_DEPLOYMENT: Message = m("RollingUpdateDeployment", &[
        p(1, "maxUnavailable", IntOrString), p(2, "maxSurge", IntOrString),
    ]);
    pub(super) static REPLICA_SET: Message = m("ReplicaSet", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&REPLICA_SET_SPEC)),
    ]);
    pub(super) static REPLICA_SET_SPEC: Message = m("ReplicaSetSpec", &[
        p(1, "replicas", Int), v(4, "minReadySeconds", Int), p(2, "selector", Msg(&LABEL_SELECTOR)),
        v(3, "template", Msg(&POD_TEMPLATE_SPEC)),
    ]);

    // batch/v1
    pub(super) static JOB: Message = m("Job", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&JOB_SPEC)),
        // 3 status: set by the job controller.
    ]);
    pub(super) static JOB_SPEC: Message = m("JobSpec", &[
        p(1, "parallelism", Int), p(2, "completions", Int), p(3, "activeDeadlineSeconds", Int),
        p(7, "backoffLimit", Int), p(12, "backoffLimitPerIndex", Int),
        p(13, "maxFailedIndexes", Int), p(4, "selector", Msg(&LABEL_SELECTOR)),
        p(5, "manualSelector", Bool), v(6, "template", Msg(&POD_TEMPLATE_SPEC)),
        p(8, "ttlSecondsAfterFinished", Int), p(9, "completionMode", Str), p(10, "suspend", Bool),
        p(14, "podReplacementPolicy", Str), p(15, "managedBy", Str),
    ]);

    // networking.k8s.io/v1
    pub(super) static INGRESS: Message = m("Ingress", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&INGRESS_SPEC)),
        // 3 status: set by the ingress controller.
    ]);
    pub(super) static INGRESS_SPEC: Message = m("IngressSpec", &[
        p(4, "ingressClassName", Str), p(1, "defaultBackend", Msg(&INGRESS_BACKEND)),
        r(2, "tls", Msg(&INGRESS_TLS)), r(3, "rules", Msg(&INGRESS_RULE)),
    ]);
    pub(super) static INGRESS_BACKEND: Message = m("IngressBackend", &[
        p(4, "service", Msg(&INGRESS_SERVICE_BACKEND)),
        p(3, "resource", Msg(&TYPED_LOCAL_OBJECT_REFERENCE)),
    ]);
    pub(super) static INGRESS_SERVICE_BACKEND: Message = m("IngressServiceBackend", &[
        v(1, "name", Str), v(2, "port", Msg(&SERVICE_BACKEND_PORT)),
    ]);
    pub(super) static SERVICE_BACKEND_PORT: Message = m("ServiceBackendPort", &[
        v(1, "name", Str), v(2, "number", Int),
    ]);
    pub(super) static TYPED_LOCAL_OBJECT_REFERENCE: Message = m("TypedLocalObjectReference", &[
        p(1, "apiGroup", Str), v(2, "kind", Str), v(3, "name", Str),
    ]);
    pub(super) static INGRESS_TLS: Message = m("IngressTLS", &[
        r(1, "hosts", Str), v(2, "secretName", Str),
    ]);
    pub(super) static INGRESS_RULE: Message = m("IngressRule", &[
        v(1, "host", Str), v(2, "ingressRuleValue", Inline(&INGRESS_RULE_VALUE)),
    ]);
    pub(super) static INGRESS_RULE_VALUE: Message = m("IngressRuleValue", &[
        p(1, "http", Msg(&HTTP_INGRESS_RULE_VALUE)),
    ]);
    pub(super) static HTTP_INGRESS_RULE_VALUE: Message = m("HTTPIngressRuleValue", &[
        r(1, "paths", Msg(&HTTP_INGRESS_PATH)),
    ]);
    pub(super) static HTTP_INGRESS_PATH: Message = m("HTTPIngressPath", &[
        v(1, "path", Str), p(3, "pathType", Str), v(2, "backend", Msg(&INGRESS_BACKEND)),
    ]);

    // autoscaling
    pub(super) static HPA: Message = m("HorizontalPodAutoscaler", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&HPA_SPEC)),
        // 3 status: set by the autoscaler.
    ]);
    pub(super) static HPA_SPEC: Message = m("HorizontalPodAutoscalerSpec", &[
        v(1, "scaleTargetRef", Msg(&CROSS_VERSION_OBJECT_REFERENCE)), p(2, "minReplicas", Int),
        v(3, "maxReplicas", Int), r(4, "metrics", Msg(&METRIC_SPEC)),
    ]);
    pub(super) static CROSS_VERSION_OBJECT_REFERENCE: Message = m("CrossVersionObjectReference", &[
        v(1, "kind", Str), v(2, "name", Str), v(3, "apiVersion", Str),
    ]);
    pub(super) static METRIC_SPEC: Message = m("MetricSpec", &[
        v(1, "type", Str), p(4, "resource", Msg(&RESOURCE_METRIC_SOURCE)),
        p(7, "containerResource", Msg(&CONTAINER_RESOURCE_METRIC_SOURCE)),
    ]);
    pub(super) static RESOURCE_METRIC_SOURCE: Message = m("ResourceMetricSource", &[
        v(1, "name", Str), v(2, "target", Msg(&METRIC_TARGET)),
    ]);
    pub(super) static CONTAINER_RESOURCE_METRIC_SOURCE: Message = m("ContainerResourceMetricSource", &[
        v(1, "name", Str), v(2, "target", Msg(&METRIC_TARGET)), v(3, "container", Str),
    ]);
    pub(super) static METRIC_TARGET: Message = m("MetricTarget", &[
        v(1, "type", Str), p(2, "value", Quantity), p(3, "averageValue", Quantity),
        p(4, "averageUtilization", Int),
    ]);
    pub(super) static SCALE: Message = m("Scale", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&SCALE_SPEC)),
    ]);

    // `replicas: 0` is the point of a scale to zero: kept.
    pub(super) static SCALE_SPEC: Message = m("ScaleSpec", &[p(1, "replicas", Int)]);

    // coordination.k8s.io/v1
    pub(super) static LEASE: Message = m("Lease", &[
        v(1, "metadata", Msg(&OBJECT_META)), v(2, "spec", Msg(&LEASE_SPEC)),
    ]);
    pub(super) static LEASE_SPEC: Message = m("LeaseSpec", &[
        p(1, "holderIdentity", Str), p(2, "leaseDurationSeconds", Int),
        p(3, "acquireTime", MicroTime), p(4, "renewTime", MicroTime), p(5, "leaseTransitions", Int),
        p(6, "strategy", Str), p(7, "preferredHolder", Str),
    ]);
}

use schema::*;
use Kind::{
    Bool, BytesMap, Inline, Int, IntOrString, MicroTime, Msg, QtyMap, Quantity, Str, StrMap, Time,
};

// ---------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// A decoding failure on its way up: the problem, and the field path
/// collected so far (innermost segment first).
#[derive(Debug)]
struct Malformed {
    path: Vec<String>,
    problem: String,
}

impl Malformed {
    fn new(problem: impl Into<String>) -> Self {
        Malformed {
            path: Vec::new(),
            problem: problem.into(),
        }
    }

    /// Adds an outer path segment.
    fn within(mut self, segment: impl Into<String>) -> Self {
        self.path.push(segment.into());
        self
    }

    /// Closes the path at the root message.
    fn at(self, root: &str) -> DecodeError {
        let mut path = root.to_string();
        for segment in self.path.iter().rev() {
            if !segment.starts_with('[') {
                path.push('.');
            }
            path.push_str(segment);
        }
        DecodeError::Malformed {
            path,
            problem: self.problem,
        }
    }
}

/// A cursor over protobuf bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(Malformed::new(format!("truncated varint at byte {start}")));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed::new(format!(
            "varint longer than 10 bytes at byte {start}"
        )))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], Malformed> {
        let left = self.buf.len() - self.pos;
        if len > left as u64 {
            return Err(Malformed::new(format!(
                "length {len} at byte {} runs past the end ({left} bytes left)",
                self.pos
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.varint()?;
        self.take(len)
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u64, u64), Malformed> {
        let at = self.pos;
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        if num == 0 || num > u64::from(u32::MAX >> 3) {
            return Err(Malformed::new(format!(
                "invalid field number {num} at byte {at}"
            )));
        }
        if !matches!(wire, VARINT | FIXED64 | LEN | FIXED32) {
            return Err(Malformed::new(format!(
                "bad wire type {wire} for field {num} at byte {at}"
            )));
        }
        Ok((num, wire))
    }

    /// Skips a field of an unknown number.
    fn skip(&mut self, wire: u64) -> Result<(), Malformed> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            _ => self.take(4).map(drop),
        }
    }
}

fn base64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn utf8(bytes: &[u8]) -> Result<String, Malformed> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| Malformed::new(format!("string is not valid UTF-8: {e}")))
}

fn wire_name(wire: u64) -> &'static str {
    match wire {
        VARINT => "varint",
        FIXED64 => "fixed64",
        LEN => "length-delimited",
        _ => "fixed32",
    }
}

/// Decodes `buf` as `message`, adding its fields to `out`.
fn decode_message(
    message: &Message,
    buf: &[u8],
    out: &mut Map<String, Value>,
) -> Result<(), Malformed> {
    let mut reader = Reader::new(buf);
    while !reader.done() {
        let (num, wire) = reader.key()?;
        match message.fields.iter().find(|f| f.num == num) {
            None => reader.skip(wire)?,
            Some(field) => decode_field(field, wire, &mut reader, out).map_err(|e| {
                let index = match (field.card, out.get(field.name)) {
                    (Card::Repeated, Some(Value::Array(items))) => format!("[{}]", items.len()),
                    _ => String::new(),
                };
                let e = if index.is_empty() { e } else { e.within(index) };
                e.within(field.name)
            })?,
        }
    }
    Ok(())
}

/// Decodes one occurrence of a known field.
fn decode_field(
    field: &Field,
    wire: u64,
    reader: &mut Reader<'_>,
    out: &mut Map<String, Value>,
) -> Result<(), Malformed> {
    let scalar = matches!(field.kind, Int | Bool);
    let packed = scalar && field.card == Card::Repeated && wire == LEN;
    let expected = if scalar { VARINT } else { LEN };
    if wire != expected && !packed {
        return Err(Malformed::new(format!(
            "wire type {} where {} was expected",
            wire_name(wire),
            wire_name(expected)
        )));
    }
    if packed {
        let mut items = Reader::new(reader.bytes()?);
        while !items.done() {
            let value = scalar_value(field.kind, items.varint()?);
            store(field, value, false, out);
        }
        return Ok(());
    }
    if scalar {
        let raw = reader.varint()?;
        store(field, scalar_value(field.kind, raw), raw == 0, out);
        return Ok(());
    }
    let data = reader.bytes()?;
    let (value, zero) = match field.kind {
        Str => (Value::String(utf8(data)?), data.is_empty()),
        Msg(message) => {
            let mut object = Map::new();
            decode_message(message, data, &mut object)?;
            (Value::Object(object), false)
        }
        Inline(message) => return decode_message(message, data, out),
        StrMap | BytesMap | QtyMap => {
            let (key, value) = map_entry(field.kind, data)?;
            let map = out
                .entry(field.name)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = map {
                map.insert(key, value);
            }
            return Ok(());
        }
        Quantity => {
            let text = quantity(data)?;
            let zero = text.is_empty();
            (Value::String(text), zero)
        }
        Time | MicroTime => match time(data, matches!(field.kind, MicroTime))? {
            Some(text) => (Value::String(text), false),
            // Go writes the zero time as null: the same as absent.
            None => {
                out.remove(field.name);
                return Ok(());
            }
        },
        IntOrString => int_or_string(data)?,
        Int | Bool => unreachable!("scalars are handled above"),
    };
    store(field, value, zero, out);
    Ok(())
}

fn scalar_value(kind: Kind, raw: u64) -> Value {
    match kind {
        Bool => Value::Bool(raw != 0),
        // int32 and int64 alike: negatives arrive sign-extended to 64 bits.
        _ => Value::from(raw as i64),
    }
}

/// Puts a decoded value into the object, by the field's cardinality.
fn store(field: &Field, value: Value, zero: bool, out: &mut Map<String, Value>) {
    match field.card {
        Card::Repeated => {
            let items = out
                .entry(field.name)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = items {
                items.push(value);
            }
        }
        Card::Value if zero => {
            out.remove(field.name);
        }
        Card::Value | Card::Pointer => {
            // A message given twice is merged, as protobuf merges it.
            if let (Some(Value::Object(old)), Value::Object(new)) =
                (out.get_mut(field.name), &value)
            {
                old.extend(new.clone());
                return;
            }
            out.insert(field.name.to_string(), value);
        }
    }
}

/// One `map<string, V>` entry: key 1, value 2.
fn map_entry(kind: Kind, data: &[u8]) -> Result<(String, Value), Malformed> {
    let mut reader = Reader::new(data);
    let mut key = String::new();
    let mut value = match kind {
        QtyMap | StrMap => Value::String(String::new()),
        _ => base64(&[]),
    };
    while !reader.done() {
        let (num, wire) = reader.key()?;
        if !matches!(num, 1 | 2) {
            reader.skip(wire)?;
            continue;
        }
        if wire != LEN {
            return Err(Malformed::new(format!(
                "map entry field {num} has wire type {} where length-delimited was expected",
                wire_name(wire)
            )));
        }
        let bytes = reader.bytes()?;
        if num == 1 {
            key = utf8(bytes)?;
            continue;
        }
        value = match kind {
            StrMap => Value::String(utf8(bytes)?),
            QtyMap => Value::String(quantity(bytes).map_err(|e| e.within(format!("[{key:?}]")))?),
            _ => base64(bytes),
        };
    }
    Ok((key, value))
}

/// A `Quantity` message: field 1 is its string form.
fn quantity(data: &[u8]) -> Result<String, Malformed> {
    let mut reader = Reader::new(data);
    let mut text = String::new();
    while !reader.done() {
        match reader.key()? {
            (1, LEN) => text = utf8(reader.bytes()?)?,
            (1, wire) => {
                return Err(Malformed::new(format!(
                    "Quantity field 1 has wire type {}",
                    wire_name(wire)
                )))
            }
            (_, wire) => reader.skip(wire)?,
        }
    }
    Ok(text)
}

/// A `Time`/`MicroTime` message (seconds 1, nanos 2); `None` for the zero
/// time.
fn time(data: &[u8], micro: bool) -> Result<Option<String>, Malformed> {
    let mut reader = Reader::new(data);
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while !reader.done() {
        match reader.key()? {
            (1, VARINT) => seconds = reader.varint()? as i64,
            (2, VARINT) => nanos = reader.varint()? as i64,
            (1 | 2, wire) => {
                return Err(Malformed::new(format!(
                    "Time field has wire type {}",
                    wire_name(wire)
                )))
            }
            (_, wire) => reader.skip(wire)?,
        }
    }
    if seconds == 0 && nanos == 0 {
        return Ok(None);
    }
    let at = k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map_err(|e| Malformed::new(format!("time {seconds}s is out of range: {e}")))?;
    let text = at.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(Some(if micro {
        format!("{text}.{:06}Z", nanos.clamp(0, 999_999_999) / 1000)
    } else {
        format!("{text}Z")
    }))
}

/// An `IntOrString` message → (value, is zero).
fn int_or_string(data: &[u8]) -> Result<(Value, bool), Malformed> {
    let mut reader = Reader::new(data);
    let (mut kind, mut int, mut text) = (0u64, 0i64, String::new());
    while !reader.done() {
        match reader.key()? {
            (1, VARINT) => kind = reader.varint()?,
            (2, VARINT) => int = reader.varint()? as i64,
            (3, LEN) => text = utf8(reader.bytes()?)?,
            (num @ 1..=3, wire) => {
                return Err(Malformed::new(format!(
                    "IntOrString field {num} has wire type {}",
                    wire_name(wire)
                )))
            }
            (_, wire) => reader.skip(wire)?,
        }
    }
    Ok(if kind == 1 {
        (Value::String(text), false)
    } else {
        // intVal is an int32.
        (Value::from(int as i32), int == 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // A small protobuf encoder for building bodies by hand.

    fn varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn key(num: u64, wire: u64) -> Vec<u8> {
        varint(num << 3 | wire)
    }

    /// A varint field (negative numbers sign-extended, as Go writes them).
    fn int(num: u64, value: i64) -> Vec<u8> {
        [key(num, VARINT), varint(value as u64)].concat()
    }

    /// A length-delimited field of raw bytes.
    fn bytes(num: u64, data: &[u8]) -> Vec<u8> {
        [key(num, LEN), varint(data.len() as u64), data.to_vec()].concat()
    }

    fn string(num: u64, text: &str) -> Vec<u8> {
        bytes(num, text.as_bytes())
    }

    /// A nested message field made of the given encoded fields.
    fn msg(num: u64, fields: &[Vec<u8>]) -> Vec<u8> {
        bytes(num, &fields.concat())
    }

    /// A `map<string, string>` entry.
    fn entry(num: u64, k: &str, value: &str) -> Vec<u8> {
        msg(num, &[string(1, k), string(2, value)])
    }

    fn quantity(num: u64, text: &str) -> Vec<u8> {
        msg(num, &[string(1, text)])
    }

    /// A `map<string, Quantity>` entry.
    fn qty_entry(num: u64, k: &str, value: &str) -> Vec<u8> {
        msg(num, &[string(1, k), quantity(2, value)])
    }

    fn meta(name: &str) -> Vec<u8> {
        msg(1, &[string(1, name)])
    }

    /// The `k8s\0` + `runtime.Unknown` envelope around an object.
    fn envelope(api_version: &str, kind: &str, raw: &[Vec<u8>]) -> Vec<u8> {
        [
            b"k8s\0".to_vec(),
            msg(1, &[string(1, api_version), string(2, kind)]),
            bytes(2, &raw.concat()),
            string(3, ""),
            string(4, "application/vnd.kubernetes.protobuf"),
        ]
        .concat()
    }

    fn decoded(api_version: &str, kind: &str, raw: &[Vec<u8>]) -> Value {
        to_json(&envelope(api_version, kind, raw)).expect("decodes")
    }

    fn malformed(body: &[u8]) -> String {
        match to_json(body) {
            Err(e @ DecodeError::Malformed { .. }) | Err(e @ DecodeError::MissingMagic) => {
                let api: ApiError = e.clone().into();
                assert_eq!((api.code, api.reason), (400, "BadRequest"), "{e}");
                e.to_string()
            }
            other => panic!("expected a malformed-body error, got {other:?}"),
        }
    }

    #[test]
    fn namespace_with_labels_annotations_finalizers_and_status() {
        let object = decoded(
            "v1",
            "Namespace",
            &[
                msg(
                    1,
                    &[
                        string(1, "team-a"),
                        string(2, ""),
                        int(7, 0),
                        msg(8, &[]),
                        entry(11, "team", "a"),
                        entry(11, "empty", ""),
                        entry(12, "note", "hi"),
                        string(14, "example.com/f"),
                    ],
                ),
                msg(2, &[string(1, "kubernetes")]),
                msg(3, &[string(1, "Active")]),
            ],
        );
        assert_eq!(
            object,
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": "team-a",
                    "labels": {"team": "a", "empty": ""},
                    "annotations": {"note": "hi"},
                    "finalizers": ["example.com/f"],
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            })
        );
    }

    #[test]
    fn secret_and_configmap_bytes_maps_are_base64() {
        let secret = decoded(
            "v1",
            "Secret",
            &[
                meta("s"),
                msg(2, &[string(1, "password"), bytes(2, b"s3cret\0\xff")]),
                entry(4, "plain", "text"),
                string(3, "Opaque"),
                int(5, 0),
            ],
        );
        assert_eq!(secret["data"]["password"], json!("czNjcmV0AP8="));
        assert_eq!(secret["stringData"]["plain"], json!("text"));
        assert_eq!(secret["type"], json!("Opaque"));
        // immutable is a pointer: an explicit false is kept.
        assert_eq!(secret["immutable"], json!(false));

        let cm = decoded(
            "v1",
            "ConfigMap",
            &[
                meta("c"),
                entry(2, "a", "1"),
                msg(3, &[string(1, "bin"), bytes(2, &[1, 2, 3])]),
            ],
        );
        assert_eq!(cm["data"], json!({"a": "1"}));
        assert_eq!(cm["binaryData"], json!({"bin": "AQID"}));
        assert!(cm.get("immutable").is_none());
    }

    fn container(fields: &[Vec<u8>]) -> Vec<u8> {
        msg(2, fields)
    }

    #[test]
    fn deployment_with_pod_template_quantities_and_int_or_string() {
        let template = msg(
            3,
            &[
                msg(1, &[entry(11, "app", "web"), msg(8, &[])]),
                msg(
                    2,
                    &[
                        container(&[
                            string(1, "busybox"),
                            string(2, "busybox"),
                            string(3, "sh"),
                            string(3, "-c"),
                            string(4, ""),
                            msg(6, &[int(3, 80), string(4, "TCP"), int(2, 0)]),
                            msg(7, &[string(1, "MODE"), string(2, "one")]),
                            msg(
                                7,
                                &[
                                    string(1, "FROM"),
                                    msg(
                                        3,
                                        &[msg(3, &[msg(1, &[string(1, "cm")]), string(2, "k")])],
                                    ),
                                ],
                            ),
                            msg(
                                8,
                                &[qty_entry(1, "cpu", "500m"), qty_entry(2, "memory", "64Mi")],
                            ),
                            msg(9, &[string(1, "data"), string(3, "/data"), int(2, 1)]),
                            string(13, "/dev/termination-log"),
                            string(20, "File"),
                            string(14, "IfNotPresent"),
                            int(16, 0),
                        ]),
                        string(3, "Always"),
                        int(4, 30),
                        string(6, "ClusterFirst"),
                        entry(7, "disk", "ssd"),
                        string(8, "runner"),
                        msg(
                            1,
                            &[string(1, "data"), msg(2, &[msg(2, &[string(1, "Memory")])])],
                        ),
                        msg(
                            1,
                            &[
                                string(1, "conf"),
                                msg(2, &[msg(19, &[msg(1, &[string(1, "cm")])])]),
                            ],
                        ),
                        msg(20, &[string(1, "init"), string(2, "busybox")]),
                    ],
                ),
            ],
        );
        let object = decoded(
            "apps/v1",
            "Deployment",
            &[
                msg(1, &[string(1, "web"), entry(11, "app", "web")]),
                msg(
                    2,
                    &[
                        int(1, 3),
                        msg(2, &[entry(1, "app", "web")]),
                        template,
                        msg(
                            4,
                            &[
                                string(1, "RollingUpdate"),
                                msg(
                                    2,
                                    &[
                                        msg(1, &[int(1, 0), int(2, 0)]),
                                        msg(2, &[int(1, 1), string(3, "25%")]),
                                    ],
                                ),
                            ],
                        ),
                        int(5, 0),
                        int(7, 0),
                    ],
                ),
                msg(3, &[int(2, 3)]),
            ],
        );
        assert_eq!(
            object,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "busybox",
                                "image": "busybox",
                                "command": ["sh", "-c"],
                                "args": [""],
                                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                "env": [
                                    {"name": "MODE", "value": "one"},
                                    {"name": "FROM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                                ],
                                "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
                                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}],
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "File",
                                "imagePullPolicy": "IfNotPresent",
                            }],
                            "restartPolicy": "Always",
                            "terminationGracePeriodSeconds": 30,
                            "dnsPolicy": "ClusterFirst",
                            "nodeSelector": {"disk": "ssd"},
                            "serviceAccountName": "runner",
                            "volumes": [
                                {"name": "data", "emptyDir": {"medium": "Memory"}},
                                {"name": "conf", "configMap": {"name": "cm"}},
                            ],
                            "initContainers": [{"name": "init", "image": "busybox"}],
                        },
                    },
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
                    },
                },
            })
        );
    }

    #[test]
    fn pointer_fields_keep_zero_and_value_fields_drop_it() {
        let object = decoded(
            "apps/v1",
            "Deployment",
            &[
                meta("web"),
                msg(2, &[int(1, 0), int(5, 0), int(6, 0), int(7, 0)]),
            ],
        );
        assert_eq!(
            object["spec"],
            json!({"replicas": 0, "revisionHistoryLimit": 0})
        );
        let job = decoded(
            "batch/v1",
            "Job",
            &[meta("j"), msg(2, &[int(7, 0), int(10, 0), int(1, 2)])],
        );
        assert_eq!(
            job["spec"],
            json!({"backoffLimit": 0, "suspend": false, "parallelism": 2})
        );
    }

    #[test]
    fn negative_ints_are_ten_byte_varints() {
        let encoded = int(3, -1);
        assert_eq!(encoded.len(), 11, "key + 10-byte varint");
        let object = decoded(
            "v1",
            "Service",
            &[
                meta("svc"),
                msg(2, &[msg(1, &[encoded]), string(4, "ClusterIP")]),
            ],
        );
        assert_eq!(object["spec"]["ports"][0]["port"], json!(-1));
        let big = decoded(
            "v1",
            "Pod",
            &[meta("p"), msg(2, &[int(4, i64::MAX), int(5, -7)])],
        );
        assert_eq!(
            big["spec"]["terminationGracePeriodSeconds"],
            json!(i64::MAX)
        );
        assert_eq!(big["spec"]["activeDeadlineSeconds"], json!(-7));
    }

    #[test]
    fn int_or_string_is_a_number_or_a_string() {
        let port = |fields: &[Vec<u8>]| {
            let object = decoded(
                "v1",
                "Service",
                &[
                    meta("svc"),
                    msg(2, &[msg(1, &[int(3, 80), msg(4, fields)])]),
                ],
            );
            object["spec"]["ports"][0].get("targetPort").cloned()
        };
        assert_eq!(port(&[int(1, 0), int(2, 8080)]), Some(json!(8080)));
        assert_eq!(port(&[int(1, 1), string(3, "http")]), Some(json!("http")));
        assert_eq!(port(&[int(1, 0), int(2, -5)]), Some(json!(-5)));
        // The zero IntOrString of a value field is left out, for defaulting.
        assert_eq!(port(&[int(1, 0), int(2, 0), string(3, "")]), None);
        assert_eq!(port(&[]), None);
    }

    #[test]
    fn times_are_rfc3339_and_the_zero_time_is_absent() {
        let object = decoded(
            "v1",
            "Namespace",
            &[msg(
                1,
                &[
                    string(1, "n"),
                    msg(8, &[int(1, 1_700_000_000), int(2, 5)]),
                    msg(9, &[int(1, 1_700_000_001)]),
                ],
            )],
        );
        assert_eq!(
            object["metadata"]["creationTimestamp"],
            json!("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            object["metadata"]["deletionTimestamp"],
            json!("2023-11-14T22:13:21Z")
        );
        let zero = decoded("v1", "Namespace", &[msg(1, &[string(1, "n"), msg(8, &[])])]);
        assert_eq!(zero["metadata"], json!({"name": "n"}));

        let lease = decoded(
            "coordination.k8s.io/v1",
            "Lease",
            &[
                meta("l"),
                msg(
                    2,
                    &[
                        string(1, "me"),
                        int(2, 15),
                        msg(3, &[int(1, 1_700_000_000), int(2, 123_456_789)]),
                        msg(4, &[int(1, 1_700_000_000)]),
                        int(5, 0),
                    ],
                ),
            ],
        );
        assert_eq!(
            lease["spec"],
            json!({
                "holderIdentity": "me",
                "leaseDurationSeconds": 15,
                "acquireTime": "2023-11-14T22:13:20.123456Z",
                "renewTime": "2023-11-14T22:13:20.000000Z",
                "leaseTransitions": 0,
            })
        );
    }

    #[test]
    fn quota_quantities_and_scopes() {
        let object = decoded(
            "v1",
            "ResourceQuota",
            &[
                meta("q"),
                msg(
                    2,
                    &[
                        qty_entry(1, "pods", "3"),
                        qty_entry(1, "cpu", "1"),
                        string(2, "BestEffort"),
                    ],
                ),
            ],
        );
        assert_eq!(
            object["spec"],
            json!({"hard": {"pods": "3", "cpu": "1"}, "scopes": ["BestEffort"]})
        );
    }

    #[test]
    fn ingress_rules_inline_their_http_value() {
        let backend = msg(2, &[msg(4, &[string(1, "svc"), msg(2, &[int(2, 80)])])]);
        let object = decoded(
            "networking.k8s.io/v1",
            "Ingress",
            &[
                meta("ing"),
                msg(
                    2,
                    &[
                        string(4, "nginx"),
                        msg(
                            3,
                            &[
                                string(1, "foo.com"),
                                msg(
                                    2,
                                    &[msg(
                                        1,
                                        &[msg(
                                            1,
                                            &[string(1, "/bar"), string(3, "Exact"), backend],
                                        )],
                                    )],
                                ),
                            ],
                        ),
                        msg(2, &[string(1, "foo.com"), string(2, "tls")]),
                    ],
                ),
            ],
        );
        assert_eq!(
            object["spec"],
            json!({
                "ingressClassName": "nginx",
                "rules": [{
                    "host": "foo.com",
                    "http": {"paths": [{
                        "path": "/bar",
                        "pathType": "Exact",
                        "backend": {"service": {"name": "svc", "port": {"number": 80}}},
                    }]},
                }],
                "tls": [{"hosts": ["foo.com"], "secretName": "tls"}],
            })
        );
    }

    #[test]
    fn repeated_ints_packed_or_not_and_bools() {
        let packed = bytes(4, &[varint(1), varint(2), varint(300)].concat());
        let object = decoded(
            "v1",
            "Pod",
            &[
                meta("p"),
                msg(
                    2,
                    &[
                        msg(14, &[packed, int(4, 7), int(3, 1)]),
                        int(11, 1),
                        int(12, 0),
                        int(21, 0),
                    ],
                ),
            ],
        );
        assert_eq!(
            object["spec"],
            json!({
                "securityContext": {"supplementalGroups": [1, 2, 300, 7], "runAsNonRoot": true},
                "hostNetwork": true,
                "automountServiceAccountToken": false,
            })
        );
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let unknown = [
            int(90, 12345),
            [key(91, FIXED64), vec![0; 8]].concat(),
            [key(92, FIXED32), vec![0; 4]].concat(),
            string(93, "ignored"),
            // managedFields, known upstream, skipped here.
            msg(17, &[string(1, "kubectl"), string(2, "Update")]),
        ]
        .concat();
        let object = decoded(
            "v1",
            "ConfigMap",
            &[
                unknown.clone(),
                msg(1, &[unknown.clone(), string(1, "c")]),
                entry(2, "a", "1"),
            ],
        );
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}})
        );
        // Unknown fields in the envelope, and in map entries.
        let mut body = envelope("v1", "ConfigMap", &[meta("c")]);
        body.extend(int(9, 1));
        assert!(to_json(&body).is_ok());
        let object = decoded(
            "v1",
            "ConfigMap",
            &[
                meta("c"),
                msg(2, &[int(5, 1), string(1, "k"), string(2, "v")]),
            ],
        );
        assert_eq!(object["data"], json!({"k": "v"}));
    }

    #[test]
    fn unknown_kinds_and_encodings_get_415() {
        let e = to_json(&envelope(
            "rbac.authorization.k8s.io/v1",
            "Role",
            &[meta("r")],
        ))
        .unwrap_err();
        let api: ApiError = e.into();
        assert_eq!((api.code, api.reason), (415, "UnsupportedMediaType"));
        assert!(api.message.contains("\"Role\""), "{}", api.message);
        assert!(
            api.message.contains("rbac.authorization.k8s.io/v1"),
            "{}",
            api.message
        );

        let body = [
            b"k8s\0".to_vec(),
            msg(1, &[string(1, "v1"), string(2, "ConfigMap")]),
            bytes(2, &meta("c")),
            string(3, "gzip"),
        ]
        .concat();
        let api: ApiError = to_json(&body).unwrap_err().into();
        assert_eq!(api.code, 415);
        assert!(api.message.contains("gzip"), "{}", api.message);
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        assert!(malformed(b"").contains("magic"));
        assert!(malformed(b"{\"kind\":\"ConfigMap\"}").contains("magic"));
        assert!(malformed(b"k8s").contains("magic"));

        let good = envelope("v1", "ConfigMap", &[meta("c"), entry(2, "a", "1")]);
        // Every truncation of a good body fails cleanly (or, cut at a field
        // boundary, decodes) without a panic.
        for end in 4..good.len() {
            let _ = to_json(&good[..end]);
        }

        let raw = |fields: &[Vec<u8>]| envelope("v1", "ConfigMap", fields);
        let truncated_varint = raw(&[meta("c"), vec![0x48, 0x80, 0x80]]);
        let message = malformed(&truncated_varint);
        assert!(message.contains("truncated varint"), "{message}");
        assert!(message.contains("ConfigMap"), "{message}");

        let too_long = raw(&[[vec![0x38], vec![0xff; 11]].concat()]);
        assert!(malformed(&too_long).contains("longer than 10 bytes"));

        let bad_wire = raw(&[meta("c"), key(8, 6)]);
        let message = malformed(&bad_wire);
        assert!(message.contains("bad wire type 6"), "{message}");
        let group = raw(&[key(8, 3)]);
        assert!(malformed(&group).contains("bad wire type 3"));

        let past_end = raw(&[vec![0x0a, 0x40, 0x0a, 0x01]]);
        let message = malformed(&past_end);
        assert!(message.contains("runs past the end"), "{message}");

        let in_metadata = raw(&[msg(1, &[vec![0x0a, 0x05, b'a']])]);
        let message = malformed(&in_metadata);
        assert!(message.contains("ConfigMap.metadata"), "{message}");
        assert!(message.contains("runs past the end"), "{message}");

        let wrong_wire = raw(&[msg(1, &[int(1, 5)])]);
        let message = malformed(&wrong_wire);
        assert!(message.contains("ConfigMap.metadata.name"), "{message}");
        assert!(message.contains("wire type varint"), "{message}");

        let bad_utf8 = raw(&[msg(1, &[bytes(1, &[0xff, 0xfe])])]);
        assert!(malformed(&bad_utf8).contains("UTF-8"));

        let field_zero = raw(&[vec![0x02, 0x00]]);
        assert!(malformed(&field_zero).contains("invalid field number 0"));

        let truncated_fixed = raw(&[[key(90, FIXED64), vec![0; 3]].concat()]);
        assert!(malformed(&truncated_fixed).contains("runs past the end"));

        // A failure inside the second container names its index.
        let deployment = envelope(
            "apps/v1",
            "Deployment",
            &[
                meta("d"),
                msg(
                    2,
                    &[msg(
                        3,
                        &[msg(
                            2,
                            &[container(&[string(1, "a")]), container(&[int(2, 1)])],
                        )],
                    )],
                ),
            ],
        );
        let message = malformed(&deployment);
        assert!(
            message.contains("Deployment.spec.template.spec.containers[1].image"),
            "{message}"
        );

        // The envelope itself: raw given as a varint.
        let body = [b"k8s\0".to_vec(), int(2, 1)].concat();
        assert!(malformed(&body).contains("Unknown.raw"));
    }

    /// Random bytes and randomly damaged bodies decode or fail with an
    /// error, never a panic.
    #[test]
    fn random_and_damaged_bodies_never_panic() {
        let good = envelope(
            "apps/v1",
            "Deployment",
            &[
                meta("web"),
                msg(
                    2,
                    &[
                        int(1, 3),
                        msg(
                            3,
                            &[msg(
                                2,
                                &[container(&[
                                    string(1, "c"),
                                    msg(8, &[qty_entry(1, "cpu", "1")]),
                                    msg(6, &[int(3, 80)]),
                                ])],
                            )],
                        ),
                    ],
                ),
            ],
        );
        for _ in 0..20_000 {
            let mut body = good.clone();
            for _ in 0..rand::random_range(1..4) {
                let at = rand::random_range(4..body.len());
                body[at] = rand::random();
            }
            let _ = to_json(&body);
            let len = rand::random_range(0..64);
            let noise: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            let _ = to_json(&[b"k8s\0".to_vec(), noise].concat());
        }
    }

    /// Every message reachable from a kind has distinct field numbers and
    /// JSON names.
    #[test]
    fn schema_tables_are_consistent() {
        fn walk(message: &'static Message, seen: &mut Vec<&'static str>) {
            if seen.contains(&message.name) {
                return;
            }
            seen.push(message.name);
            for (i, a) in message.fields.iter().enumerate() {
                for b in &message.fields[i + 1..] {
                    assert_ne!(a.num, b.num, "{}: field number {}", message.name, a.num);
                    assert_ne!(a.name, b.name, "{}: field {}", message.name, a.name);
                }
                if let Msg(inner) | Inline(inner) = a.kind {
                    walk(inner, seen);
                }
            }
        }
        let mut seen = Vec::new();
        for (api_version, kind) in [
            ("v1", "Namespace"),
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("v1", "Service"),
            ("v1", "ResourceQuota"),
            ("v1", "Pod"),
            ("v1", "Binding"),
            ("apps/v1", "Deployment"),
            ("apps/v1", "ReplicaSet"),
            ("batch/v1", "Job"),
            ("networking.k8s.io/v1", "Ingress"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"),
            ("autoscaling/v1", "Scale"),
            ("coordination.k8s.io/v1", "Lease"),
            ("meta.k8s.io/v1", "DeleteOptions"),
        ] {
            let message = message_for(api_version, kind).expect(kind);
            assert_eq!(message.name, kind);
            walk(message, &mut seen);
        }
        assert!(seen.len() > 50, "{}", seen.len());
    }
}
