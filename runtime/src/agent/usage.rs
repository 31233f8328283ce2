//! Per-pod CPU and memory usage, read from the pods' cgroups and published
//! on the pods as annotations: `orch.dev/cpu-usage-millicores` (what the
//! HorizontalPodAutoscaler reads) and `orch.dev/memory-usage-bytes` (the
//! working set). A pod is written only when a figure changed noticeably, so
//! idle pods cost nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use orch_core::controller::hpa::CPU_USAGE_ANNOTATION;
use orch_core::controller::util::split_key;
use orch_core::patch::PatchType;
use serde_json::json;

use super::pods::Shared;
use crate::pod::cgroup;

/// The annotation with a pod's memory working set, in bytes.
pub const MEMORY_USAGE_ANNOTATION: &str = "orch.dev/memory-usage-bytes";

/// A pod's usage at one instant, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodUsage {
    /// CPU in millicores, averaged since the previous sample.
    pub cpu_millicores: u64,
    /// Memory working set in bytes.
    pub memory_bytes: u64,
}

/// CPU millicores used between two samples of a cgroup's CPU time.
pub fn millicores(before_nanos: u64, after_nanos: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    (after_nanos.saturating_sub(before_nanos) as f64 / secs / 1e6).round() as u64
}

/// Whether a new figure differs enough from the published one to write
/// it: by more than 10 % and more than `floor`.
fn changed(old: u64, new: u64, floor: u64) -> bool {
    let diff = old.abs_diff(new);
    diff > floor && diff * 10 > old.max(new)
}

/// Samples every pod on the host every `interval` and publishes what
/// changed, until the agent stops.
pub async fn report(shared: Arc<Shared>, interval: Duration) {
    let mut samples: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut published: HashMap<String, PodUsage> = HashMap::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let pods = shared.pods_on_host();
        samples.retain(|uid, _| pods.iter().any(|(u, _)| u == uid));
        published.retain(|uid, _| pods.iter().any(|(u, _)| u == uid));
        for (uid, key) in pods {
            let rel = cgroup::pod_path(&shared.config.runtime.cgroup_parent, &uid);
            let Some(now) = cgroup::usage(&rel) else {
                continue;
            };
            let at = Instant::now();
            let Some((before, then)) = samples.insert(uid.clone(), (now.cpu_nanos, at)) else {
                continue;
            };
            let usage = PodUsage {
                cpu_millicores: millicores(before, now.cpu_nanos, at - then),
                memory_bytes: now.memory_working_set_bytes,
            };
            let due = match published.get(&uid) {
                None => true,
                Some(old) => {
                    changed(old.cpu_millicores, usage.cpu_millicores, 5)
                        || changed(old.memory_bytes, usage.memory_bytes, 1 << 20)
                }
            };
            if !due {
                continue;
            }
            let (namespace, name) = split_key(&key);
            let patch = json!({"metadata": {"annotations": {
                CPU_USAGE_ANNOTATION: usage.cpu_millicores.to_string(),
                MEMORY_USAGE_ANNOTATION: usage.memory_bytes.to_string(),
            }}});
            match shared
                .client
                .patch::<Pod>(namespace, name, None, PatchType::Merge, &patch)
                .await
            {
                Ok(_) => {
                    published.insert(uid, usage);
                }
                Err(e) => tracing::debug!(pod = %key, error = %e, "publishing usage failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millicores_are_cpu_seconds_per_second() {
        // Half a CPU second over one second: 500m.
        assert_eq!(millicores(0, 500_000_000, Duration::from_secs(1)), 500);
        assert_eq!(millicores(10, 5, Duration::from_secs(1)), 0);
        assert_eq!(millicores(0, 1, Duration::ZERO), 0);
    }

    #[test]
    fn small_changes_are_not_written() {
        assert!(!changed(100, 104, 5));
        assert!(!changed(100, 108, 5));
        assert!(changed(100, 150, 5));
        assert!(changed(0, 6, 5));
    }
}
