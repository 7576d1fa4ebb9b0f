//! Deadlines of hops that carry many positions: a prefill (the whole prompt) and a replay (the
//! whole session so far). Their work grows with the positions, so their deadline does too:
//! a fixed part for the call itself, plus the positions times what one position is expected
//! to cost on that node, with a margin, never past a ceiling. Pure.
//!
//! A deadline that passes is a suspicion, not a verdict (see `hops`): a node that still
//! answers its liveness probe keeps the call up to the ceiling, so an estimate that is too low
//! costs a probe, not a failover. The deadline is when a hung node is given up on.
//!
//! What one position costs, best evidence first: this gateway's measurements of the node's
//! prefills and replays; its measured decode latency (one position per hop, so an
//! overestimate); the throughput the registry publishes for the node (the smaller of what the
//! node claims and what observers measured); otherwise nothing is known and the fixed part
//! alone applies.

use std::time::Duration;

/// How the deadline of a many-position hop is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkDeadlines {
    /// The fixed part: connection, scheduling, a short prompt.
    pub floor: Duration,
    /// Times the expected compute time.
    pub margin: f64,
    /// The most a hop may take, however long it is expected to.
    pub ceiling: Duration,
}

/// Expected milliseconds per position from a node's published throughput: the smaller of its
/// claim and the observers' measurement (0 when not measured).
pub fn published_ms_per_position(
    claimed_tokens_per_s: f64,
    observed_tokens_per_s: f64,
) -> Option<f64> {
    let usable = |t: f64| (t.is_finite() && t > 0.0).then_some(t);
    let rate = match (usable(claimed_tokens_per_s), usable(observed_tokens_per_s)) {
        (Some(c), Some(o)) => c.min(o),
        (Some(r), None) | (None, Some(r)) => r,
        (None, None) => return None,
    };
    Some(1000.0 / rate)
}

impl WorkDeadlines {
    /// The deadline of a hop computing `positions` positions on a node where one is expected
    /// to take `ms_per_position` (unknown: `None`).
    pub fn deadline(&self, positions: usize, ms_per_position: Option<f64>) -> Duration {
        let expected_ms = ms_per_position
            .filter(|ms| ms.is_finite() && *ms > 0.0)
            .map_or(0.0, |ms| positions as f64 * ms * self.margin);
        let expected = Duration::try_from_secs_f64(expected_ms / 1000.0).unwrap_or(self.ceiling);
        self.floor
            .saturating_add(expected)
            .min(self.ceiling.max(self.floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: WorkDeadlines = WorkDeadlines {
        floor: Duration::from_secs(5),
        margin: 3.0,
        ceiling: Duration::from_secs(120),
    };

    #[test]
    fn the_deadline_grows_with_the_positions_and_their_cost() {
        // Unknown cost, or nothing to compute: the fixed part.
        assert_eq!(POLICY.deadline(2048, None), POLICY.floor);
        assert_eq!(POLICY.deadline(0, Some(10.0)), POLICY.floor);
        // 2048 positions at 2 ms: 5 s + 2048 × 2 ms × 3.
        assert_eq!(
            POLICY.deadline(2048, Some(2.0)),
            Duration::from_millis(5_000 + 12_288)
        );
        // Twice the positions or twice the cost, twice the variable part.
        let base = POLICY.deadline(100, Some(4.0)) - POLICY.floor;
        assert_eq!(POLICY.deadline(200, Some(4.0)) - POLICY.floor, base * 2);
        assert_eq!(POLICY.deadline(100, Some(8.0)) - POLICY.floor, base * 2);
        // One decode position on a fast node is the floor, give or take a millisecond.
        assert!(POLICY.deadline(1, Some(0.2)) < POLICY.floor + Duration::from_millis(1));
    }

    #[test]
    fn the_deadline_stays_within_its_ceiling_whatever_the_estimate() {
        assert_eq!(POLICY.deadline(1 << 20, Some(1e9)), POLICY.ceiling);
        assert_eq!(POLICY.deadline(usize::MAX, Some(f64::MAX)), POLICY.ceiling);
        for nonsense in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            assert_eq!(POLICY.deadline(100, Some(nonsense)), POLICY.floor);
        }
        // A ceiling below the floor cannot cut the floor.
        let odd = WorkDeadlines {
            ceiling: Duration::from_secs(1),
            ..POLICY
        };
        assert_eq!(odd.deadline(1000, Some(5.0)), POLICY.floor);
    }

    #[test]
    fn published_throughput_is_the_smaller_of_claim_and_observation() {
        assert_eq!(published_ms_per_position(500.0, 0.0), Some(2.0));
        assert_eq!(published_ms_per_position(1e6, 250.0), Some(4.0));
        assert_eq!(published_ms_per_position(100.0, 1e6), Some(10.0));
        assert_eq!(published_ms_per_position(0.0, 0.0), None);
        assert_eq!(published_ms_per_position(f64::NAN, 50.0), Some(20.0));
    }
}
