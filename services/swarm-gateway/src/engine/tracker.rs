//! Requests in flight and recently finished, and generated-token throughput over time: the
//! request half of the status document. Pure: time is passed in as ms since the epoch.

use std::collections::{BTreeMap, VecDeque};

use crate::status::{RequestStatus, ThroughputStatus};

/// Finished requests kept for the status document.
const RECENT: usize = 32;
/// Throughput is bucketed per second and kept for this many seconds.
const HISTORY_SECONDS: u64 = 300;
/// Tokens/s "now" is the mean over this many recent whole seconds.
const RATE_WINDOW_SECONDS: u64 = 5;

#[derive(Debug, Default)]
pub struct Tracker {
    active: BTreeMap<String, RequestStatus>,
    recent: VecDeque<RequestStatus>,
    /// (second since epoch, tokens generated in it)
    buckets: VecDeque<(u64, u64)>,
    total_tokens: u64,
    total_requests: u64,
}

impl Tracker {
    pub fn begin(&mut self, id: &str, prompt_tokens: u32, now_ms: u64) {
        self.total_requests += 1;
        self.active.insert(
            id.to_string(),
            RequestStatus {
                id: id.to_string(),
                state: "prefill".into(),
                prompt_tokens,
                started_ms: now_ms,
                ..RequestStatus::default()
            },
        );
    }

    pub fn set_route(&mut self, id: &str, route: Vec<String>) {
        if let Some(r) = self.active.get_mut(id) {
            for node in &route {
                if !r.served.contains(node) {
                    r.served.push(node.clone());
                }
            }
            r.route = route;
        }
    }

    /// Who served request `id`: its route's ends now, and every node that held a hop.
    pub fn served(&self, id: &str) -> Option<crate::generator::ServedRoute> {
        let r = self
            .active
            .get(id)
            .or_else(|| self.recent.iter().find(|r| r.id == id))?;
        Some(crate::generator::ServedRoute {
            driver: r.route.first()?.clone(),
            processors: r.served.clone(),
            validator: r.route.last()?.clone(),
        })
    }

    pub fn failover(&mut self, id: &str) {
        if let Some(r) = self.active.get_mut(id) {
            r.failovers += 1;
        }
    }

    pub fn token(&mut self, id: &str, now_ms: u64) {
        if let Some(r) = self.active.get_mut(id) {
            if r.completion_tokens == 0 {
                r.ttft_ms = Some(now_ms.saturating_sub(r.started_ms) as f64);
                r.state = "streaming".into();
            }
            r.completion_tokens += 1;
        }
        self.total_tokens += 1;
        let second = now_ms / 1000;
        match self.buckets.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.buckets.push_back((second, 1)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|(s, _)| *s + HISTORY_SECONDS < second)
        {
            self.buckets.pop_front();
        }
    }

    /// Moves a request to the recent list with its final state (`done`, `failed`,
    /// `cancelled`).
    pub fn finish(&mut self, id: &str, state: &str, error: Option<String>) {
        if let Some(mut r) = self.active.remove(id) {
            r.state = state.to_string();
            r.error = error;
            self.recent.push_front(r);
            self.recent.truncate(RECENT);
        }
    }

    /// In-flight requests (oldest first), then recent ones (newest first).
    pub fn requests(&self) -> Vec<RequestStatus> {
        let mut active: Vec<_> = self.active.values().cloned().collect();
        active.sort_by_key(|r| r.started_ms);
        active.extend(self.recent.iter().cloned());
        active
    }

    pub fn throughput(&self, now_ms: u64) -> ThroughputStatus {
        let now_s = now_ms / 1000;
        // Whole seconds only: the current one is still filling.
        let window = (now_s.saturating_sub(RATE_WINDOW_SECONDS))..now_s;
        let recent: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| window.contains(s))
            .map(|(_, n)| n)
            .sum();
        let first = self.buckets.front().map(|(s, _)| *s).unwrap_or(now_s);
        // One point per second, zeros included, so the plot shows idle time as idle.
        let history = (first..now_s)
            .map(|s| {
                let n = self
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == s)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                [(s * 1000) as f64, n as f64]
            })
            .collect();
        ThroughputStatus {
            tokens_per_s: recent as f64 / RATE_WINDOW_SECONDS as f64,
            history,
            total_tokens: self.total_tokens,
            total_requests: self.total_requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_moves_from_active_to_recent_with_ttft_and_failovers() {
        let mut t = Tracker::default();
        t.begin("r1", 5, 1_000);
        t.set_route("r1", vec!["a".into(), "b".into()]);
        t.token("r1", 1_040);
        t.failover("r1");
        t.set_route("r1", vec!["a".into(), "c".into()]);
        let served = t.served("r1").unwrap();
        assert_eq!(
            (served.driver.as_str(), served.validator.as_str()),
            ("a", "c")
        );
        assert_eq!(served.processors, ["a", "b", "c"]);
        t.token("r1", 1_050);
        let now = t.requests();
        assert_eq!(now[0].state, "streaming");
        assert_eq!(now[0].ttft_ms, Some(40.0));
        assert_eq!(now[0].route, ["a", "c"]);
        t.finish("r1", "done", None);
        let after = t.requests();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].state, "done");
        assert_eq!(after[0].completion_tokens, 2);
        assert_eq!(after[0].failovers, 1);
    }

    #[test]
    fn throughput_counts_whole_seconds_and_fills_idle_ones() {
        let mut t = Tracker::default();
        t.begin("r", 1, 10_000);
        for i in 0..10 {
            t.token("r", 10_000 + i * 100); // 10 tokens in second 10
        }
        t.token("r", 12_500); // 1 token in second 12
        let tp = t.throughput(13_200);
        assert_eq!(
            tp.history,
            vec![[10_000.0, 10.0], [11_000.0, 0.0], [12_000.0, 1.0]]
        );
        assert!((tp.tokens_per_s - 11.0 / 5.0).abs() < 1e-9);
        assert_eq!(tp.total_tokens, 11);
    }
}
