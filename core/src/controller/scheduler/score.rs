//! The scores: among the nodes that fit, which is best? Each score is
//! normalised to 0..=100 and weighted as kube-scheduler's default profile
//! weighs its plugins (resources 1 each, node affinity 2, inter-pod
//! affinity 2, topology spread 2, taint toleration 3).

use std::collections::HashMap;

use super::filter::{tolerates, PodContext};
use super::state::{NodeFacts, NodeInfo, State, ZONE_LABEL};

/// The best score of one plugin.
pub const MAX_SCORE: i64 = 100;

const WEIGHT_LEAST_ALLOCATED: i64 = 1;
const WEIGHT_BALANCED: i64 = 1;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_INTER_POD: i64 = 2;
const WEIGHT_SPREAD: i64 = 2;
const WEIGHT_TAINTS: i64 = 3;

fn fraction(used: i128, allocatable: i128) -> f64 {
    if allocatable <= 0 {
        1.0
    } else {
        (used as f64 / allocatable as f64).min(1.0)
    }
}

/// Least allocated: the more CPU and memory left after placing the pod,
/// the better.
pub fn least_allocated(ctx: &PodContext, info: &NodeInfo, node: &NodeFacts) -> i64 {
    let cpu = 1.0 - fraction(info.non_zero.cpu + ctx.non_zero.cpu, node.allocatable.cpu);
    let memory = 1.0
        - fraction(
            info.non_zero.memory + ctx.non_zero.memory,
            node.allocatable.memory,
        );
    ((cpu + memory) / 2.0 * MAX_SCORE as f64) as i64
}

/// Balanced allocation: the closer the CPU and memory fractions in use
/// after placing the pod, the better.
pub fn balanced(ctx: &PodContext, info: &NodeInfo, node: &NodeFacts) -> i64 {
    let cpu = fraction(info.non_zero.cpu + ctx.non_zero.cpu, node.allocatable.cpu);
    let memory = fraction(
        info.non_zero.memory + ctx.non_zero.memory,
        node.allocatable.memory,
    );
    ((1.0 - (cpu - memory).abs() / 2.0) * MAX_SCORE as f64) as i64
}

/// The sum of the weights of the preferred node affinity terms the node
/// matches.
pub fn preferred_node_affinity(ctx: &PodContext, node: &NodeFacts) -> i64 {
    ctx.pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| super::filter::term_matches(&p.preference, node))
        .map(|p| i64::from(p.weight))
        .sum()
}

/// The number of PreferNoSchedule taints the pod does not tolerate.
pub fn intolerable_preferences(ctx: &PodContext, node: &NodeFacts) -> i64 {
    node.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !ctx.tolerations.iter().any(|x| tolerates(x, t)))
        .count() as i64
}

/// Preferred inter-pod (anti-)affinity: the weights of the domain the node
/// is in.
pub fn inter_pod(ctx: &PodContext, node: &NodeFacts) -> i64 {
    ctx.preferred
        .iter()
        .filter_map(|(key, weights)| node.label(key).and_then(|v| weights.get(v)))
        .sum()
}

/// How crowded the node's domains are for this pod (lower is better): the
/// matching pods of its ScheduleAnyway spread constraints, or, without
/// constraints, the pods of the same controller on the node and in its
/// zone.
fn crowding(
    ctx: &PodContext,
    info: &NodeInfo,
    node: &NodeFacts,
    zones: &HashMap<String, i64>,
) -> i64 {
    if !ctx.spread.is_empty() {
        return ctx
            .spread
            .iter()
            .filter(|s| !s.hard)
            .map(|s| {
                node.label(&s.key)
                    .and_then(|v| s.counts.get(v))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
    }
    let Some(owner) = ctx.owner.as_ref() else {
        return 0;
    };
    let on_node = i64::from(info.owners.get(owner).copied().unwrap_or(0));
    let in_zone = node
        .label(ZONE_LABEL)
        .and_then(|z| zones.get(z))
        .copied()
        .unwrap_or(0);
    // The node counts more than the zone (kube-scheduler's default spread:
    // hostname with maxSkew 3, zone with maxSkew 5).
    on_node * 2 + in_zone
}

/// Scores the feasible nodes `names` (all known to `state`); returns the
/// weighted total of each, in order.
pub fn score(ctx: &PodContext, state: &State, names: &[&str]) -> Vec<i64> {
    let mut zones: HashMap<String, i64> = HashMap::new();
    if ctx.spread.is_empty() && state.zoned_nodes > 0 {
        if let Some(owner) = ctx.owner.as_ref() {
            for info in state.nodes.values() {
                let count = info.owners.get(owner).copied().unwrap_or(0);
                if count == 0 {
                    continue;
                }
                if let Some(zone) = info.facts.as_ref().and_then(|f| f.label(ZONE_LABEL)) {
                    *zones.entry(zone.to_string()).or_default() += i64::from(count);
                }
            }
        }
    }
    struct Raw {
        resources: i64,
        node_affinity: i64,
        taints: i64,
        inter_pod: i64,
        crowding: i64,
    }
    let raws: Vec<Raw> = names
        .iter()
        .map(|name| {
            let info = &state.nodes[*name];
            let node = info.facts.as_ref().expect("feasible nodes exist");
            Raw {
                resources: WEIGHT_LEAST_ALLOCATED * least_allocated(ctx, info, node)
                    + WEIGHT_BALANCED * balanced(ctx, info, node),
                node_affinity: preferred_node_affinity(ctx, node),
                taints: intolerable_preferences(ctx, node),
                inter_pod: if ctx.preferred.is_empty() {
                    0
                } else {
                    inter_pod(ctx, node)
                },
                crowding: crowding(ctx, info, node, &zones),
            }
        })
        .collect();
    let max_affinity = raws.iter().map(|r| r.node_affinity).max().unwrap_or(0);
    let max_taints = raws.iter().map(|r| r.taints).max().unwrap_or(0);
    let max_crowding = raws.iter().map(|r| r.crowding).max().unwrap_or(0);
    let min_crowding = raws.iter().map(|r| r.crowding).min().unwrap_or(0);
    let max_inter = raws.iter().map(|r| r.inter_pod).max().unwrap_or(0);
    let min_inter = raws.iter().map(|r| r.inter_pod).min().unwrap_or(0);
    raws.iter()
        .map(|r| {
            let affinity = if max_affinity > 0 {
                r.node_affinity * MAX_SCORE / max_affinity
            } else {
                0
            };
            let taints = if max_taints > 0 {
                MAX_SCORE - r.taints * MAX_SCORE / max_taints
            } else {
                MAX_SCORE
            };
            let spread = if max_crowding > min_crowding {
                (max_crowding - r.crowding) * MAX_SCORE / (max_crowding - min_crowding)
            } else {
                MAX_SCORE
            };
            let inter = if max_inter > min_inter {
                (r.inter_pod - min_inter) * MAX_SCORE / (max_inter - min_inter)
            } else {
                0
            };
            r.resources
                + WEIGHT_NODE_AFFINITY * affinity
                + WEIGHT_TAINTS * taints
                + WEIGHT_SPREAD * spread
                + WEIGHT_INTER_POD * inter
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::super::filter::tests::{node, pod, state_with};
    use super::super::state::PodRecord;
    use super::*;
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, PreferredSchedulingTerm,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn no_labels(_: &str) -> Option<BTreeMap<String, String>> {
        None
    }

    fn best(state: &State, pod: &k8s_openapi::api::core::v1::Pod) -> Vec<i64> {
        let ctx = PodContext::new(Arc::new(pod.clone()), state, &no_labels);
        let names: Vec<&str> = state.order.iter().map(String::as_str).collect();
        score(&ctx, state, &names)
    }

    #[test]
    fn emptier_nodes_score_higher() {
        let mut state = state_with(&[node("n1", &[]), node("n2", &[])]);
        state.add(
            "default/x",
            PodRecord::new(Arc::new(pod("x", "1", &[])), "n1".into(), None),
        );
        let scores = best(&state, &pod("y", "100m", &[]));
        assert!(scores[1] > scores[0], "{scores:?}");
    }

    #[test]
    fn preferred_node_affinity_wins_over_emptiness() {
        let mut state = state_with(&[node("n1", &[("disk", "ssd")]), node("n2", &[])]);
        state.add(
            "default/x",
            PodRecord::new(Arc::new(pod("x", "500m", &[])), "n1".into(), None),
        );
        let mut p = pod("y", "100m", &[]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 50,
                        preference: NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "disk".into(),
                                operator: "In".into(),
                                values: Some(vec!["ssd".into()]),
                            }]),
                            match_fields: None,
                        },
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let scores = best(&state, &p);
        assert!(scores[0] > scores[1], "{scores:?}");
    }

    #[test]
    fn replicas_of_one_owner_spread_over_nodes() {
        let mut state = state_with(&[node("n1", &[]), node("n2", &[])]);
        let owned = |name: &str| {
            let mut p = pod(name, "0", &[]);
            p.metadata.owner_references = Some(vec![OwnerReference {
                uid: "rs-1".into(),
                controller: Some(true),
                ..Default::default()
            }]);
            p
        };
        // n1 holds one replica and is otherwise emptier than n2.
        state.add(
            "default/a",
            PodRecord::new(Arc::new(owned("a")), "n1".into(), None),
        );
        state.add(
            "default/big",
            PodRecord::new(Arc::new(pod("big", "300m", &[])), "n2".into(), None),
        );
        let scores = best(&state, &owned("b"));
        assert!(scores[1] > scores[0], "{scores:?}");
    }
}
