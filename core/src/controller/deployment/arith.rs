//! The numbers of a rollout, as Kubernetes computes them: maxSurge and
//! maxUnavailable from ints or percentages, how far the new ReplicaSet may
//! grow, and how far old ones may shrink.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Resolves an int-or-percent against `total`: a percentage is rounded up
/// (`round_up`) or down. Errors name what is wrong with the value.
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) if *n >= 0 => Ok(*n),
        IntOrString::Int(n) => Err(format!("{n} must not be negative")),
        IntOrString::String(s) => {
            let Some(percent) = s.strip_suffix('%') else {
                return Err(format!("{s:?} is neither an integer nor a percentage"));
            };
            let percent: i64 = percent
                .parse()
                .map_err(|_| format!("{s:?} is not a valid percentage"))?;
            if percent < 0 {
                return Err(format!("{s:?} must not be negative"));
            }
            let scaled = percent * total as i64;
            let value = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            Ok(value.min(i32::MAX as i64) as i32)
        }
    }
}

/// maxSurge and maxUnavailable of a rolling update with `desired`
/// replicas: surge rounds up, unavailable rounds down, and when both come
/// out 0 one pod may be unavailable (else the rollout could never move).
/// Unset values are Kubernetes' defaults, 25% each.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let default = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&default), desired, true)
        .map_err(|e| format!("maxSurge: {e}"))?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&default), desired, false)
        .map_err(|e| format!("maxUnavailable: {e}"))?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// The size the new ReplicaSet may grow to now: `desired` at most, and no
/// more than `desired + max_surge` pods in all. `current_total` counts the
/// pods of every ReplicaSet of the Deployment (new included).
pub fn new_rs_replicas(desired: i32, max_surge: i32, current_total: i32, new_rs: i32) -> i32 {
    let max_total = desired + max_surge;
    if current_total >= max_total {
        return new_rs;
    }
    let scale_up = (max_total - current_total).min(desired - new_rs).max(0);
    new_rs + scale_up
}

/// How many old pods may go now without dropping below `desired -
/// max_unavailable` available pods: `all_pods` counts every pod (spec),
/// `new_unavailable` the new ReplicaSet's pods that are not available yet.
pub fn max_scale_down(
    desired: i32,
    max_unavailable: i32,
    all_pods: i32,
    new_unavailable: i32,
) -> i32 {
    let min_available = desired - max_unavailable;
    all_pods - min_available - new_unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        assert_eq!(
            resolve_fenceposts(Some(&s("25%")), Some(&s("25%")), 10),
            Ok((3, 2))
        );
        assert_eq!(
            resolve_fenceposts(Some(&s("30%")), Some(&s("30%")), 3),
            Ok((1, 0))
        );
        assert_eq!(resolve_fenceposts(None, None, 4), Ok((1, 1)));
        assert_eq!(resolve_fenceposts(None, None, 1), Ok((1, 0)));
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&s("50%")), 5),
            Ok((2, 2))
        );
    }

    #[test]
    fn both_zero_allows_one_unavailable() {
        let zero = IntOrString::Int(0);
        assert_eq!(resolve_fenceposts(Some(&zero), Some(&zero), 5), Ok((0, 1)));
        assert_eq!(
            resolve_fenceposts(Some(&s("10%")), Some(&s("10%")), 5),
            Ok((1, 0))
        );
        assert_eq!(
            resolve_fenceposts(Some(&s("0%")), Some(&s("10%")), 5),
            Ok((0, 1))
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(resolve_fenceposts(Some(&s("lots")), None, 3).is_err());
        assert!(resolve_fenceposts(Some(&s("-5%")), None, 3).is_err());
        assert!(resolve_fenceposts(None, Some(&IntOrString::Int(-1)), 3).is_err());
    }

    #[test]
    fn new_replicaset_grows_within_the_surge() {
        // 4 desired, surge 1: 4 old pods leave room for 1 new.
        assert_eq!(new_rs_replicas(4, 1, 4, 0), 1);
        // Already at the ceiling.
        assert_eq!(new_rs_replicas(4, 1, 5, 1), 1);
        // Old ones shrank: grow, but never past desired.
        assert_eq!(new_rs_replicas(4, 1, 3, 1), 3);
        assert_eq!(new_rs_replicas(4, 2, 4, 3), 4);
    }

    #[test]
    fn old_replicasets_shrink_within_unavailability() {
        // 4 desired, 1 unavailable: 5 pods, the new one not yet available.
        assert_eq!(max_scale_down(4, 1, 5, 1), 1);
        // After one old pod went, nothing more until the new one is up.
        assert_eq!(max_scale_down(4, 1, 4, 1), 0);
        assert_eq!(max_scale_down(4, 0, 5, 0), 1);
    }
}
