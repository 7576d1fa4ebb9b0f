//! What this gateway measured about each node: hop latency (moving average), requests it has
//! open there, and failures with exponential back-off. Pure: time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::routing::NodeLoad;

/// Weight of the newest latency sample in the moving average.
const LATENCY_ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Default)]
struct NodeStats {
    latency_ms: Option<f64>,
    in_flight: u32,
    consecutive_failures: u32,
    backed_off_until: Option<Instant>,
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
            Some(old) => old + LATENCY_ALPHA * (ms - old),
            None => ms,
        });
        stats.consecutive_failures = 0;
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

    /// Forgets nodes that left the assignment.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.nodes.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
