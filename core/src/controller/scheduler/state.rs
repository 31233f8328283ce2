//! The scheduler's view of the cluster: one [`NodeInfo`] per node with the
//! running totals of what is bound (or assumed bound) to it, kept
//! incrementally from the pod and node caches, so a scheduling decision
//! costs O(nodes) and never walks every pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::controller::util;
use crate::quantity::{self, Milli};

/// CPU requested for scoring by a pod that requests none (millicores).
pub const DEFAULT_CPU_REQUEST: Milli = 100;
/// Memory requested for scoring by a pod that requests none (thousandths
/// of a byte, as [`quantity::parse`] returns).
pub const DEFAULT_MEMORY_REQUEST: Milli = 200 * 1024 * 1024 * 1000;

/// Amounts of resources, in thousandths (see [`crate::quantity`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU, in millicores.
    pub cpu: Milli,
    /// Memory, in thousandths of a byte.
    pub memory: Milli,
    /// Every other resource (`ephemeral-storage`, extended resources), by
    /// name. Usually empty.
    pub scalar: Vec<(String, Milli)>,
}

impl Resources {
    /// Reads a resource list (requests, limits, allocatable); `pods` is
    /// left out (it is counted apart).
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut out = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            let value = quantity::parse(&q.0).unwrap_or(0);
            match name.as_str() {
                "cpu" => out.cpu = value,
                "memory" => out.memory = value,
                "pods" => {}
                other => out.set_scalar(other, value),
            }
        }
        out
    }

    /// The amount of the scalar resource `name`.
    pub fn scalar(&self, name: &str) -> Milli {
        self.scalar
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }

    fn set_scalar(&mut self, name: &str, value: Milli) {
        match self.scalar.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.scalar.push((name.to_string(), value)),
        }
    }

    /// Adds `other` (`sign` 1) or takes it away (`sign` -1).
    pub fn add(&mut self, other: &Resources, sign: Milli) {
        self.cpu += sign * other.cpu;
        self.memory += sign * other.memory;
        for (name, value) in &other.scalar {
            let current = self.scalar(name);
            self.set_scalar(name, current + sign * value);
        }
    }

    /// The larger of each resource.
    pub fn max(&mut self, other: &Resources) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        for (name, value) in &other.scalar {
            let current = self.scalar(name);
            self.set_scalar(name, current.max(*value));
        }
    }
}

/// What a container requests: its requests, else its limits (as API
/// defaulting would have copied them).
fn container_requests(container: &Container) -> Resources {
    let Some(resources) = container.resources.as_ref() else {
        return Resources::default();
    };
    let mut out = Resources::from_list(resources.limits.as_ref());
    let requests = Resources::from_list(resources.requests.as_ref());
    for (name, q) in resources.requests.iter().flatten() {
        match name.as_str() {
            "cpu" => out.cpu = requests.cpu,
            "memory" => out.memory = requests.memory,
            "pods" => {}
            other => out.set_scalar(other, quantity::parse(&q.0).unwrap_or(0)),
        }
    }
    out
}

/// What a pod requests, as kube-scheduler computes it: the sum of its
/// containers (and restartable init containers, i.e. sidecars), at least
/// the largest plain init container (with the sidecars started before it),
/// plus the pod overhead.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c), 1);
    }
    let mut sidecars = Resources::default();
    let mut init = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r, 1);
        } else {
            let mut with_sidecars = r;
            with_sidecars.add(&sidecars, 1);
            init.max(&with_sidecars);
        }
    }
    sum.add(&sidecars, 1);
    sum.max(&init);
    sum.add(&Resources::from_list(spec.overhead.as_ref()), 1);
    sum
}

/// The requests used for scoring: CPU and memory never count as zero, so
/// pods without requests still spread.
pub fn non_zero(requests: &Resources) -> Resources {
    Resources {
        cpu: if requests.cpu == 0 {
            DEFAULT_CPU_REQUEST
        } else {
            requests.cpu
        },
        memory: if requests.memory == 0 {
            DEFAULT_MEMORY_REQUEST
        } else {
            requests.memory
        },
        scalar: Vec::new(),
    }
}

/// A host port a pod occupies on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The host address (`0.0.0.0` for all).
    pub ip: String,
    /// The port number.
    pub port: i32,
}

impl HostPort {
    /// True if the two cannot both be bound on one node.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// The host ports of a pod's containers.
pub fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| HostPort {
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            ip: p
                .host_ip
                .clone()
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into()),
            port: p.host_port.unwrap_or(0),
        })
        .collect()
}

/// The facts about a node the filters read, parsed once per node update.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node object.
    pub node: Arc<Node>,
    /// status.allocatable (without `pods`).
    pub allocatable: Resources,
    /// status.allocatable `pods` (unlimited when absent).
    pub max_pods: i64,
    /// The Ready condition is True.
    pub ready: bool,
    /// spec.unschedulable.
    pub unschedulable: bool,
    /// A hash of everything that decides what fits on the node; a change
    /// may make waiting pods schedulable.
    pub signature: u64,
}

impl NodeFacts {
    /// Reads a node.
    pub fn new(node: Arc<Node>) -> NodeFacts {
        let status = node.status.as_ref();
        let allocatable_list = status.and_then(|s| s.allocatable.as_ref());
        let allocatable = Resources::from_list(allocatable_list);
        let max_pods = allocatable_list
            .and_then(|l| l.get("pods"))
            .and_then(|q| quantity::parse(&q.0))
            .map_or(i64::MAX, |p| (p / 1000) as i64);
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let spec = node.spec.as_ref();
        let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        format!("{allocatable:?}").hash(&mut hasher);
        max_pods.hash(&mut hasher);
        ready.hash(&mut hasher);
        unschedulable.hash(&mut hasher);
        node.metadata.labels.hash(&mut hasher);
        for t in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
            (&t.key, &t.value, &t.effect).hash(&mut hasher);
        }
        NodeFacts {
            node,
            allocatable,
            max_pods,
            ready,
            unschedulable,
            signature: hasher.finish(),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// The node's label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }
}

/// One node and what is bound (or assumed bound) to it.
#[derive(Debug, Default)]
pub struct NodeInfo {
    /// The node, while it exists (pods may outlive it in the cache).
    pub facts: Option<NodeFacts>,
    /// Sum of the requests of its pods.
    pub requested: Resources,
    /// Sum of the scoring requests ([`non_zero`]) of its pods.
    pub non_zero: Resources,
    /// Number of its pods.
    pub pods: i64,
    /// Host ports in use (one entry per pod port).
    pub ports: Vec<HostPort>,
    /// Its pods, by controller uid.
    pub owners: HashMap<String, u32>,
}

/// A pod the scheduler accounts on a node.
#[derive(Debug, Clone)]
pub struct PodRecord {
    /// The pod as last seen.
    pub pod: Arc<Pod>,
    /// The node it is bound (or assumed bound) to.
    pub node: String,
    /// Set while the binding is not yet seen in the cache: when it was made.
    pub assumed: Option<Instant>,
    /// Its requests.
    pub requests: Resources,
    /// Its scoring requests.
    pub non_zero: Resources,
    /// Its host ports.
    pub ports: Vec<HostPort>,
    /// Its controller's uid.
    pub owner: Option<String>,
}

impl PodRecord {
    /// The record of `pod` on `node`.
    pub fn new(pod: Arc<Pod>, node: String, assumed: Option<Instant>) -> PodRecord {
        let spec = pod.spec.as_ref();
        let requests = spec.map(pod_requests).unwrap_or_default();
        PodRecord {
            non_zero: non_zero(&requests),
            requests,
            ports: spec.map(host_ports).unwrap_or_default(),
            owner: util::controller_of(&pod.metadata).map(|o| o.uid.clone()),
            node,
            assumed,
            pod,
        }
    }

    /// True if the pod has required anti-affinity terms (which constrain
    /// where later pods may go).
    pub fn has_required_anti_affinity(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty())
    }
}

/// Everything the scheduler knows, under one lock.
#[derive(Debug, Default)]
pub struct State {
    /// Nodes (and node names pods are bound to), by name.
    pub nodes: HashMap<String, NodeInfo>,
    /// Names of the nodes that exist, in a stable order.
    pub order: Vec<String>,
    /// Where the next scheduling pass starts in `order` (passes may stop
    /// early once enough nodes fit, so each starts where the last ended).
    pub next_start: usize,
    /// Accounted pods by `namespace/name`.
    pub records: HashMap<String, PodRecord>,
    /// Accounted pods that have required anti-affinity terms.
    pub anti_affinity_pods: HashSet<String>,
    /// Pods that did not fit, waiting for the cluster to change.
    pub unschedulable: HashSet<String>,
    /// Failed scheduling attempts per pod, for the back-off.
    pub attempts: HashMap<String, u32>,
    /// Number of nodes labelled with a zone.
    pub zoned_nodes: usize,
}

/// The zone label of nodes.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The hostname label of nodes.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

impl State {
    /// Records the node `name` as it now is (`None`: deleted). True when
    /// the change may let waiting pods fit (a new node, or a different
    /// [`NodeFacts::signature`]).
    pub fn set_node(&mut self, name: &str, node: Option<Arc<Node>>) -> bool {
        match node {
            Some(node) => {
                let facts = NodeFacts::new(node);
                let info = self.nodes.entry(name.to_string()).or_default();
                let changed = info
                    .facts
                    .as_ref()
                    .is_none_or(|old| old.signature != facts.signature);
                let was_zoned = info
                    .facts
                    .as_ref()
                    .is_some_and(|f| f.label(ZONE_LABEL).is_some());
                let is_zoned = facts.label(ZONE_LABEL).is_some();
                if info.facts.is_none() {
                    self.order.push(name.to_string());
                }
                info.facts = Some(facts);
                self.zoned_nodes =
                    self.zoned_nodes + usize::from(is_zoned) - usize::from(was_zoned);
                changed
            }
            None => {
                if let Some(info) = self.nodes.get_mut(name) {
                    if let Some(old) = info.facts.take() {
                        if old.label(ZONE_LABEL).is_some() {
                            self.zoned_nodes -= 1;
                        }
                        self.order.retain(|n| n != name);
                    }
                    if info.pods == 0 {
                        self.nodes.remove(name);
                    }
                }
                false
            }
        }
    }

    /// Accounts a pod on its node (replacing what was accounted for it).
    pub fn add(&mut self, key: &str, record: PodRecord) {
        self.remove(key);
        let info = self.nodes.entry(record.node.clone()).or_default();
        info.requested.add(&record.requests, 1);
        info.non_zero.add(&record.non_zero, 1);
        info.pods += 1;
        info.ports.extend(record.ports.iter().cloned());
        if let Some(owner) = &record.owner {
            *info.owners.entry(owner.clone()).or_default() += 1;
        }
        if record.has_required_anti_affinity() {
            self.anti_affinity_pods.insert(key.to_string());
        }
        self.records.insert(key.to_string(), record);
    }

    /// Takes a pod off its node; returns what was accounted.
    pub fn remove(&mut self, key: &str) -> Option<PodRecord> {
        let record = self.records.remove(key)?;
        self.anti_affinity_pods.remove(key);
        if let Some(info) = self.nodes.get_mut(&record.node) {
            info.requested.add(&record.requests, -1);
            info.non_zero.add(&record.non_zero, -1);
            info.pods -= 1;
            for port in &record.ports {
                if let Some(i) = info.ports.iter().position(|p| p == port) {
                    info.ports.swap_remove(i);
                }
            }
            if let Some(owner) = &record.owner {
                if let Some(count) = info.owners.get_mut(owner) {
                    *count -= 1;
                    if *count == 0 {
                        info.owners.remove(owner);
                    }
                }
            }
            if info.pods == 0 && info.facts.is_none() {
                self.nodes.remove(&record.node);
            }
        }
        Some(record)
    }

    /// The node facts of `name`, if the node exists.
    pub fn facts(&self, name: &str) -> Option<&NodeFacts> {
        self.nodes.get(name).and_then(|i| i.facts.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ResourceRequirements};

    fn container(cpu: &str, memory: &str) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity(cpu.into())),
                    ("memory".to_string(), Quantity(memory.into())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_sum_containers_and_take_the_largest_init_container() {
        let spec = PodSpec {
            containers: vec![container("100m", "64Mi"), container("200m", "64Mi")],
            init_containers: Some(vec![container("1", "1Mi")]),
            ..Default::default()
        };
        let r = pod_requests(&spec);
        assert_eq!(r.cpu, 1000);
        assert_eq!(r.memory, quantity::parse("128Mi").unwrap());
        let n = non_zero(&Resources::default());
        assert_eq!(n.cpu, 100);
        assert_eq!(n.memory, quantity::parse("200Mi").unwrap());
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("2".into())),
                    ("nvidia.com/gpu".to_string(), Quantity("1".into())),
                ])),
                requests: Some(BTreeMap::from([("cpu".to_string(), Quantity("1".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = pod_requests(&PodSpec {
            containers: vec![c],
            ..Default::default()
        });
        assert_eq!(r.cpu, 1000);
        assert_eq!(r.scalar("nvidia.com/gpu"), 1000);
    }

    #[test]
    fn accounting_adds_and_removes_exactly() {
        let mut state = State::default();
        let mut spec = PodSpec {
            containers: vec![container("500m", "1Gi")],
            ..Default::default()
        };
        spec.containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(8080),
            ..Default::default()
        }]);
        let pod = Arc::new(Pod {
            spec: Some(spec),
            ..Default::default()
        });
        state.add("ns/a", PodRecord::new(pod.clone(), "n1".into(), None));
        state.add("ns/b", PodRecord::new(pod, "n1".into(), None));
        let info = &state.nodes["n1"];
        assert_eq!(info.requested.cpu, 1000);
        assert_eq!(info.pods, 2);
        assert_eq!(info.ports.len(), 2);
        state.remove("ns/a");
        assert_eq!(state.nodes["n1"].requested.cpu, 500);
        state.remove("ns/b");
        assert!(
            !state.nodes.contains_key("n1"),
            "a node that does not exist and holds no pods is forgotten"
        );
    }
}
