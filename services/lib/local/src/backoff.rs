//! When a crashed process is started again: exponential back-off, capped, and forgotten once
//! the process has run long enough to count as healthy. Pure (times are passed in), so the
//! rules are tested without processes.

use std::process::ExitStatus;
use std::time::Duration;

/// How a supervised process is restarted after it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart after a failure.
    pub initial_backoff: Duration,
    /// The wait doubles per consecutive failure up to this.
    pub max_backoff: Duration,
    /// A process that ran this long before failing starts the back-off afresh: one crash a day
    /// is restarted at once, a crash loop slows down.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// The back-off state of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    policy: RestartPolicy,
    /// Failures since the process last ran for `stable_after`.
    consecutive: u32,
}

impl Backoff {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            consecutive: 0,
        }
    }

    /// The process failed after running for `uptime` (or could not be started: zero): how
    /// long to wait before starting it again.
    pub fn after_failure(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.policy.stable_after {
            self.consecutive = 0;
        }
        let doublings = self.consecutive.min(31);
        self.consecutive = self.consecutive.saturating_add(1);
        self.policy
            .initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.policy.max_backoff)
    }

    /// A deliberate restart (not a failure): the next failure waits the initial back-off.
    pub fn reset(&mut self) {
        self.consecutive = 0;
    }
}

/// Whether an exit is a failure to restart from: a signal (kill -9, a segfault) or a non-zero
/// status. A service exits 0 only when asked to stop (SIGTERM, Ctrl-C), so a clean exit is
/// left alone, as an orchestrator's "restart on failure" policy would.
pub fn is_failure(status: &ExitStatus) -> bool {
    !status.success()
}

/// `signal 9` or `code 1`: how an exit is named in logs and the status.
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            stable_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn back_off_doubles_is_capped_and_resets_after_a_stable_run() {
        let mut b = Backoff::new(policy());
        let quick = Duration::from_millis(50);
        let waits: Vec<u128> = (0..6).map(|_| b.after_failure(quick).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        // A long run forgets the crash loop.
        assert_eq!(b.after_failure(Duration::from_secs(10)).as_millis(), 100);
        assert_eq!(b.after_failure(quick).as_millis(), 200);
        b.reset();
        assert_eq!(b.after_failure(quick).as_millis(), 100);
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = Backoff::new(RestartPolicy {
            max_backoff: Duration::MAX,
            ..policy()
        });
        let mut last = Duration::ZERO;
        for _ in 0..100 {
            let wait = b.after_failure(Duration::ZERO);
            assert!(wait >= last);
            last = wait;
        }
    }

    #[test]
    fn exits_are_named_and_only_failures_restart() {
        use std::os::unix::process::ExitStatusExt;
        let killed = ExitStatus::from_raw(9); // terminated by SIGKILL
        let failed = ExitStatus::from_raw(1 << 8); // exit(1)
        let clean = ExitStatus::from_raw(0);
        assert_eq!(describe(&killed), "signal 9");
        assert_eq!(describe(&failed), "code 1");
        assert!(is_failure(&killed) && is_failure(&failed));
        assert!(!is_failure(&clean));
    }
}
