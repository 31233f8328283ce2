//! The restart back-off of crashing containers, as the kubelet has it: the
//! first restart is immediate, then each waits twice as long as the one
//! before (from `initial` up to `max`); a container that ran for `reset`
//! before it ended starts over from the first step.

use std::time::Duration;

/// Restart back-off settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBackoff {
    /// The wait before the second restart (Kubernetes: 10 s).
    pub initial: Duration,
    /// The longest wait (Kubernetes: 5 min).
    pub max: Duration,
    /// A run at least this long resets the back-off (Kubernetes: 10 min).
    pub reset: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset: Duration::from_secs(600),
        }
    }
}

impl RestartBackoff {
    /// How long to wait, after the run with attempt number `attempt` ended
    /// (having run for `ran`), before starting the next one. `quick_runs`
    /// counts the consecutive runs before this one (this one included)
    /// that ended before `reset`.
    pub fn delay(&self, quick_runs: u32, ran: Duration) -> Duration {
        if ran >= self.reset || quick_runs <= 1 {
            return Duration::ZERO;
        }
        let doublings = (quick_runs - 2).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_the_cap_and_resets_after_a_long_run() {
        let b = RestartBackoff::default();
        let quick = Duration::from_secs(1);
        assert_eq!(b.delay(1, quick), Duration::ZERO);
        assert_eq!(b.delay(2, quick), Duration::from_secs(10));
        assert_eq!(b.delay(3, quick), Duration::from_secs(20));
        assert_eq!(b.delay(4, quick), Duration::from_secs(40));
        assert_eq!(b.delay(7, quick), Duration::from_secs(300));
        assert_eq!(b.delay(40, quick), Duration::from_secs(300));
        assert_eq!(b.delay(5, Duration::from_secs(601)), Duration::ZERO);
    }
}
