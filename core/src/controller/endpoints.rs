//! The EndpointSlice controller: the endpoints of each Service with a
//! selector, as `discovery.k8s.io/v1` EndpointSlices and as the legacy
//! `v1` Endpoints object older clients read.
//!
//! For a Service with a selector, the endpoints are the pods of its
//! namespace that match the selector, have a `status.podIP` and have not
//! finished. Each endpoint carries the conditions `ready` (pod Ready and not
//! terminating, or the Service publishes not-ready addresses), `serving`
//! (pod Ready) and `terminating`, the node name and a reference to the pod.
//! The Service's ports are resolved per pod (a named `targetPort` against
//! the pod's container ports; a port that does not resolve is left out for
//! that pod), and pods are grouped by the ports they resolve to: one slice
//! per group, named `<service>-<hash of the ports>`, labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`,
//! owned by the Service (the garbage collector removes them with it). A
//! Service without endpoints keeps one empty slice. Slices are not split
//! at 100 endpoints: one group is one slice whatever its size.
//!
//! The Endpoints object of the same name has one subset per group, with
//! ready pods in `addresses` and the others in `notReadyAddresses`;
//! terminating pods are left out unless the Service publishes not-ready
//! addresses. It is labelled `endpoints.kubernetes.io/managed-by` and
//! deleted when its Service is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::informer::revision_of;
use super::{util, Action, Cache, LoopContext, ReconcileError};
use crate::client::Client;

/// Label naming the Service of an EndpointSlice.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value of [`SLICE_MANAGED_BY_LABEL`] on the slices this loop manages.
pub const SLICE_MANAGER: &str = "endpointslice-controller.k8s.io";
/// Label naming the controller that manages an Endpoints object.
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
/// The value of [`ENDPOINTS_MANAGED_BY_LABEL`] on the Endpoints this loop
/// manages.
pub const ENDPOINTS_MANAGER: &str = "endpoint-controller";

const BY_SERVICE: &str = "service";
const BY_POD: &str = "pod";
const BY_NAMESPACE: &str = "namespace";
/// How long a reconcile waits for its own write to reach a cache.
const WRITE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct State {
    client: Client,
    services: Cache<Service>,
    slices: Cache<EndpointSlice>,
    endpoints: Cache<Endpoints>,
    pods: Cache<Pod>,
}

/// True if `selector` (a Service's, non-empty) selects `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn selector_of(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// Runs the EndpointSlice controller until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let services = ctx
        .informer::<Service>()
        .index(BY_NAMESPACE, |s: &Service| {
            s.metadata.namespace.clone().into_iter().collect()
        })
        .start(ctx.stop.clone(), util::enqueue_self(&queue));
    let q = queue.clone();
    let slices = ctx
        .informer::<EndpointSlice>()
        .index(BY_SERVICE, |s: &EndpointSlice| {
            service_of_slice(s).into_iter().collect()
        })
        .index(BY_POD, |s: &EndpointSlice| {
            s.endpoints
                .iter()
                .filter_map(|e| e.target_ref.as_ref())
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .map(|r| util::key(r.namespace.as_deref(), r.name.as_deref().unwrap_or("")))
                .collect()
        })
        .start(ctx.stop.clone(), move |s: &EndpointSlice| {
            if let Some(service) = service_of_slice(s) {
                q.add(service);
            }
        });
    let endpoints = util::watch_primary::<Endpoints>(&ctx, &queue);
    let q = queue.clone();
    let pod_services = services.clone();
    let pod_slices = slices.clone();
    let pods = ctx
        .informer::<Pod>()
        .index(BY_NAMESPACE, |p: &Pod| {
            p.metadata.namespace.clone().into_iter().collect()
        })
        .start(ctx.stop.clone(), move |pod: &Pod| {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
            for service in pod_services.by_index(BY_NAMESPACE, namespace) {
                if selector_of(&service).is_some_and(|s| selects(s, pod.metadata.labels.as_ref())) {
                    q.add(util::key(
                        Some(namespace),
                        service.metadata.name.as_deref().unwrap_or(""),
                    ));
                }
            }
            // Services that list the pod now (its labels may have changed).
            let pod_key = util::key(Some(namespace), pod.metadata.name.as_deref().unwrap_or(""));
            for slice in pod_slices.by_index(BY_POD, &pod_key) {
                if let Some(service) = service_of_slice(&slice) {
                    q.add(service);
                }
            }
        });
    // Act only on full caches: an Endpoints object must not be taken for
    // one whose Service is gone because Services were not listed yet.
    if !util::wait_ready(&ctx.stop, &[&services, &slices, &endpoints, &pods]).await {
        return;
    }
    let state = State {
        client: ctx.client.clone(),
        services,
        slices,
        endpoints,
        pods,
    };
    ctx.run("endpointslice", queue, move |key| {
        let state = state.clone();
        async move { reconcile(&state, &key).await }
    })
    .await;
}

/// `namespace/service` of a slice this loop manages.
fn service_of_slice(slice: &EndpointSlice) -> Option<String> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(SLICE_MANAGED_BY_LABEL).map(String::as_str) != Some(SLICE_MANAGER) {
        return None;
    }
    let service = labels.get(SERVICE_NAME_LABEL)?;
    Some(util::key(slice.metadata.namespace.as_deref(), service))
}

/// One resolved port: name, number, protocol.
type Port = (Option<String>, i32, String);

/// The Service's ports as `pod` serves them.
fn resolve_ports(service: &Service, pod: &Pod) -> Vec<Port> {
    let mut ports = Vec::new();
    for sp in service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
    {
        let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let number = match &sp.target_port {
            None => Some(sp.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => pod
                    .spec
                    .as_ref()
                    .into_iter()
                    .flat_map(|spec| spec.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| {
                        cp.name.as_deref() == Some(s.as_str())
                            && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                    })
                    .map(|cp| cp.container_port),
            },
        };
        if let Some(number) = number {
            ports.push((sp.name.clone(), number, protocol));
        }
    }
    ports
}

/// A short, stable name suffix for a set of ports (FNV-1a, base 36).
fn ports_suffix(ports: &[Port]) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for (name, number, protocol) in ports {
        let text = format!("{}:{number}:{protocol};", name.as_deref().unwrap_or(""));
        for b in text.bytes() {
            hash ^= b as u32;
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = String::new();
    for _ in 0..5 {
        out.push(alphabet[(hash % 36) as usize] as char);
        hash /= 36;
    }
    out
}

/// One pod as an endpoint.
struct Member {
    pod: Arc<Pod>,
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl Member {
    fn target_ref(&self) -> ObjectReference {
        ObjectReference {
            kind: Some("Pod".into()),
            namespace: self.pod.metadata.namespace.clone(),
            name: self.pod.metadata.name.clone(),
            uid: self.pod.metadata.uid.clone(),
            ..Default::default()
        }
    }

    fn node_name(&self) -> Option<String> {
        self.pod.spec.as_ref().and_then(|s| s.node_name.clone())
    }
}

/// The Service's endpoints, grouped by the ports their pods resolve.
fn groups(state: &State, service: &Service) -> BTreeMap<Vec<Port>, Vec<Member>> {
    let mut groups: BTreeMap<Vec<Port>, Vec<Member>> = BTreeMap::new();
    let Some(selector) = selector_of(service) else {
        return groups;
    };
    let namespace = service.metadata.namespace.as_deref().unwrap_or("");
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut pods = state.pods.by_index(BY_NAMESPACE, namespace);
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in pods {
        if !selects(selector, pod.metadata.labels.as_ref()) {
            continue;
        }
        let status = pod.status.as_ref();
        let Some(ip) = status
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let pod_ready = util::is_pod_ready(&pod);
        let member = Member {
            ip,
            ready: publish_not_ready || (pod_ready && !terminating),
            serving: pod_ready,
            terminating,
            pod: pod.clone(),
        };
        groups
            .entry(resolve_ports(service, &pod))
            .or_default()
            .push(member);
    }
    groups
}

async fn reconcile(state: &State, key: &str) -> Result<Action, ReconcileError> {
    let (namespace, name) = util::split_key(key);
    let namespace = namespace.unwrap_or("");
    let Some(service) = state.services.get(key) else {
        delete_endpoints(state, namespace, name).await?;
        return Ok(Action::Done);
    };
    if selector_of(&service).is_none() {
        return Ok(Action::Done);
    }
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let groups = groups(state, &service);
    sync_slices(state, &service, &groups).await?;
    sync_endpoints(state, &service, &groups, publish_not_ready).await?;
    Ok(Action::Done)
}

fn labels_for_slice(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(SLICE_MANAGED_BY_LABEL.into(), SLICE_MANAGER.into());
    labels
}

async fn sync_slices(
    state: &State,
    service: &Service,
    groups: &BTreeMap<Vec<Port>, Vec<Member>>,
) -> Result<(), ReconcileError> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("");
    let name = service.metadata.name.as_deref().unwrap_or("");
    let mut desired: Vec<EndpointSlice> = Vec::new();
    let labels = labels_for_slice(service);
    let owner = util::controller_reference(service);
    let mut build = |ports: &[Port], members: &[Member]| {
        desired.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{}", ports_suffix(ports))),
                namespace: Some(namespace.to_string()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: members
                .iter()
                .map(|m| Endpoint {
                    addresses: vec![m.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(m.ready),
                        serving: Some(m.serving),
                        terminating: Some(m.terminating),
                    }),
                    node_name: m.node_name(),
                    target_ref: Some(m.target_ref()),
                    ..Default::default()
                })
                .collect(),
            ports: (!ports.is_empty()).then(|| {
                ports
                    .iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name: name.clone(),
                        port: Some(*port),
                        protocol: Some(protocol.clone()),
                        app_protocol: None,
                    })
                    .collect()
            }),
        });
    };
    if groups.is_empty() {
        build(&[], &[]);
    }
    for (ports, members) in groups {
        build(ports, members);
    }
    let existing = state
        .slices
        .by_index(BY_SERVICE, &util::key(Some(namespace), name));
    for slice in &desired {
        let slice_name = slice.metadata.name.as_deref().unwrap_or("");
        let current = existing
            .iter()
            .find(|e| e.metadata.name.as_deref() == Some(slice_name));
        let written = match current {
            Some(current)
                if current.endpoints == slice.endpoints
                    && current.ports == slice.ports
                    && current.address_type == slice.address_type
                    && current.metadata.labels == slice.metadata.labels
                    && current.metadata.owner_references == slice.metadata.owner_references =>
            {
                continue
            }
            Some(current) => {
                let mut updated = slice.clone();
                updated.metadata = ObjectMeta {
                    labels: slice.metadata.labels.clone(),
                    owner_references: slice.metadata.owner_references.clone(),
                    ..current.metadata.clone()
                };
                state
                    .client
                    .replace(Some(namespace), slice_name, &updated)
                    .await?
            }
            None => state.client.create(Some(namespace), slice).await?,
        };
        state
            .slices
            .wait_for_revision(revision_of(&written.metadata), WRITE_WAIT)
            .await;
    }
    for slice in existing {
        let slice_name = slice.metadata.name.as_deref().unwrap_or("");
        if desired
            .iter()
            .any(|d| d.metadata.name.as_deref() == Some(slice_name))
        {
            continue;
        }
        match state
            .client
            .delete::<EndpointSlice>(Some(namespace), slice_name)
            .await
        {
            Ok(rev) => {
                state.slices.wait_for_revision(rev, WRITE_WAIT).await;
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn sync_endpoints(
    state: &State,
    service: &Service,
    groups: &BTreeMap<Vec<Port>, Vec<Member>>,
    publish_not_ready: bool,
) -> Result<(), ReconcileError> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("");
    let name = service.metadata.name.as_deref().unwrap_or("");
    let mut subsets = Vec::new();
    for (ports, members) in groups {
        let address = |m: &Member| EndpointAddress {
            ip: m.ip.clone(),
            node_name: m.node_name(),
            target_ref: Some(m.target_ref()),
            hostname: None,
        };
        let ready: Vec<EndpointAddress> = members
            .iter()
            .filter(|m| m.ready && (!m.terminating || publish_not_ready))
            .map(address)
            .collect();
        let not_ready: Vec<EndpointAddress> = members
            .iter()
            .filter(|m| !m.ready && !m.terminating)
            .map(address)
            .collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        subsets.push(EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then(|| {
                ports
                    .iter()
                    .map(|(name, port, protocol)| CorePort {
                        name: name.clone(),
                        port: *port,
                        protocol: Some(protocol.clone()),
                        app_protocol: None,
                    })
                    .collect()
            }),
        });
    }
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(ENDPOINTS_MANAGED_BY_LABEL.into(), ENDPOINTS_MANAGER.into());
    let current = state.endpoints.get(&util::key(Some(namespace), name));
    let written = match current {
        Some(current)
            if current.subsets == subsets && current.metadata.labels.as_ref() == Some(&labels) =>
        {
            return Ok(())
        }
        Some(current) => {
            let mut updated = (*current).clone();
            updated.subsets = subsets;
            updated.metadata.labels = Some(labels);
            state
                .client
                .replace(Some(namespace), name, &updated)
                .await?
        }
        None => {
            let created = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets,
            };
            state.client.create(Some(namespace), &created).await?
        }
    };
    state
        .endpoints
        .wait_for_revision(revision_of(&written.metadata), WRITE_WAIT)
        .await;
    Ok(())
}

/// Deletes the Endpoints this loop made for a Service that is gone.
async fn delete_endpoints(
    state: &State,
    namespace: &str,
    name: &str,
) -> Result<(), ReconcileError> {
    let Some(current) = state.endpoints.get(&util::key(Some(namespace), name)) else {
        return Ok(());
    };
    let managed = current
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ENDPOINTS_MANAGED_BY_LABEL))
        .is_some_and(|v| v == ENDPOINTS_MANAGER);
    if !managed {
        return Ok(());
    }
    let options = serde_json::json!({
        "preconditions": {"resourceVersion": current.metadata.resource_version},
    });
    match state
        .client
        .delete_with::<Endpoints>(Some(namespace), name, &options)
        .await
    {
        Ok(rev) => {
            state.endpoints.wait_for_revision(rev, WRITE_WAIT).await;
            Ok(())
        }
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, ServicePort, ServiceSpec};

    #[test]
    fn named_target_ports_resolve_against_container_ports() {
        let service = Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![
                    ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        target_port: Some(IntOrString::String("web".into())),
                        ..Default::default()
                    },
                    ServicePort {
                        name: Some("metrics".into()),
                        port: 9090,
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("web".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            resolve_ports(&service, &pod),
            vec![
                (Some("http".into()), 8080, "TCP".into()),
                (Some("metrics".into()), 9090, "TCP".into()),
            ]
        );
        let bare = Pod::default();
        assert_eq!(
            resolve_ports(&service, &bare),
            vec![(Some("metrics".into()), 9090, "TCP".into())]
        );
        assert_ne!(
            ports_suffix(&resolve_ports(&service, &pod)),
            ports_suffix(&resolve_ports(&service, &bare))
        );
    }
}
