//! The DaemonSet loop: one pod per eligible node.
//!
//! - A node is eligible when it matches the template's `nodeSelector` and
//!   required node affinity (`matchExpressions` on labels, `matchFields` on
//!   `metadata.name`), and every `NoSchedule`/`NoExecute` taint on it is
//!   tolerated by the template's tolerations plus the ones Kubernetes gives
//!   every daemon pod ([`daemon_tolerations`]: `not-ready` and
//!   `unreachable` for `NoExecute`; `disk-pressure`, `memory-pressure`,
//!   `pid-pressure` and `unschedulable` for `NoSchedule`). Those tolerations
//!   are also written into each pod.
//! - Pods are created already bound: `spec.nodeName` is set by this loop,
//!   so they do not depend on the scheduler (Kubernetes instead sets a
//!   required node affinity on `metadata.name` and lets the scheduler bind).
//! - Pods on nodes that are gone are deleted at once (grace period 0: no
//!   node agent is left to finish them); pods on nodes no longer eligible,
//!   extra pods on a node and failed pods are deleted normally. A node's
//!   replacement pod is created once its previous pod is gone.
//! - `updateStrategy: RollingUpdate` deletes pods whose template is out of
//!   date (label `controller-revision-hash`, see
//!   [`super::statefulset::template_hash`]) while at most `maxUnavailable`
//!   eligible nodes (an integer or a percentage of the desired number,
//!   rounded up; default 1) lack an available pod; pods that are not
//!   available anyway go first. `maxSurge` is not honoured. `OnDelete`
//!   leaves replacement to the user.
//! - Pods are found through their controller owner reference; orphans that
//!   match the selector are not adopted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::Resource;

use super::informer::{key_of, revision_of, Cache, ObjectKey};
use super::statefulset::{available, revision_label, template_hash, REVISION_LABEL};
use super::util;
use super::{Action, LoopContext, ReconcileError};
use crate::client::Client;

/// How long a reconcile waits for its own write to reach its cache.
const WRITE_VISIBLE: Duration = Duration::from_secs(5);

/// The tolerations Kubernetes adds to every daemon pod, so a daemon keeps
/// running on a node that is unhealthy or cordoned.
pub fn daemon_tolerations() -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".into()),
        effect: Some(effect.to_string()),
        ..Default::default()
    };
    vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

fn tolerates(toleration: &Toleration, key: &str, value: &str, effect: &str) -> bool {
    if let Some(e) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != effect {
            return false;
        }
    }
    let tkey = toleration.key.as_deref().unwrap_or("");
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => tkey.is_empty() || tkey == key,
        "Equal" => tkey == key && toleration.value.as_deref().unwrap_or("") == value,
        _ => false,
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|b| number(b)),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// True if a pod with `spec` belongs on `node` (node selector, required
/// node affinity, taints against its tolerations plus
/// [`daemon_tolerations`]).
pub fn node_eligible(spec: &PodSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let node_name = node.metadata.name.as_deref().unwrap_or("");
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required {
        let term_matches = |term: &k8s_openapi::api::core::v1::NodeSelectorTerm| {
            let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
            let fields = term.match_fields.as_deref().unwrap_or(&[]);
            if exprs.is_empty() && fields.is_empty() {
                return false;
            }
            exprs
                .iter()
                .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
                && fields.iter().all(|r| {
                    let value = (r.key == "metadata.name").then_some(node_name);
                    requirement_matches(r, value)
                })
        };
        if !required.node_selector_terms.iter().any(term_matches) {
            return false;
        }
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| {
            let value = t.value.as_deref().unwrap_or("");
            tolerations
                .iter()
                .any(|tol| tolerates(tol, &t.key, value, &t.effect))
        })
}

/// `maxUnavailable` of `total`: an integer, or a percentage rounded up.
fn resolve(value: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
                Some(percent) => ((i64::from(total) * percent + 99) / 100) as i32,
                None => default,
            }
        }
        None => default,
    }
}

struct Shared {
    client: Client,
    sets: Cache<DaemonSet>,
    pods: Cache<Pod>,
    nodes: Cache<Node>,
}

/// Runs the daemonset loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let sets = util::watch_primary::<DaemonSet>(&ctx, &queue);
    let pods = util::watch_owned_pods(&ctx, &queue, DaemonSet::KIND);
    // Any node change may change where every daemon set belongs.
    let q = queue.clone();
    let all_sets = sets.clone();
    let nodes = ctx
        .informer::<Node>()
        .start(ctx.stop.clone(), move |_: &Node| {
            for set in all_sets.list() {
                q.add(key_of(&set.metadata));
            }
        });
    if !util::wait_ready(&ctx.stop, &[&sets, &pods, &nodes]).await {
        return;
    }
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        sets,
        pods,
        nodes,
    });
    // Sets listed before the node cache was ready are looked at again.
    for set in shared.sets.list() {
        queue.add(key_of(&set.metadata));
    }
    ctx.run("daemonset", queue, move |key| {
        let shared = shared.clone();
        async move { reconcile(&shared, key).await }
    })
    .await;
}

fn new_pod(set: &DaemonSet, node: &str, revision: &str) -> Pod {
    let template = set.spec.clone().unwrap_or_default().template;
    let mut pod = util::pod_from_template(set, &template);
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.into(), revision.to_string());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_string());
    let mut tolerations = spec.tolerations.take().unwrap_or_default();
    for t in daemon_tolerations() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    spec.tolerations = Some(tolerations);
    pod
}

async fn reconcile(shared: &Shared, key: ObjectKey) -> Result<Action, ReconcileError> {
    let Some(set) = shared.sets.get(&key) else {
        return Ok(Action::Done);
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let spec = set.spec.clone().unwrap_or_default();
    let generation = set.metadata.generation;
    let status = set.status.clone().unwrap_or_default();
    if let Some((reason, message)) = util::template_mismatch(&spec.selector, &spec.template) {
        if status.observed_generation != generation {
            util::record_event(&shared.client, set.as_ref(), "Warning", reason, &message).await;
            let next = DaemonSetStatus {
                observed_generation: generation,
                ..status
            };
            util::patch_status(&shared.client, &shared.sets, &*set, &next, WRITE_VISIBLE).await?;
        }
        return Ok(Action::Done);
    }

    let revision = template_hash(&spec.template);
    let pod_spec = spec.template.spec.clone().unwrap_or_default();
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for pod in util::controlled_by(&shared.pods, &uid) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(pod);
    }
    let nodes: HashMap<String, Arc<Node>> = shared
        .nodes
        .list()
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
        .collect();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    let mut last_rev = 0u64;
    let mut desired = 0;
    let mut scheduled = 0;
    let mut misscheduled = 0;
    let mut ready = 0;
    let mut num_available = 0;
    let mut updated = 0;
    // Eligible nodes' live pods that are out of date, and the number of
    // eligible nodes without an available pod.
    let mut outdated: Vec<Arc<Pod>> = Vec::new();
    let mut unavailable = 0;

    // Pods on nodes that are gone (or never bound).
    for (node, pods) in &by_node {
        if nodes.contains_key(node) {
            continue;
        }
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_none() {
                last_rev =
                    last_rev.max(util::delete_exact::<Pod>(&shared.client, pod, true).await?);
            }
        }
    }
    let mut names: Vec<&String> = nodes.keys().collect();
    names.sort();
    for name in names {
        let node = &nodes[name];
        let pods = by_node.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let mut live: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let terminating = live.len() < pods.len();
        if !node_eligible(&pod_spec, node) {
            if !live.is_empty() {
                misscheduled += 1;
            }
            for pod in live {
                last_rev =
                    last_rev.max(util::delete_exact::<Pod>(&shared.client, pod, false).await?);
            }
            continue;
        }
        desired += 1;
        // Failed pods are replaced.
        let mut failed = Vec::new();
        live.retain(|p| {
            let done = matches!(util::pod_phase(p), "Failed" | "Succeeded");
            if done {
                failed.push(*p);
            }
            !done
        });
        let replacing = terminating || !failed.is_empty();
        for pod in failed {
            last_rev = last_rev.max(util::delete_exact::<Pod>(&shared.client, pod, false).await?);
        }
        // Keep the oldest pod; extras go.
        live.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        for extra in live.iter().skip(1) {
            last_rev = last_rev.max(util::delete_exact::<Pod>(&shared.client, extra, false).await?);
        }
        match live.first() {
            None => {
                if !replacing {
                    let created = shared
                        .client
                        .create(
                            set.metadata.namespace.as_deref(),
                            &new_pod(&set, name, &revision),
                        )
                        .await?;
                    last_rev = last_rev.max(revision_of(&created.metadata));
                }
                unavailable += 1;
            }
            Some(pod) => {
                scheduled += 1;
                let is_available = available(pod, min_ready);
                if util::is_pod_ready(pod) {
                    ready += 1;
                }
                if is_available {
                    num_available += 1;
                } else {
                    unavailable += 1;
                }
                if revision_label(pod) == Some(revision.as_str()) {
                    updated += 1;
                } else {
                    outdated.push((*pod).clone());
                }
            }
        }
    }

    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let max_unavailable = resolve(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref()),
            desired,
            1,
        )
        .max(1);
        // Unavailable old pods cost nothing to replace: they go first.
        outdated.sort_by_key(|p| available(p, min_ready));
        for pod in outdated {
            if available(&pod, min_ready) {
                if unavailable >= max_unavailable {
                    break;
                }
                unavailable += 1;
            }
            last_rev = last_rev.max(util::delete_exact::<Pod>(&shared.client, &pod, false).await?);
        }
    }

    util::wait_written(&shared.pods, last_rev, WRITE_VISIBLE).await?;

    let next = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: scheduled,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(num_available),
        number_unavailable: Some(desired - num_available),
        updated_number_scheduled: Some(updated),
        observed_generation: generation,
        collision_count: status.collision_count,
        conditions: status.conditions.clone(),
    };
    if next != status {
        util::patch_status(&shared.client, &shared.sets, &*set, &next, WRITE_VISIBLE).await?;
    }
    let waiting_for_available = min_ready > 0 && ready > num_available;
    Ok(if waiting_for_available {
        Action::RequeueAfter(Duration::from_secs(1))
    } else {
        Action::Done
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: Some("x".into()),
            time_added: None,
        }
    }

    #[test]
    fn eligibility_follows_selectors_and_taints() {
        let mut spec = PodSpec::default();
        assert!(node_eligible(&spec, &node(&[], vec![])));
        spec.node_selector = Some(BTreeMap::from([("disk".to_string(), "ssd".to_string())]));
        assert!(!node_eligible(&spec, &node(&[], vec![])));
        assert!(node_eligible(&spec, &node(&[("disk", "ssd")], vec![])));
        spec.node_selector = None;
        assert!(!node_eligible(
            &spec,
            &node(&[], vec![taint("gpu", "NoSchedule")])
        ));
        assert!(node_eligible(
            &spec,
            &node(&[], vec![taint("gpu", "PreferNoSchedule")])
        ));
        assert!(node_eligible(
            &spec,
            &node(
                &[],
                vec![taint("node.kubernetes.io/unschedulable", "NoSchedule")]
            )
        ));
        spec.tolerations = Some(vec![Toleration {
            key: Some("gpu".into()),
            operator: Some("Equal".into()),
            value: Some("x".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        }]);
        assert!(node_eligible(
            &spec,
            &node(&[], vec![taint("gpu", "NoSchedule")])
        ));
        assert!(!node_eligible(
            &spec,
            &node(&[], vec![taint("gpu", "NoExecute")])
        ));
    }

    #[test]
    fn max_unavailable_resolves_percentages_up() {
        assert_eq!(resolve(Some(&IntOrString::String("25%".into())), 10, 1), 3);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 10, 1), 2);
        assert_eq!(resolve(None, 10, 1), 1);
    }
}
