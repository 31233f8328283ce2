//! Size-based rotation of container logs, as the kubelet's
//! `containerLogMaxSize` / `containerLogMaxFiles`: every run's log file
//! over the limit is rotated by [`crate::pod::logs::rotate`]
//! (copy-and-truncate; the container keeps writing to the live file).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pod::logs;

/// How large container logs may grow, and how often that is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// A log file larger than this is rotated (kubelet: 10Mi).
    pub max_bytes: u64,
    /// Files kept per run of a container, the live one included
    /// (kubelet: 5).
    pub max_files: usize,
    /// How often the files' sizes are checked.
    pub interval: Duration,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_bytes: 10 << 20,
            max_files: 5,
            interval: Duration::from_secs(10),
        }
    }
}

/// Rotates every log file under `log_dir` (`<pod>/<container>/<attempt>.log`)
/// that is over the limit; returns how many were rotated.
pub fn rotate_all(log_dir: &Path, rotation: &LogRotation) -> usize {
    let mut rotated = 0;
    let dirs = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for pod in dirs(log_dir) {
        for container in dirs(&pod) {
            for file in dirs(&container) {
                if file.extension().is_none_or(|e| e != "log") {
                    continue;
                }
                match logs::rotate(&file, rotation.max_bytes, rotation.max_files) {
                    Ok(true) => {
                        tracing::debug!(path = %file.display(), "log rotated");
                        rotated += 1;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(path = %file.display(), error = %e, "rotating a log failed")
                    }
                }
            }
        }
    }
    rotated
}

/// Checks the logs under `log_dir` every `rotation.interval` until `stop`,
/// counting the files rotated in `rotated`.
pub async fn run(
    log_dir: std::path::PathBuf,
    rotation: LogRotation,
    rotated: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(rotation.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let dir = log_dir.clone();
        let span = tracing::debug_span!("log_rotation");
        if let Ok(count) =
            tokio::task::spawn_blocking(move || span.in_scope(|| rotate_all(&dir, &rotation))).await
        {
            rotated.fetch_add(count as u64, Ordering::Relaxed);
        }
    }
}
