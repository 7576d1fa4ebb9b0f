//! What the registry believes of what a node says about itself. Pure: no I/O.
//!
//! - **Admission**: open, or an allow-list of node ids (refused: `PERMISSION_DENIED` naming
//!   the policy, never the list).
//! - **Caps**: a claimed memory or tokens/s above the configured cap is clamped to it. The
//!   node is still admitted (an honest big machine contributes up to the cap), but no claim
//!   can attract more layers or traffic than the cap allows.
//! - **Measured throughput**: once an observer (a gateway named in the config) has reported
//!   what it measured of a node, routing and placement use min(claim, observed), so a node
//!   cannot keep traffic by claiming more than it delivers; a node never gains from a
//!   measurement above its claim.
//! - **Growth**: in auto mode the model only grows on capacity the registry has reason to
//!   believe: nodes registered for at least `growth_min_node_age_ms`, and, when observers are
//!   configured, measured by one. Growth never reverses (trained layers are kept), so keys
//!   that register briefly, or claim memory and never serve, must not drive it. Genesis uses
//!   every live node (nothing can be observed before a model is placed); its shape is
//!   bounded by what placement can hold at that moment and the caps.

use std::collections::BTreeSet;

use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_proto::registry::v1::{NodeObservation, ObservationsRequest};

use crate::placement::NodeCapacity;
use crate::stored::StoredNode;

/// Most node observations one report may carry.
pub const MAX_OBSERVATIONS: usize = 4096;

/// Refuses `node_id` unless admission is open (`admitted` is `None`) or lists it.
pub fn admit(admitted: Option<&BTreeSet<String>>, node_id: &str) -> Result<()> {
    match admitted {
        Some(list) if !list.contains(node_id) => Err(Error::new(
            ErrorKind::PermissionDenied,
            "admission: this registry admits only the nodes on its allow-list (admission = \"allow_list\")",
        )),
        _ => Ok(()),
    }
}

/// The caps on what a node may claim.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClaimCaps {
    pub max_usable_memory_bytes: u64,
    pub max_tokens_per_second: f64,
}

/// A node's claims after the caps, and whether either was lowered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Claims {
    pub usable_memory_bytes: u64,
    pub tokens_per_second: f64,
    pub clamped: bool,
}

impl ClaimCaps {
    /// `memory` and `tokens_per_second` (already checked finite and non-negative) clamped.
    pub fn clamp(&self, memory: u64, tokens_per_second: f64) -> Claims {
        let usable_memory_bytes = memory.min(self.max_usable_memory_bytes);
        let capped_tps = tokens_per_second.min(self.max_tokens_per_second);
        Claims {
            usable_memory_bytes,
            tokens_per_second: capped_tps,
            clamped: usable_memory_bytes < memory || capped_tps < tokens_per_second,
        }
    }
}

/// The tokens/s routing and placement use: the claim, or the measurement when there is one
/// and it is lower. A measurement of 0 (or none) means "not measured".
pub fn effective_tokens_per_second(claimed: f64, observed: Option<f64>) -> f64 {
    match observed {
        Some(seen) if seen > 0.0 => claimed.min(seen),
        _ => claimed,
    }
}

/// Checks an observer's report: at most [`MAX_OBSERVATIONS`] entries, each naming a node and
/// carrying a finite, non-negative figure drawn from at least one hop.
pub fn validate_observations(request: &ObservationsRequest) -> Result<&[NodeObservation]> {
    if request.nodes.len() > MAX_OBSERVATIONS {
        return Err(Error::invalid_argument(format!(
            "nodes: {} observations in one report, at most {MAX_OBSERVATIONS}",
            request.nodes.len()
        )));
    }
    for (i, node) in request.nodes.iter().enumerate() {
        if node.node_id.is_empty() {
            return Err(Error::invalid_argument(format!(
                "nodes[{i}].node_id: missing"
            )));
        }
        if !(node.tokens_per_second.is_finite() && node.tokens_per_second >= 0.0) {
            return Err(Error::invalid_argument(format!(
                "nodes[{i}].tokens_per_second: must be a finite number >= 0"
            )));
        }
        if node.samples == 0 {
            return Err(Error::invalid_argument(format!(
                "nodes[{i}].samples: a measurement needs at least one hop"
            )));
        }
    }
    Ok(&request.nodes)
}

/// What capacity may drive growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowthEvidence {
    pub min_node_age_ms: u64,
    /// Whether any observer is configured; then only observed nodes count.
    pub observers_configured: bool,
}

impl GrowthEvidence {
    pub fn counts(&self, node: &StoredNode) -> bool {
        node.registered_age_ms >= self.min_node_age_ms
            && (!self.observers_configured || node.observed_tokens_per_second.is_some())
    }

    /// The capacities in `live` (nodes given layers) whose nodes count for growth.
    pub fn verified(&self, nodes: &[StoredNode], live: &[NodeCapacity]) -> Vec<NodeCapacity> {
        live.iter()
            .filter(|c| {
                nodes
                    .iter()
                    .any(|n| n.node_id == c.node_id && self.counts(n))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_names_the_policy_not_the_list() {
        let list: BTreeSet<String> = ["aa".repeat(20)].into_iter().collect();
        admit(None, "anyone").unwrap();
        admit(Some(&list), &"aa".repeat(20)).unwrap();
        let err = admit(Some(&list), &"bb".repeat(20)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        assert!(err.message.contains("allow_list"), "{err}");
        assert!(!err.message.contains(&"aa".repeat(20)), "{err}");
    }

    #[test]
    fn claims_above_the_caps_are_clamped() {
        let caps = ClaimCaps {
            max_usable_memory_bytes: 1000,
            max_tokens_per_second: 50.0,
        };
        assert_eq!(
            caps.clamp(999, 50.0),
            Claims {
                usable_memory_bytes: 999,
                tokens_per_second: 50.0,
                clamped: false
            }
        );
        let big = caps.clamp(u64::MAX, 1e12);
        assert_eq!(
            (big.usable_memory_bytes, big.tokens_per_second),
            (1000, 50.0)
        );
        assert!(big.clamped);
    }

    #[test]
    fn measured_throughput_only_ever_lowers_a_claim() {
        assert_eq!(effective_tokens_per_second(100.0, None), 100.0);
        assert_eq!(effective_tokens_per_second(100.0, Some(0.0)), 100.0);
        assert_eq!(effective_tokens_per_second(100.0, Some(7.5)), 7.5);
        assert_eq!(effective_tokens_per_second(100.0, Some(500.0)), 100.0);
    }

    #[test]
    fn reports_are_checked_entry_by_entry() {
        let ok = NodeObservation {
            node_id: "n".into(),
            tokens_per_second: 12.0,
            samples: 3,
        };
        let report = |nodes: Vec<NodeObservation>| ObservationsRequest { nodes };
        assert_eq!(
            validate_observations(&report(vec![ok.clone()]))
                .unwrap()
                .len(),
            1
        );
        for (bad, field) in [
            (
                NodeObservation {
                    tokens_per_second: f64::NAN,
                    ..ok.clone()
                },
                "nodes[1].tokens_per_second",
            ),
            (
                NodeObservation {
                    samples: 0,
                    ..ok.clone()
                },
                "nodes[1].samples",
            ),
            (
                NodeObservation {
                    node_id: String::new(),
                    ..ok.clone()
                },
                "nodes[1].node_id",
            ),
        ] {
            let err = validate_observations(&report(vec![ok.clone(), bad])).unwrap_err();
            assert!(err.message.contains(field), "{err}");
        }
        let flood = report(vec![ok; MAX_OBSERVATIONS + 1]);
        assert!(validate_observations(&flood).is_err());
    }

    fn stored(id: &str, age_ms: u64, observed: Option<f64>) -> StoredNode {
        StoredNode {
            registered_age_ms: age_ms,
            observed_tokens_per_second: observed,
            ..StoredNode::for_test(id)
        }
    }

    #[test]
    fn growth_counts_only_old_and_observed_nodes() {
        let nodes = [
            stored("old", 10_000, None),
            stored("young", 10, Some(5.0)),
            stored("seen", 10_000, Some(5.0)),
        ];
        let live: Vec<NodeCapacity> = nodes
            .iter()
            .map(|n| NodeCapacity {
                node_id: n.node_id.clone(),
                memory_bytes: 1,
                throughput: 1.0,
            })
            .collect();
        let ids = |e: GrowthEvidence| -> Vec<String> {
            e.verified(&nodes, &live)
                .into_iter()
                .map(|c| c.node_id)
                .collect()
        };
        let by_age = GrowthEvidence {
            min_node_age_ms: 1_000,
            observers_configured: false,
        };
        assert_eq!(ids(by_age), vec!["old", "seen"]);
        let observed = GrowthEvidence {
            observers_configured: true,
            ..by_age
        };
        assert_eq!(ids(observed), vec!["seen"]);
    }
}
