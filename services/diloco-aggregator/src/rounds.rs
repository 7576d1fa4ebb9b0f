//! The open round as plain data, and the rules a submission's header must pass before its
//! bytes are read (pure: no I/O, no clock; `now_ms` is passed in). Who held which span comes
//! from every registry snapshot seen while the round was open, so a node that held its span
//! for part of the round (it died, or was moved) is still recognised.

use std::collections::{BTreeMap, BTreeSet};

use neuroshard_aggregation::round::Named;
use neuroshard_proto::registry::v1::{AssignmentSnapshot, NodeState};

/// A node's place in one of the registry's pipelines.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holding {
    pub span: (u32, u32),
    /// `p<index>` of the registry's pipelines.
    pub pipeline: String,
}

/// An accepted submission, held until the round closes.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub node_id: String,
    pub span: (u32, u32),
    pub pipeline: String,
    pub tokens: u64,
    pub commitment: [u8; 32],
    /// Δ of the parameters this aggregator owns in the span, dequantised.
    pub deltas: Named,
    pub bytes: u64,
    /// Plausibility figures the receipt carries: the node's registered capacity and how long
    /// the round had been open when the work arrived.
    pub capacity_tokens_per_second: f64,
    pub elapsed_ms: u64,
}

/// A refused submission: the evidence kind and the message the caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The round open now.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRound {
    pub number: u64,
    pub inner_steps: u64,
    pub deadline_ms: i64,
    pub seed: u64,
    pub num_layers: u32,
    /// Live pipelines the registry showed when the round opened.
    pub expected_pipelines: u32,
    pub holders: BTreeMap<String, BTreeSet<Holding>>,
    /// Each holder's registered capacity (tokens/s), as the registry last showed it.
    pub capacities: BTreeMap<String, f64>,
    pub submissions: Vec<Submission>,
}

/// Pipelines of `snapshot` whose every stage is live, with each stage's holding.
fn live_holdings(snapshot: &AssignmentSnapshot) -> Vec<Vec<(String, Holding)>> {
    snapshot
        .pipelines
        .iter()
        .enumerate()
        .filter_map(|(index, pipeline)| {
            pipeline
                .node_ids
                .iter()
                .map(|id| {
                    let node = snapshot
                        .nodes
                        .iter()
                        .find(|n| &n.node_id == id && n.state == NodeState::Live as i32)?;
                    let span = node.span?;
                    Some((
                        id.clone(),
                        Holding {
                            span: (span.start, span.end),
                            pipeline: format!("p{index}"),
                        },
                    ))
                })
                .collect::<Option<Vec<_>>>()
        })
        .collect()
}

/// How many of `snapshot`'s pipelines have every stage live.
pub fn live_pipelines(snapshot: &AssignmentSnapshot) -> u32 {
    live_holdings(snapshot).len() as u32
}

impl OpenRound {
    /// Round `number` opening now, expecting the live pipelines of `snapshot`.
    pub fn open(
        number: u64,
        inner_steps: u64,
        deadline_ms: i64,
        seed: u64,
        num_layers: u32,
        snapshot: Option<&AssignmentSnapshot>,
    ) -> Self {
        let mut round = Self {
            number,
            inner_steps,
            deadline_ms,
            seed,
            num_layers,
            expected_pipelines: 0,
            holders: BTreeMap::new(),
            capacities: BTreeMap::new(),
            submissions: Vec::new(),
        };
        if let Some(snapshot) = snapshot {
            round.observe(snapshot);
        }
        round
    }

    /// Records who holds what in `snapshot` (live pipelines only), and how many pipelines
    /// the round waits for: those live now until the first submission; after it, fewer when
    /// one dies (a pipeline that forms mid-round is not waited for).
    pub fn observe(&mut self, snapshot: &AssignmentSnapshot) {
        let live = live_holdings(snapshot);
        let count = live.len() as u32;
        self.expected_pipelines = if self.submissions.is_empty() {
            count
        } else {
            self.expected_pipelines.min(count)
        };
        for (node, holding) in live.into_iter().flatten() {
            if let Some(capacity) = snapshot
                .nodes
                .iter()
                .find(|n| n.node_id == node)
                .and_then(|n| n.capacity.as_ref())
            {
                self.capacities
                    .insert(node.clone(), capacity.tokens_per_second);
            }
            self.holders.entry(node).or_default().insert(holding);
        }
    }

    /// Milliseconds since the round opened (its deadline is `round_deadline_ms` after that).
    pub fn elapsed_ms(&self, round_deadline_ms: u64, now_ms: i64) -> u64 {
        let opened = self
            .deadline_ms
            .saturating_sub(i64::try_from(round_deadline_ms).unwrap_or(i64::MAX));
        u64::try_from(now_ms.saturating_sub(opened)).unwrap_or(0)
    }

    /// `node_id`'s registered capacity in tokens/s (0 when the registry never showed one).
    pub fn capacity_of(&self, node_id: &str) -> f64 {
        self.capacities.get(node_id).copied().unwrap_or(0.0)
    }

    /// Whether a submission with this header may send its bytes: the round is this one and
    /// open, the node held the span in the pipeline it names during the round, and it has
    /// not submitted that span already.
    pub fn admit(
        &self,
        node_id: &str,
        round: u64,
        span: (u32, u32),
        pipeline: &str,
        now_ms: i64,
    ) -> Result<(), Refusal> {
        if round != self.number {
            let what = if round < self.number {
                format!("round {round} is closed")
            } else {
                format!("round {round} has not opened")
            };
            return Err(Refusal::new(
                "late",
                format!("{what}: this aggregator is in round {}", self.number),
            ));
        }
        if now_ms > self.deadline_ms {
            return Err(Refusal::new(
                "late",
                format!(
                    "round {round}: the deadline passed {} ms ago; the round closes with what it has",
                    now_ms - self.deadline_ms
                ),
            ));
        }
        let Some(holdings) = self.holders.get(node_id) else {
            return Err(Refusal::new(
                "unknown_node",
                format!("node {node_id} held no span in a live pipeline during round {round}"),
            ));
        };
        if !holdings
            .iter()
            .any(|h| h.span == span && h.pipeline == pipeline)
        {
            return Err(Refusal::new(
                "span",
                format!(
                    "node {node_id} did not hold layers [{}, {}) in pipeline {pipeline} during round {round} (it held {})",
                    span.0,
                    span.1,
                    holdings
                        .iter()
                        .map(|h| format!("[{}, {}) in {}", h.span.0, h.span.1, h.pipeline))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if self
            .submissions
            .iter()
            .any(|s| s.node_id == node_id && s.span == span)
        {
            return Err(Refusal::new(
                "duplicate",
                format!(
                    "node {node_id} already submitted layers [{}, {}) in round {round}",
                    span.0, span.1
                ),
            ));
        }
        Ok(())
    }

    /// Whether every owned parameter has a submission from each expected pipeline (the
    /// round need not wait for its deadline).
    pub fn complete(&self, owned: impl IntoIterator<Item = String>) -> bool {
        if self.expected_pipelines == 0 {
            return false;
        }
        owned.into_iter().all(|name| {
            self.submissions
                .iter()
                .filter(|s| s.deltas.contains_key(&name))
                .map(|s| &s.pipeline)
                .collect::<BTreeSet<_>>()
                .len()
                >= self.expected_pipelines as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_proto::common::v1::LayerSpan;
    use neuroshard_proto::registry::v1::{Capacity, NodeAssignment, Pipeline};

    fn snapshot(dead: &[&str]) -> AssignmentSnapshot {
        let node = |id: &str, start, end| NodeAssignment {
            node_id: id.into(),
            state: if dead.contains(&id) {
                NodeState::Dead as i32
            } else {
                NodeState::Live as i32
            },
            span: Some(LayerSpan { start, end }),
            capacity: Some(Capacity {
                tokens_per_second: f64::from(start + 1) * 100.0,
                ..Capacity::default()
            }),
            ..NodeAssignment::default()
        };
        AssignmentSnapshot {
            nodes: vec![
                node("a", 0, 1),
                node("b", 1, 2),
                node("c", 0, 1),
                node("d", 1, 2),
            ],
            pipelines: vec![
                Pipeline {
                    node_ids: vec!["a".into(), "b".into()],
                },
                Pipeline {
                    node_ids: vec!["c".into(), "d".into()],
                },
            ],
            ..AssignmentSnapshot::default()
        }
    }

    fn submission(node: &str, span: (u32, u32), pipeline: &str, names: &[&str]) -> Submission {
        Submission {
            node_id: node.into(),
            span,
            pipeline: pipeline.into(),
            tokens: 1,
            commitment: [0; 32],
            deltas: names.iter().map(|n| (n.to_string(), vec![0.0])).collect(),
            bytes: 1,
            capacity_tokens_per_second: 0.0,
            elapsed_ms: 0,
        }
    }

    #[test]
    fn headers_are_checked_against_the_round_and_the_registry() {
        let mut round = OpenRound::open(3, 10, 1_000, 7, 2, Some(&snapshot(&[])));
        assert_eq!(round.expected_pipelines, 2);
        assert!(round.admit("a", 3, (0, 1), "p0", 500).is_ok());
        let late = round.admit("a", 2, (0, 1), "p0", 500).unwrap_err();
        assert_eq!(late.kind, "late");
        assert!(late.message.contains("round 2 is closed") && late.message.contains("round 3"));
        assert_eq!(
            round.admit("a", 3, (0, 1), "p0", 1_001).unwrap_err().kind,
            "late"
        );
        assert_eq!(
            round.admit("z", 3, (0, 1), "p0", 500).unwrap_err().kind,
            "unknown_node"
        );
        assert_eq!(
            round.admit("a", 3, (1, 2), "p0", 500).unwrap_err().kind,
            "span"
        );
        assert_eq!(
            round.admit("a", 3, (0, 1), "p1", 500).unwrap_err().kind,
            "span"
        );
        round
            .submissions
            .push(submission("a", (0, 1), "p0", &["x"]));
        assert_eq!(
            round.admit("a", 3, (0, 1), "p0", 500).unwrap_err().kind,
            "duplicate"
        );
    }

    #[test]
    fn a_node_that_died_mid_round_still_held_its_span() {
        let mut round = OpenRound::open(1, 10, 1_000, 7, 2, Some(&snapshot(&[])));
        round
            .submissions
            .push(submission("c", (0, 1), "p1", &["x"]));
        round.observe(&snapshot(&["a"]));
        assert!(round.admit("a", 1, (0, 1), "p0", 10).is_ok());
        // The round no longer waits for the dead node's pipeline, nor for a new one.
        assert_eq!(round.expected_pipelines, 1);
        round.observe(&snapshot(&[]));
        assert_eq!(round.expected_pipelines, 1);
        // A pipeline with a dead stage is not expected.
        assert_eq!(
            OpenRound::open(1, 10, 1_000, 7, 2, Some(&snapshot(&["d"]))).expected_pipelines,
            1
        );
    }

    #[test]
    fn the_round_is_complete_when_every_pipeline_covered_every_parameter() {
        let mut round = OpenRound::open(1, 10, 1_000, 7, 2, Some(&snapshot(&[])));
        let owned = || ["x".to_string(), "y".to_string()];
        round
            .submissions
            .push(submission("a", (0, 1), "p0", &["x"]));
        round
            .submissions
            .push(submission("b", (1, 2), "p0", &["y"]));
        round
            .submissions
            .push(submission("c", (0, 1), "p1", &["x"]));
        assert!(!round.complete(owned()));
        round
            .submissions
            .push(submission("d", (1, 2), "p1", &["y"]));
        assert!(round.complete(owned()));
    }

    #[test]
    fn receipts_carry_the_holders_capacity_and_the_time_since_the_round_opened() {
        // Deadline 1,000 ms after opening at unix ms 0.
        let round = OpenRound::open(1, 10, 1_000, 7, 2, Some(&snapshot(&[])));
        assert_eq!(round.elapsed_ms(1_000, 250), 250);
        assert_eq!(round.elapsed_ms(1_000, -5), 0);
        assert_eq!(round.capacity_of("a"), 100.0);
        assert_eq!(round.capacity_of("b"), 200.0);
        assert_eq!(round.capacity_of("nobody"), 0.0);
    }
}
