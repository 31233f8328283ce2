//! The filters: may this pod go to this node? Each failing filter gives a
//! reason worded as kube-scheduler words it, so "0/3 nodes are available:
//! ..." messages read the same.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::state::{
    host_ports, non_zero, pod_requests, HostPort, NodeFacts, NodeInfo, Resources, State,
};
use crate::controller::util;

/// Why a node cannot take a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// spec.unschedulable (cordoned).
    Unschedulable,
    /// An untolerated NoSchedule/NoExecute taint, `{key: value}`; a node
    /// that is not Ready counts as tainted `node.kubernetes.io/not-ready`.
    Taint(String),
    /// nodeSelector or required node affinity.
    NodeAffinity,
    /// A host port is taken.
    Ports,
    /// Not enough of these resources (`cpu`, `memory`, `pods`, ...).
    Insufficient(Vec<String>),
    /// Required pod affinity.
    PodAffinity,
    /// Required pod anti-affinity of the pod.
    PodAntiAffinity,
    /// Required anti-affinity of pods already there.
    ExistingAntiAffinity,
    /// A DoNotSchedule topology spread constraint.
    TopologySpread,
}

impl Unfit {
    /// The reasons as kube-scheduler words them (one per resource for
    /// [`Unfit::Insufficient`]).
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Unfit::Unschedulable => vec!["node(s) were unschedulable".into()],
            Unfit::Taint(taint) => vec![format!("node(s) had untolerated taint {taint}")],
            Unfit::NodeAffinity => {
                vec!["node(s) didn't match Pod's node affinity/selector".into()]
            }
            Unfit::Ports => {
                vec!["node(s) didn't have free ports for the requested pod ports".into()]
            }
            Unfit::Insufficient(resources) => resources
                .iter()
                .map(|r| match r.as_str() {
                    "pods" => "Too many pods".to_string(),
                    other => format!("Insufficient {other}"),
                })
                .collect(),
            Unfit::PodAffinity => vec!["node(s) didn't match pod affinity rules".into()],
            Unfit::PodAntiAffinity => vec!["node(s) didn't match pod anti-affinity rules".into()],
            Unfit::ExistingAntiAffinity => {
                vec!["node(s) didn't satisfy existing pods anti-affinity rules".into()]
            }
            Unfit::TopologySpread => {
                vec!["node(s) didn't match pod topology spread constraints".into()]
            }
        }
    }
}

/// The "0/N nodes are available: ..." message of a pod no node took.
pub fn unschedulable_message(nodes: usize, failures: &HashMap<String, usize>) -> String {
    if nodes == 0 {
        return "0/0 nodes are available: no nodes available to schedule pods.".into();
    }
    let mut reasons: Vec<String> = failures
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    reasons.sort_by(|a, b| {
        let key = |s: &str| {
            s.split_once(' ')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default()
        };
        key(a).cmp(&key(b))
    });
    format!("0/{nodes} nodes are available: {}.", reasons.join(", "))
}

/// True if `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or("");
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return operator == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match operator {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// The first NoSchedule/NoExecute taint of `taints` none of `tolerations`
/// tolerates.
pub fn untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

fn taint_text(taint: &Taint) -> String {
    format!(
        "{{{}: {}}}",
        taint.key,
        taint.value.as_deref().unwrap_or("")
    )
}

/// True if a node selector requirement holds for the value `get` gives.
fn requirement_matches<'a>(
    requirement: &NodeSelectorRequirement,
    get: impl Fn(&str) -> Option<&'a str>,
) -> bool {
    let values = requirement.values.as_deref().unwrap_or(&[]);
    let value = get(&requirement.key);
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            match (v.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(bound)) if op == "Gt" => v > bound,
                (Ok(v), Ok(bound)) => v < bound,
                _ => false,
            }
        }
        _ => false,
    }
}

/// True if a node selector term (expressions on labels, fields on
/// `metadata.name`) matches the node. An empty term matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeFacts) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_matches(r, |key| node.label(key)))
        && fields
            .iter()
            .all(|r| requirement_matches(r, |key| (key == "metadata.name").then(|| node.name())))
}

/// True if the node satisfies the pod's nodeSelector and required node
/// affinity.
pub fn node_affinity_matches(pod: &Pod, node: &NodeFacts) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.label(k) == Some(v.as_str()));
    if !selector_ok {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

/// Which namespaces a pod affinity term covers.
struct Namespaces {
    names: HashSet<String>,
    selector: Option<LabelSelector>,
    /// Memo of the selector's answer per namespace.
    memo: HashMap<String, bool>,
}

impl Namespaces {
    /// The namespaces of `term`, written in a pod of namespace `own`.
    fn of(term: &PodAffinityTerm, own: &str) -> Namespaces {
        let mut names: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        if names.is_empty() && term.namespace_selector.is_none() {
            names.insert(own.to_string());
        }
        Namespaces {
            names,
            selector: term.namespace_selector.clone(),
            memo: HashMap::new(),
        }
    }

    fn contains(&mut self, namespace: &str, labels: &NamespaceLabels<'_>) -> bool {
        if self.names.contains(namespace) {
            return true;
        }
        let Some(selector) = &self.selector else {
            return false;
        };
        if let Some(answer) = self.memo.get(namespace) {
            return *answer;
        }
        let answer = util::selector_matches(Some(selector), labels(namespace).as_ref());
        self.memo.insert(namespace.to_string(), answer);
        answer
    }
}

/// Looks up the labels of a namespace.
pub type NamespaceLabels<'a> = dyn Fn(&str) -> Option<BTreeMap<String, String>> + 'a;

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// True if `term`, written in a pod of namespace `own`, selects `other`.
fn term_selects(
    term: &PodAffinityTerm,
    namespaces: &mut Namespaces,
    other: &Pod,
    labels: &NamespaceLabels<'_>,
) -> bool {
    namespaces.contains(namespace_of(other), labels)
        && util::selector_matches(term.label_selector.as_ref(), other.metadata.labels.as_ref())
}

/// The topology domains (values of one node label) holding a pod that one
/// term selects.
#[derive(Debug, Default)]
pub struct TermDomains {
    /// The node label.
    pub key: String,
    /// Its values where a selected pod runs.
    pub values: HashSet<String>,
}

/// One topology spread constraint with its current counts.
#[derive(Debug)]
pub struct Spread {
    /// The node label of the domains.
    pub key: String,
    /// maxSkew.
    pub max_skew: i64,
    /// whenUnsatisfiable: DoNotSchedule.
    pub hard: bool,
    /// Matching pods per domain (every eligible domain present).
    pub counts: HashMap<String, i64>,
    /// The smallest count.
    pub min: i64,
    /// 1 if the pod matches its own selector.
    pub self_match: i64,
}

/// What the filters and scores need to know about the pod being
/// scheduled, computed once per attempt.
pub struct PodContext {
    /// The pod.
    pub pod: Arc<Pod>,
    /// Its requests.
    pub requests: Resources,
    /// Its scoring requests.
    pub non_zero: Resources,
    /// Its host ports.
    pub ports: Vec<HostPort>,
    /// Its tolerations.
    pub tolerations: Vec<Toleration>,
    /// Its controller's uid.
    pub owner: Option<String>,
    /// Per required affinity term: where selected pods run.
    pub affinity: Vec<TermDomains>,
    /// No pod matches any affinity term but the pod matches them all
    /// itself (the first pod of a group may go anywhere).
    pub affinity_self: bool,
    /// Per required anti-affinity term: where selected pods run.
    pub anti_affinity: Vec<TermDomains>,
    /// Domains `(label, value)` that existing pods' required
    /// anti-affinity closes to this pod.
    pub existing_anti: Vec<(String, String)>,
    /// Preferred (anti-)affinity: weight per (label, value).
    pub preferred: Vec<(String, HashMap<String, i64>)>,
    /// Explicit topology spread constraints.
    pub spread: Vec<Spread>,
}

impl PodContext {
    /// Reads the pod, and when it has inter-pod rules or spread
    /// constraints, walks the accounted pods once to find their domains.
    pub fn new(pod: Arc<Pod>, state: &State, namespace_labels: &NamespaceLabels<'_>) -> PodContext {
        let spec = pod.spec.clone().unwrap_or_default();
        let requests = pod_requests(&spec);
        let mut ctx = PodContext {
            non_zero: non_zero(&requests),
            requests,
            ports: host_ports(&spec),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            owner: util::controller_of(&pod.metadata).map(|o| o.uid.clone()),
            affinity: Vec::new(),
            affinity_self: false,
            anti_affinity: Vec::new(),
            existing_anti: Vec::new(),
            preferred: Vec::new(),
            spread: Vec::new(),
            pod: pod.clone(),
        };
        let own_ns = namespace_of(&pod).to_string();
        let domain_of = |node: &str, key: &str| -> Option<String> {
            state
                .facts(node)
                .and_then(|f| f.label(key))
                .map(str::to_string)
        };
        let affinity = spec.affinity.as_ref();
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required: Vec<&PodAffinityTerm> = pod_affinity
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .collect();
        let required_anti: Vec<&PodAffinityTerm> = pod_anti
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .collect();
        let preferred: Vec<(&PodAffinityTerm, i64)> = pod_affinity
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|w| (&w.pod_affinity_term, i64::from(w.weight)))
            .chain(
                pod_anti
                    .and_then(|a| {
                        a.preferred_during_scheduling_ignored_during_execution
                            .as_ref()
                    })
                    .into_iter()
                    .flatten()
                    .map(|w| (&w.pod_affinity_term, -i64::from(w.weight))),
            )
            .collect();
        // The pod's own terms against every accounted pod.
        if !required.is_empty() || !required_anti.is_empty() || !preferred.is_empty() {
            let walk = |terms: &[&PodAffinityTerm], out: &mut Vec<TermDomains>| {
                for term in terms {
                    let mut namespaces = Namespaces::of(term, &own_ns);
                    let mut domains = TermDomains {
                        key: term.topology_key.clone(),
                        values: HashSet::new(),
                    };
                    for record in state.records.values() {
                        if term_selects(term, &mut namespaces, &record.pod, namespace_labels) {
                            if let Some(v) = domain_of(&record.node, &term.topology_key) {
                                domains.values.insert(v);
                            }
                        }
                    }
                    out.push(domains);
                }
            };
            walk(&required, &mut ctx.affinity);
            walk(&required_anti, &mut ctx.anti_affinity);
            let mut scored = Vec::new();
            let terms: Vec<&PodAffinityTerm> = preferred.iter().map(|(t, _)| *t).collect();
            for (i, term) in terms.iter().enumerate() {
                let weight = preferred[i].1;
                let mut namespaces = Namespaces::of(term, &own_ns);
                let mut weights: HashMap<String, i64> = HashMap::new();
                for record in state.records.values() {
                    if term_selects(term, &mut namespaces, &record.pod, namespace_labels) {
                        if let Some(v) = domain_of(&record.node, &term.topology_key) {
                            *weights.entry(v).or_default() += weight;
                        }
                    }
                }
                scored.push((term.topology_key.clone(), weights));
            }
            ctx.preferred = scored;
            if !required.is_empty() && ctx.affinity.iter().all(|d| d.values.is_empty()) {
                ctx.affinity_self = required.iter().all(|term| {
                    let mut namespaces = Namespaces::of(term, &own_ns);
                    term_selects(term, &mut namespaces, &pod, namespace_labels)
                });
            }
        }
        // Existing pods' required anti-affinity against this pod.
        for key in &state.anti_affinity_pods {
            let Some(record) = state.records.get(key) else {
                continue;
            };
            let terms = record
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                });
            for term in terms.into_iter().flatten() {
                let mut namespaces = Namespaces::of(term, namespace_of(&record.pod));
                if term_selects(term, &mut namespaces, &pod, namespace_labels) {
                    if let Some(v) = domain_of(&record.node, &term.topology_key) {
                        ctx.existing_anti.push((term.topology_key.clone(), v));
                    }
                }
            }
        }
        // Topology spread constraints.
        for constraint in spec.topology_spread_constraints.iter().flatten() {
            let mut counts: HashMap<String, i64> = HashMap::new();
            let mut eligible: HashSet<&str> = HashSet::new();
            for name in &state.order {
                let Some(facts) = state.facts(name) else {
                    continue;
                };
                let honour_affinity = constraint.node_affinity_policy.as_deref() != Some("Ignore");
                if honour_affinity && !node_affinity_matches(&pod, facts) {
                    continue;
                }
                if constraint.node_taints_policy.as_deref() == Some("Honor") {
                    let taints = facts.node.spec.as_ref().and_then(|s| s.taints.as_deref());
                    if untolerated(taints.unwrap_or(&[]), &ctx.tolerations).is_some() {
                        continue;
                    }
                }
                if let Some(v) = facts.label(&constraint.topology_key) {
                    counts.entry(v.to_string()).or_default();
                    eligible.insert(name.as_str());
                }
            }
            let selector = constraint.label_selector.as_ref();
            for record in state.records.values() {
                if namespace_of(&record.pod) != own_ns
                    || !eligible.contains(record.node.as_str())
                    || !util::selector_matches(selector, record.pod.metadata.labels.as_ref())
                {
                    continue;
                }
                if let Some(v) = domain_of(&record.node, &constraint.topology_key) {
                    *counts.entry(v).or_default() += 1;
                }
            }
            let min = counts.values().copied().min().unwrap_or(0);
            ctx.spread.push(Spread {
                key: constraint.topology_key.clone(),
                max_skew: i64::from(constraint.max_skew.max(1)),
                hard: constraint.when_unsatisfiable != "ScheduleAnyway",
                counts,
                min,
                self_match: i64::from(util::selector_matches(
                    selector,
                    pod.metadata.labels.as_ref(),
                )),
            });
        }
        ctx
    }

    /// Runs every filter; the first that fails says why.
    pub fn check(&self, info: &NodeInfo) -> Result<(), Unfit> {
        let Some(node) = info.facts.as_ref() else {
            return Err(Unfit::NodeAffinity);
        };
        let taints = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[]);
        if node.unschedulable {
            let cordon = Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            };
            if !self.tolerations.iter().any(|t| tolerates(t, &cordon)) {
                return Err(Unfit::Unschedulable);
            }
        }
        if !node.ready {
            let not_ready = Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            };
            if !self.tolerations.iter().any(|t| tolerates(t, &not_ready)) {
                return Err(Unfit::Taint(taint_text(&not_ready)));
            }
        }
        if !node_affinity_matches(&self.pod, node) {
            return Err(Unfit::NodeAffinity);
        }
        if let Some(taint) = untolerated(taints, &self.tolerations) {
            return Err(Unfit::Taint(taint_text(taint)));
        }
        if self
            .ports
            .iter()
            .any(|p| info.ports.iter().any(|used| used.conflicts(p)))
        {
            return Err(Unfit::Ports);
        }
        self.check_resources(info, node)?;
        self.check_inter_pod(node)?;
        self.check_spread(node)
    }

    fn check_resources(&self, info: &NodeInfo, node: &NodeFacts) -> Result<(), Unfit> {
        let mut short = Vec::new();
        if info.pods + 1 > node.max_pods {
            short.push("pods".to_string());
        }
        let (want, used, have) = (&self.requests, &info.requested, &node.allocatable);
        if want.cpu > 0 && used.cpu + want.cpu > have.cpu {
            short.push("cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > have.memory {
            short.push("memory".into());
        }
        for (name, amount) in &want.scalar {
            if *amount > 0 && used.scalar(name) + amount > have.scalar(name) {
                short.push(name.clone());
            }
        }
        if short.is_empty() {
            Ok(())
        } else {
            Err(Unfit::Insufficient(short))
        }
    }

    fn check_inter_pod(&self, node: &NodeFacts) -> Result<(), Unfit> {
        if !self.affinity.is_empty() {
            let satisfied = if self.affinity_self {
                self.affinity.iter().all(|d| node.label(&d.key).is_some())
            } else {
                self.affinity
                    .iter()
                    .all(|d| node.label(&d.key).is_some_and(|v| d.values.contains(v)))
            };
            if !satisfied {
                return Err(Unfit::PodAffinity);
            }
        }
        if self
            .anti_affinity
            .iter()
            .any(|d| node.label(&d.key).is_some_and(|v| d.values.contains(v)))
        {
            return Err(Unfit::PodAntiAffinity);
        }
        if self
            .existing_anti
            .iter()
            .any(|(key, value)| node.label(key) == Some(value.as_str()))
        {
            return Err(Unfit::ExistingAntiAffinity);
        }
        Ok(())
    }

    fn check_spread(&self, node: &NodeFacts) -> Result<(), Unfit> {
        for spread in self.spread.iter().filter(|s| s.hard) {
            let Some(value) = node.label(&spread.key) else {
                return Err(Unfit::TopologySpread);
            };
            let count = spread.counts.get(value).copied().unwrap_or(0);
            if count + spread.self_match - spread.min > spread.max_skew {
                return Err(Unfit::TopologySpread);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::controller::scheduler::state::PodRecord;
    use k8s_openapi::api::core::v1::{
        Affinity, Container, Node, NodeAffinity, NodeCondition, NodeSelector, NodeSpec, NodeStatus,
        PodAntiAffinity, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A Ready node with 2 CPUs and 4Gi of memory.
    pub fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert("kubernetes.io/hostname".into(), name.into());
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(all),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("2".into())),
                    ("memory".to_string(), Quantity("4Gi".into())),
                    ("pods".to_string(), Quantity("110".into())),
                ])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// A pod in `default` requesting `cpu`.
    pub fn pod(name: &str, cpu: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn state_with(nodes: &[Node]) -> State {
        let mut state = State::default();
        for n in nodes {
            state.set_node(
                n.metadata.name.as_deref().unwrap(),
                Some(Arc::new(n.clone())),
            );
        }
        state
    }

    fn no_labels(_: &str) -> Option<BTreeMap<String, String>> {
        None
    }

    fn check(state: &State, pod: &Pod, node: &str) -> Result<(), Unfit> {
        let ctx = PodContext::new(Arc::new(pod.clone()), state, &no_labels);
        ctx.check(&state.nodes[node])
    }

    #[test]
    fn resources_count_what_is_already_bound() {
        let mut state = state_with(&[node("n1", &[])]);
        assert_eq!(check(&state, &pod("a", "1500m", &[]), "n1"), Ok(()));
        state.add(
            "default/a",
            PodRecord::new(Arc::new(pod("a", "1500m", &[])), "n1".into(), None),
        );
        assert_eq!(
            check(&state, &pod("b", "1", &[]), "n1"),
            Err(Unfit::Insufficient(vec!["cpu".into()]))
        );
        assert_eq!(check(&state, &pod("c", "500m", &[]), "n1"), Ok(()));
    }

    #[test]
    fn taints_need_tolerations() {
        let mut n = node("n1", &[]);
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let state = state_with(&[n]);
        let mut p = pod("a", "100m", &[]);
        assert_eq!(
            check(&state, &p, "n1"),
            Err(Unfit::Taint("{dedicated: gpu}".into()))
        );
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("gpu".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert_eq!(check(&state, &p, "n1"), Ok(()));
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("cpu".into()),
            ..Default::default()
        }]);
        assert!(check(&state, &p, "n1").is_err());
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(
            check(&state, &p, "n1"),
            Ok(()),
            "empty key + Exists tolerates all"
        );
    }

    #[test]
    fn not_ready_and_cordoned_nodes_are_skipped() {
        let mut n = node("n1", &[]);
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        let mut c = node("n2", &[]);
        c.spec.as_mut().unwrap().unschedulable = Some(true);
        let state = state_with(&[n, c]);
        let p = pod("a", "100m", &[]);
        assert_eq!(
            check(&state, &p, "n1"),
            Err(Unfit::Taint("{node.kubernetes.io/not-ready: }".into()))
        );
        assert_eq!(check(&state, &p, "n2"), Err(Unfit::Unschedulable));
    }

    #[test]
    fn node_selector_and_affinity_expressions() {
        let state = state_with(&[
            node("n1", &[("disk", "ssd"), ("gen", "5")]),
            node("n2", &[("disk", "hdd"), ("gen", "3")]),
        ]);
        let mut p = pod("a", "100m", &[]);
        p.spec.as_mut().unwrap().node_selector =
            Some(BTreeMap::from([("disk".to_string(), "ssd".to_string())]));
        assert_eq!(check(&state, &p, "n1"), Ok(()));
        assert_eq!(check(&state, &p, "n2"), Err(Unfit::NodeAffinity));

        let term = |key: &str, op: &str, values: &[&str]| NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_fields: None,
        };
        let with_terms = |terms: Vec<NodeSelectorTerm>| {
            let mut p = pod("a", "100m", &[]);
            p.spec.as_mut().unwrap().affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            p
        };
        let gt = with_terms(vec![term("gen", "Gt", &["4"])]);
        assert_eq!(check(&state, &gt, "n1"), Ok(()));
        assert!(check(&state, &gt, "n2").is_err());
        let not_in = with_terms(vec![term("disk", "NotIn", &["ssd"])]);
        assert!(check(&state, &not_in, "n1").is_err());
        assert_eq!(check(&state, &not_in, "n2"), Ok(()));
        let missing = with_terms(vec![term("zone", "DoesNotExist", &[])]);
        assert_eq!(check(&state, &missing, "n1"), Ok(()));
        let or = with_terms(vec![
            term("gen", "Lt", &["4"]),
            term("disk", "In", &["ssd"]),
        ]);
        assert_eq!(check(&state, &or, "n1"), Ok(()));
        assert_eq!(check(&state, &or, "n2"), Ok(()));
        let by_name = with_terms(vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec!["n2".into()]),
            }]),
        }]);
        assert!(check(&state, &by_name, "n1").is_err());
        assert_eq!(check(&state, &by_name, "n2"), Ok(()));
    }

    #[test]
    fn host_ports_conflict() {
        let mut state = state_with(&[node("n1", &[])]);
        let mut p = pod("a", "100m", &[]);
        p.spec.as_mut().unwrap().containers[0].ports =
            Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                container_port: 80,
                host_port: Some(80),
                ..Default::default()
            }]);
        assert_eq!(check(&state, &p, "n1"), Ok(()));
        state.add(
            "default/a",
            PodRecord::new(Arc::new(p.clone()), "n1".into(), None),
        );
        assert_eq!(check(&state, &p, "n1"), Err(Unfit::Ports));
    }

    #[test]
    fn anti_affinity_by_hostname_both_ways() {
        let mut state = state_with(&[node("n1", &[]), node("n2", &[])]);
        let mut p = pod("a", "100m", &[("app", "web")]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "app".to_string(),
                            "web".to_string(),
                        )])),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        state.add(
            "default/a",
            PodRecord::new(Arc::new(p.clone()), "n1".into(), None),
        );
        assert_eq!(check(&state, &p, "n1"), Err(Unfit::PodAntiAffinity));
        assert_eq!(check(&state, &p, "n2"), Ok(()));
        // A plain pod the existing one's anti-affinity selects is kept off n1 too.
        let plain = pod("b", "100m", &[("app", "web")]);
        assert_eq!(
            check(&state, &plain, "n1"),
            Err(Unfit::ExistingAntiAffinity)
        );
        let other = pod("c", "100m", &[("app", "db")]);
        assert_eq!(check(&state, &other, "n1"), Ok(()));
    }

    #[test]
    fn required_pod_affinity_follows_the_selected_pods_zone() {
        let mut state = state_with(&[
            node("a1", &[("topology.kubernetes.io/zone", "a")]),
            node("a2", &[("topology.kubernetes.io/zone", "a")]),
            node("b1", &[("topology.kubernetes.io/zone", "b")]),
        ]);
        let mut p = pod("web", "100m", &[("app", "web")]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: Some(k8s_openapi::api::core::v1::PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "app".to_string(),
                            "cache".to_string(),
                        )])),
                        ..Default::default()
                    }),
                    topology_key: "topology.kubernetes.io/zone".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        // No cache pod anywhere and the pod does not select itself.
        assert_eq!(check(&state, &p, "a1"), Err(Unfit::PodAffinity));
        state.add(
            "default/cache",
            PodRecord::new(
                Arc::new(pod("cache", "100m", &[("app", "cache")])),
                "a2".into(),
                None,
            ),
        );
        assert_eq!(check(&state, &p, "a1"), Ok(()), "same zone as the cache");
        assert_eq!(check(&state, &p, "b1"), Err(Unfit::PodAffinity));
    }

    #[test]
    fn hard_topology_spread_limits_skew() {
        let mut state = state_with(&[node("n1", &[]), node("n2", &[])]);
        let mut p = pod("web-2", "100m", &[("app", "web")]);
        p.spec.as_mut().unwrap().topology_spread_constraints =
            Some(vec![k8s_openapi::api::core::v1::TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        state.add(
            "default/web-1",
            PodRecord::new(
                Arc::new(pod("web-1", "100m", &[("app", "web")])),
                "n1".into(),
                None,
            ),
        );
        assert_eq!(check(&state, &p, "n1"), Err(Unfit::TopologySpread));
        assert_eq!(check(&state, &p, "n2"), Ok(()));
    }

    #[test]
    fn messages_read_like_kube_scheduler() {
        let failures = HashMap::from([
            ("Insufficient cpu".to_string(), 1),
            ("node(s) had untolerated taint {a: b}".to_string(), 2),
        ]);
        assert_eq!(
            unschedulable_message(3, &failures),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {a: b}."
        );
    }
}
