//! The Job loop: runs pods until `spec.completions` of them succeed.
//!
//! - At most `spec.parallelism` pods (default 1) are active at once, and
//!   never more than the completions still missing. `spec.suspend` keeps
//!   none active.
//! - Pods are created from the template with the labels Kubernetes gives
//!   them: `batch.kubernetes.io/job-name`, `job-name`,
//!   `batch.kubernetes.io/controller-uid` and `controller-uid`, and the Job
//!   as controller owner. A Job's pods are the pods it controls (owner
//!   reference uid, the same as matching `controller-uid`): the API server
//!   does not default `spec.selector` of a Job, so the selector is not used.
//! - Failures: with `restartPolicy: Never` each Failed pod counts one; with
//!   `OnFailure` container restarts count too. Once failures exceed
//!   `backoffLimit` (default 6) the Job fails (`BackoffLimitExceeded`).
//!   A failed pod is replaced after a back-off of
//!   [`BACKOFF_BASE`]`·2^(failures-1)`, capped at [`BACKOFF_MAX`], counted
//!   from the newest failure.
//! - `activeDeadlineSeconds`, counted from `status.startTime`, fails the
//!   Job with `DeadlineExceeded`.
//! - A finished Job gets the conditions Kubernetes 1.31+ sets:
//!   `SuccessCriteriaMet` then `Complete` (with `completionTime`), or
//!   `FailureTarget` then `Failed`; its remaining active pods are deleted.
//! - `status.succeeded`/`status.failed` never go down: a count is the
//!   larger of the recorded one and what the Job's pods show, so deleting
//!   finished pods does not undo progress. Indexed completion mode, pod
//!   failure policies, success policies and `ttlSecondsAfterFinished` are
//!   not supported yet.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::Resource;

use super::informer::{revision_of, Cache, ObjectKey};
use super::util;
use super::{Action, LoopContext, ReconcileError};
use crate::client::Client;

/// Back-off before the first replacement of a failed pod. Kubernetes uses
/// 10 s; orch uses 1 s, since its node agents start pods in well under a
/// second and a short first delay keeps a Job that failed by accident
/// (and the tests that exercise back-off) quick, while the doubling still
/// reaches the cap after nine failures.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The longest back-off between pod replacements (as in Kubernetes).
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// How long a reconcile waits for its own write to reach its cache.
const WRITE_VISIBLE: Duration = Duration::from_secs(5);

/// The back-off after `failures` failures.
pub fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let exponent = (failures - 1).min(16) as u32;
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}

struct Shared {
    client: Client,
    jobs: Cache<Job>,
    pods: Cache<Pod>,
}

/// Runs the job loop until `ctx.stop` is cancelled.
pub async fn run(ctx: LoopContext) {
    let queue = ctx.queue();
    let jobs = util::watch_primary::<Job>(&ctx, &queue);
    let pods = util::watch_owned_pods(&ctx, &queue, Job::KIND);
    if !util::wait_ready(&ctx.stop, &[&jobs, &pods]).await {
        return;
    }
    let shared = Arc::new(Shared {
        client: ctx.client.clone(),
        jobs,
        pods,
    });
    ctx.run("job", queue, move |key| {
        let shared = shared.clone();
        async move { reconcile(&shared, key).await }
    })
    .await;
}

/// When a failed pod failed, as well as it can be told: its containers'
/// finish times, else its newest condition change, else its creation.
fn failed_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let changed = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
        .max();
    finished
        .or(changed)
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum()
}

fn is_finished(status: &JobStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn condition(type_: &str, reason: &str, message: &str, now: &Time) -> JobCondition {
    JobCondition {
        type_: type_.to_string(),
        status: "True".into(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

fn new_pod(job: &Job) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let template = job.spec.clone().unwrap_or_default().template;
    let mut pod = util::pod_from_template(job, &template);
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
    labels.insert("job-name".into(), name);
    labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
    labels.insert("controller-uid".into(), uid);
    pod
}

async fn reconcile(shared: &Shared, key: ObjectKey) -> Result<Action, ReconcileError> {
    let Some(job) = shared.jobs.get(&key) else {
        return Ok(Action::Done);
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let spec = job.spec.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods = util::controlled_by(&shared.pods, &uid);
    let mut active: Vec<&Arc<Pod>> = pods.iter().filter(|p| util::is_pod_active(p)).collect();

    if is_finished(&status) {
        // A finished Job keeps no pod running.
        let mut rev = 0;
        for pod in &active {
            rev = rev.max(util::delete_exact(&shared.client, pod.as_ref(), false).await?);
        }
        util::wait_written(&shared.pods, rev, WRITE_VISIBLE).await?;
        return Ok(Action::Done);
    }
    let restart_policy = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Never".into());
    if restart_policy == "Always" {
        if status.start_time.is_none()
            && !status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Failed")
        {
            util::record_event(
                &shared.client,
                job.as_ref(),
                "Warning",
                "InvalidRestartPolicy",
                "a Job's pod template must have restartPolicy Never or OnFailure",
            )
            .await;
            let now = util::now_time();
            let next = JobStatus {
                conditions: Some(vec![condition(
                    "Failed",
                    "InvalidRestartPolicy",
                    "a Job's pod template must have restartPolicy Never or OnFailure",
                    &now,
                )]),
                ..status.clone()
            };
            util::patch_status(&shared.client, &shared.jobs, &*job, &next, WRITE_VISIBLE).await?;
        }
        return Ok(Action::Done);
    }

    let now_ts = util::now();
    let now = Time(now_ts);
    let counted_succeeded = pods
        .iter()
        .filter(|p| util::pod_phase(p) == "Succeeded")
        .count() as i32;
    let mut counted_failed = pods
        .iter()
        .filter(|p| util::pod_phase(p) == "Failed")
        .count() as i32;
    if restart_policy == "OnFailure" {
        counted_failed += pods.iter().map(|p| restarts(p)).sum::<i32>();
    }
    let succeeded = counted_succeeded.max(status.succeeded.unwrap_or(0));
    let failed = counted_failed.max(status.failed.unwrap_or(0));
    let suspended = spec.suspend == Some(true);
    let start_time = match &status.start_time {
        Some(t) => Some(t.clone()),
        None if suspended => None,
        None => Some(now.clone()),
    };
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let deadline_left = match (&start_time, spec.active_deadline_seconds) {
        (Some(start), Some(seconds)) if !suspended => {
            let elapsed = now_ts.duration_since(start.0).as_secs_f64().max(0.0);
            Some(Duration::from_secs_f64((seconds as f64 - elapsed).max(0.0)))
        }
        _ => None,
    };

    let finish: Option<(bool, &str, String)> = match spec.completions {
        Some(c) if succeeded >= c => Some((
            true,
            "CompletionsReached",
            "Reached expected number of succeeded pods".into(),
        )),
        None if succeeded > 0 && active.is_empty() => Some((
            true,
            "CompletionsReached",
            "Reached expected number of succeeded pods".into(),
        )),
        _ if failed > backoff_limit => Some((
            false,
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        )),
        _ if deadline_left == Some(Duration::ZERO) => Some((
            false,
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        )),
        _ => None,
    };

    let mut next = JobStatus {
        start_time,
        succeeded: Some(succeeded),
        failed: Some(failed),
        ..status.clone()
    };
    let mut action = Action::Done;
    if let Some((success, reason, message)) = finish {
        let mut rev = 0;
        for pod in &active {
            rev = rev.max(util::delete_exact(&shared.client, pod.as_ref(), false).await?);
        }
        util::wait_written(&shared.pods, rev, WRITE_VISIBLE).await?;
        let mut conditions = status.conditions.clone().unwrap_or_default();
        if success {
            conditions.push(condition("SuccessCriteriaMet", reason, &message, &now));
            conditions.push(condition("Complete", reason, &message, &now));
            next.completion_time = Some(now.clone());
        } else {
            conditions.push(condition("FailureTarget", reason, &message, &now));
            conditions.push(condition("Failed", reason, &message, &now));
        }
        next.conditions = Some(conditions);
        next.active = Some(0);
        next.ready = Some(0);
    } else {
        let wanted = if suspended {
            0
        } else {
            match spec.completions {
                Some(c) => parallelism.min(c - succeeded).max(0),
                None if succeeded > 0 => 0,
                None => parallelism,
            }
        } as usize;
        let mut rev = 0;
        if active.len() > wanted {
            // Not-ready, then newest pods go first.
            active.sort_by(|a, b| {
                util::is_pod_ready(a)
                    .cmp(&util::is_pod_ready(b))
                    .then_with(|| {
                        b.metadata
                            .creation_timestamp
                            .cmp(&a.metadata.creation_timestamp)
                    })
            });
            for pod in active.drain(..active.len() - wanted) {
                rev = rev.max(util::delete_exact(&shared.client, pod.as_ref(), false).await?);
            }
        } else if active.len() < wanted {
            let last_failure = pods
                .iter()
                .filter(|p| util::pod_phase(p) == "Failed")
                .filter_map(|p| failed_at(p))
                .max();
            let waited = last_failure
                .map(|t| now_ts.duration_since(t).as_secs_f64().max(0.0))
                .map(Duration::from_secs_f64);
            let delay = backoff(failed);
            match waited {
                Some(waited) if failed > 0 && waited < delay => {
                    action = Action::RequeueAfter(delay - waited);
                }
                _ => {
                    for _ in active.len()..wanted {
                        let created = shared
                            .client
                            .create(job.metadata.namespace.as_deref(), &new_pod(&job))
                            .await?;
                        rev = rev.max(revision_of(&created.metadata));
                    }
                }
            }
        }
        util::wait_written(&shared.pods, rev, WRITE_VISIBLE).await?;
        next.active = Some(active.len() as i32);
        next.ready = Some(active.iter().filter(|p| util::is_pod_ready(p)).count() as i32);
        if let Some(left) = deadline_left {
            action = match action {
                Action::RequeueAfter(d) => Action::RequeueAfter(d.min(left)),
                Action::Done => Action::RequeueAfter(left),
            };
        }
    }
    if next != status {
        util::patch_status(&shared.client, &shared.jobs, &*job, &next, WRITE_VISIBLE).await?;
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), BACKOFF_BASE);
        assert_eq!(backoff(2), BACKOFF_BASE * 2);
        assert_eq!(backoff(3), BACKOFF_BASE * 4);
        assert_eq!(backoff(40), BACKOFF_MAX);
    }
}
