//! What this gateway measured about each node: hop latency (moving average and mean
//! deviation), requests it has open there, and failures with exponential back-off. Pure: time
//! is passed in.
//!
//! A decode hop's deadline adapts to the node like a TCP retransmission timeout: never below
//! the configured deadline, but `(mean + 4 · deviation) × open requests` when that is longer.
//! A node that is merely busy (many streams at once on few cores) then keeps its requests,
//! instead of every one of them timing out, replaying elsewhere, and backing the whole
//! swarm off; a node that hangs is still given up on after the deadline its own load justifies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::routing::NodeLoad;

/// Weight of the newest latency sample in the moving average.
const LATENCY_ALPHA: f64 = 0.2;
/// Weight of the newest sample in the mean deviation.
const DEVIATION_BETA: f64 = 0.25;
/// Deviations of slack a hop gets beyond its mean latency.
const DEVIATION_SLACK: f64 = 4.0;

#[derive(Debug, Clone, Default)]
struct NodeStats {
    latency_ms: Option<f64>,
    /// Moving average of milliseconds per position over prefill and replay hops.
    work_ms_per_position: Option<f64>,
    deviation_ms: f64,
    in_flight: u32,
    consecutive_failures: u32,
    backed_off_until: Option<Instant>,
    /// Decode hops measured since the last observation report.
    unreported_samples: u32,
}

/// What this gateway measured of one node since its last report, as the registry takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub node_id: String,
    /// Decode positions per second one stream gets through the node's span: 1000 over the
    /// smoothed hop latency (transport included, as clients experience it).
    pub tokens_per_second: f64,
    /// Decode hops the figure is drawn from, since the last report.
    pub samples: u32,
}

/// Per-node statistics, keyed by node id.
#[derive(Debug, Clone)]
pub struct StatsBook {
    nodes: HashMap<String, NodeStats>,
    base_backoff: Duration,
    max_backoff: Duration,
}

impl StatsBook {
    pub fn new(base_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            nodes: HashMap::new(),
            base_backoff,
            max_backoff,
        }
    }

    /// A successful decode hop took `latency`.
    pub fn record_latency(&mut self, node: &str, latency: Duration) {
        let stats = self.nodes.entry(node.to_string()).or_default();
        let ms = latency.as_secs_f64() * 1000.0;
        stats.latency_ms = Some(match stats.latency_ms {
            Some(old) => {
                stats.deviation_ms += DEVIATION_BETA * ((ms - old).abs() - stats.deviation_ms);
                old + LATENCY_ALPHA * (ms - old)
            }
            None => {
                stats.deviation_ms = ms / 2.0;
                ms
            }
        });
        stats.consecutive_failures = 0;
        stats.unreported_samples = stats.unreported_samples.saturating_add(1);
    }

    /// What to report to the registry: every node with at least `min_samples` new decode hops
    /// since the last report (fewer say little about a node), which are then counted as
    /// reported. Sorted by node id.
    pub fn take_observations(&mut self, min_samples: u32) -> Vec<Observation> {
        let mut observations: Vec<Observation> = self
            .nodes
            .iter_mut()
            .filter(|(_, s)| s.unreported_samples >= min_samples.max(1))
            .filter_map(|(id, s)| {
                let latency = s.latency_ms.filter(|ms| *ms > 0.0 && ms.is_finite())?;
                let samples = std::mem::take(&mut s.unreported_samples);
                Some(Observation {
                    node_id: id.clone(),
                    tokens_per_second: 1000.0 / latency,
                    samples,
                })
            })
            .collect();
        observations.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        observations
    }

    /// A hop computing `positions` positions at once (a prefill or a replay) took `elapsed`.
    pub fn record_work(&mut self, node: &str, positions: usize, elapsed: Duration) {
        if positions == 0 {
            return;
        }
        let stats = self.nodes.entry(node.to_string()).or_default();
        let ms = elapsed.as_secs_f64() * 1000.0 / positions as f64;
        stats.work_ms_per_position = Some(match stats.work_ms_per_position {
            Some(old) => old + LATENCY_ALPHA * (ms - old),
            None => ms,
        });
        stats.consecutive_failures = 0;
    }

    /// What one position is measured to cost on `node`: from its prefills and replays, else
    /// its decode latency (one position a hop: an overestimate, the safe side for a deadline).
    pub fn ms_per_position(&self, node: &str) -> Option<f64> {
        let stats = self.nodes.get(node)?;
        stats.work_ms_per_position.or(stats.latency_ms)
    }

    /// A hop failed: avoid the node for `base × 2^(failures-1)`, capped.
    pub fn record_failure(&mut self, node: &str, now: Instant) -> Duration {
        let stats = self.nodes.entry(node.to_string()).or_default();
        stats.consecutive_failures = stats.consecutive_failures.saturating_add(1);
        let doublings = stats.consecutive_failures.saturating_sub(1).min(16);
        let backoff = self
            .base_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        stats.backed_off_until = Some(now + backoff);
        backoff
    }

    pub fn open(&mut self, node: &str) {
        self.nodes.entry(node.to_string()).or_default().in_flight += 1;
    }

    pub fn close(&mut self, node: &str) {
        if let Some(stats) = self.nodes.get_mut(node) {
            stats.in_flight = stats.in_flight.saturating_sub(1);
        }
    }

    /// Loads as routing wants them, at `now`.
    pub fn loads(&self, now: Instant) -> HashMap<String, NodeLoad> {
        self.nodes
            .iter()
            .map(|(id, s)| {
                let load = NodeLoad {
                    latency_ms: s.latency_ms,
                    in_flight: s.in_flight,
                    backed_off: s.backed_off_until.is_some_and(|t| t > now),
                };
                (id.clone(), load)
            })
            .collect()
    }

    pub fn latency_ms(&self, node: &str) -> Option<f64> {
        self.nodes.get(node).and_then(|s| s.latency_ms)
    }

    pub fn in_flight(&self, node: &str) -> u32 {
        self.nodes.get(node).map(|s| s.in_flight).unwrap_or(0)
    }

    /// When the back-off ends, if it is still running at `now`.
    pub fn backed_off_until(&self, node: &str, now: Instant) -> Option<Instant> {
        self.nodes
            .get(node)
            .and_then(|s| s.backed_off_until)
            .filter(|t| *t > now)
    }

    /// How long a decode hop on `node` may take before it counts as failed: `floor` (the
    /// configured deadline) or, when longer, what the node's measured latency and the
    /// requests open on it lead one to expect; never more than `ceiling`.
    pub fn hop_deadline(&self, node: &str, floor: Duration, ceiling: Duration) -> Duration {
        let Some(stats) = self.nodes.get(node) else {
            return floor;
        };
        let Some(mean) = stats.latency_ms else {
            return floor;
        };
        let expected_ms =
            (mean + DEVIATION_SLACK * stats.deviation_ms) * f64::from(stats.in_flight.max(1));
        Duration::from_secs_f64(expected_ms / 1000.0)
            .max(floor)
            .min(ceiling.max(floor))
    }

    /// Forgets nodes that left the assignment.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.nodes.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_report_new_decode_samples_once() {
        let mut book = StatsBook::new(Duration::from_millis(500), Duration::from_secs(4));
        for _ in 0..3 {
            book.record_latency("b", Duration::from_millis(20));
        }
        book.record_latency("a", Duration::from_millis(50));
        // A prefill is not a decode sample.
        book.record_work("c", 100, Duration::from_millis(100));
        let first = book.take_observations(2);
        assert_eq!(
            first,
            [Observation {
                node_id: "b".into(),
                tokens_per_second: 50.0,
                samples: 3,
            }]
        );
        // Reported samples are not reported again; `a` still waits for a second sample.
        assert!(book.take_observations(2).is_empty());
        book.record_latency("a", Duration::from_millis(50));
        let second = book.take_observations(2);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].node_id, "a");
        assert_eq!(second[0].samples, 2);
        assert!((second[0].tokens_per_second - 20.0).abs() < 1e-9);
    }

    #[test]
    fn backoff_doubles_caps_and_expires() {
        let mut book = StatsBook::new(Duration::from_millis(500), Duration::from_secs(4));
        let t0 = Instant::now();
        assert_eq!(book.record_failure("n", t0), Duration::from_millis(500));
        assert_eq!(book.record_failure("n", t0), Duration::from_secs(1));
        for _ in 0..10 {
            book.record_failure("n", t0);
        }
        assert_eq!(book.record_failure("n", t0), Duration::from_secs(4));
        assert!(book.loads(t0)["n"].backed_off);
        assert!(!book.loads(t0 + Duration::from_secs(5))["n"].backed_off);
        // Success resets the doubling.
        book.record_latency("n", Duration::from_millis(3));
        assert_eq!(book.record_failure("n", t0), Duration::from_millis(500));
    }

    #[test]
    fn hop_deadline_grows_with_latency_spread_and_load_within_bounds() {
        let floor = Duration::from_millis(200);
        let ceiling = Duration::from_secs(5);
        let mut book = StatsBook::new(Duration::from_secs(1), Duration::from_secs(1));
        // Unknown node, or no latency yet: the configured deadline.
        assert_eq!(book.hop_deadline("n", floor, ceiling), floor);
        book.open("n");
        assert_eq!(book.hop_deadline("n", floor, ceiling), floor);
        // A fast, steady node keeps the floor: a hang is noticed after 200 ms.
        for _ in 0..20 {
            book.record_latency("n", Duration::from_millis(25));
        }
        assert_eq!(book.hop_deadline("n", floor, ceiling), floor);
        // Busy: slow and spread samples with eight requests open stretch it.
        for ms in [80, 140, 60, 150, 90, 170] {
            book.record_latency("n", Duration::from_millis(ms));
        }
        for _ in 0..7 {
            book.open("n");
        }
        let busy = book.hop_deadline("n", floor, ceiling);
        assert!(busy > Duration::from_secs(1), "{busy:?}");
        assert!(busy <= ceiling);
        // Never past the ceiling.
        for _ in 0..100 {
            book.open("n");
        }
        assert_eq!(book.hop_deadline("n", floor, ceiling), ceiling);
    }

    #[test]
    fn cost_per_position_comes_from_many_position_hops_else_decode_latency() {
        let mut book = StatsBook::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(book.ms_per_position("n"), None);
        book.record_latency("n", Duration::from_millis(30));
        assert_eq!(book.ms_per_position("n"), Some(30.0));
        // 400 positions in 800 ms: 2 ms each, preferred to the decode latency.
        book.record_work("n", 400, Duration::from_millis(800));
        assert_eq!(book.ms_per_position("n"), Some(2.0));
        book.record_work("n", 100, Duration::from_millis(700));
        assert!((book.ms_per_position("n").unwrap() - 3.0).abs() < 1e-9);
        book.record_work("n", 0, Duration::from_secs(9));
        assert!((book.ms_per_position("n").unwrap() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn latency_is_a_moving_average_and_in_flight_counts() {
        let mut book = StatsBook::new(Duration::from_secs(1), Duration::from_secs(1));
        book.record_latency("n", Duration::from_millis(10));
        book.record_latency("n", Duration::from_millis(20));
        assert!((book.latency_ms("n").unwrap() - 12.0).abs() < 1e-9);
        book.open("n");
        book.open("n");
        book.close("n");
        assert_eq!(book.in_flight("n"), 1);
        book.close("n");
        book.close("n");
        assert_eq!(book.in_flight("n"), 0);
    }
}
