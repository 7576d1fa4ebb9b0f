//! Builds the published assignment from stored nodes: liveness, then placement over the nodes
//! that hold layers (sticky: starting from the spans the last published assignment gave them,
//! unless the architecture changed since), then the protobuf snapshot. Pure: the service calls
//! it inside the store's publish lock, with the nodes and the assignment the store read back.

use neuroshard_common::growth::ArchitectureState;
use neuroshard_proto::common::v1::{LayerSpan, Role as WireRole};
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, Capacity, LayerDeficit, NodeAssignment, NodeState, Pipeline,
};

use crate::liveness::{LivenessPolicy, holds_layers};
use std::collections::BTreeMap;

use neuroshard_common::role::Role;

use crate::placement::{
    Health, HeldSpan, LayerCosts, NodeCapacity, Placement, place_model_sticky, preference,
};
use crate::stored::StoredNode;
use crate::trust::effective_tokens_per_second;

/// Each stored node's liveness, and the capacities of those that are given layers.
pub fn live_capacities(
    nodes: &[StoredNode],
    liveness: LivenessPolicy,
) -> (Vec<NodeState>, Vec<NodeCapacity>) {
    let states: Vec<NodeState> = nodes
        .iter()
        .map(|n| liveness.state(n.heartbeat_age_ms, n.draining))
        .collect();
    let capacities = nodes
        .iter()
        .zip(&states)
        .filter(|(_, s)| holds_layers(**s))
        .map(|(n, _)| NodeCapacity {
            node_id: n.node_id.clone(),
            memory_bytes: n.usable_memory_bytes,
            throughput: effective_tokens_per_second(
                n.tokens_per_second,
                n.observed_tokens_per_second,
            ),
        })
        .collect();
    (states, capacities)
}

/// The spans the `previous` assignment gave its nodes, if it was made for the same version of
/// `architecture`: what sticky placement starts from. A changed architecture (genesis, growth,
/// a new fixed shape) starts from nothing, so it is placed from scratch.
pub fn held_spans(
    previous: Option<&AssignmentSnapshot>,
    architecture: Option<&ArchitectureState>,
) -> Vec<HeldSpan> {
    let (Some(previous), Some(architecture)) = (previous, architecture) else {
        return Vec::new();
    };
    if previous.architecture.as_ref().map(|a| a.version) != Some(architecture.version) {
        return Vec::new();
    }
    previous
        .nodes
        .iter()
        .filter_map(|n| {
            n.span.map(|s| HeldSpan {
                node_id: n.node_id.clone(),
                start: s.start,
                end: s.end,
            })
        })
        .collect()
}

/// The assignment for `nodes` with liveness `states` (from [`live_capacities`]) of the
/// `architecture` (none yet: nothing is placed), starting from the `held` spans (from
/// [`held_spans`]), version left 0: the store numbers published snapshots. Queue depths are
/// left out so that heartbeats alone do not produce a new version.
pub fn build(
    nodes: &[StoredNode],
    states: &[NodeState],
    capacities: &[NodeCapacity],
    architecture: Option<&ArchitectureState>,
    held: &[HeldSpan],
    bytes_per_param: u64,
    min_replicas: u32,
) -> Result<AssignmentSnapshot, neuroshard_common::Error> {
    let placed = match architecture {
        Some(arch) => {
            let mut placed = place_model_sticky(
                &arch.config,
                capacities,
                held,
                bytes_per_param,
                min_replicas,
            )?;
            // Preferences are honoured where a trade of spans costs nothing.
            let preferred: BTreeMap<String, Role> = nodes
                .iter()
                .filter_map(|n| Some((n.node_id.clone(), Role::from_wire(n.preferred_role)?)))
                .collect();
            if !preferred.is_empty() {
                preference::honour(
                    &mut placed,
                    capacities,
                    &preferred,
                    u32::try_from(arch.config.num_layers.max(0)).unwrap_or(u32::MAX),
                    &LayerCosts::of_model(&arch.config, bytes_per_param),
                );
            }
            placed
        }
        None => Placement {
            spans: Vec::new(),
            unassigned: capacities.iter().map(|c| c.node_id.clone()).collect(),
            pipelines: Vec::new(),
            holders: Vec::new(),
            health: Health::Healthy,
        },
    };
    let node_assignments = nodes
        .iter()
        .zip(states)
        .map(|(n, state)| {
            let span = placed.spans.iter().find(|s| s.node_id == n.node_id);
            NodeAssignment {
                node_id: n.node_id.clone(),
                endpoint: n.endpoint.clone(),
                state: *state as i32,
                span: span.map(|s| LayerSpan {
                    start: s.start,
                    end: s.end,
                }),
                role: span.map_or(WireRole::Unspecified, |s| s.role.to_wire()) as i32,
                capacity: Some(Capacity {
                    usable_memory_bytes: n.usable_memory_bytes,
                    device: n.device,
                    tokens_per_second: n.tokens_per_second,
                }),
                queue_depth: 0,
                observed_tokens_per_second: n.observed_tokens_per_second.unwrap_or(0.0),
            }
        })
        .collect();
    let deficits = match &placed.health {
        Health::Healthy => Vec::new(),
        Health::Degraded { deficits, .. } => deficits
            .iter()
            .map(|d| LayerDeficit {
                layer: d.layer,
                holders: d.holders,
                missing: d.missing,
            })
            .collect(),
    };
    Ok(AssignmentSnapshot {
        version: 0,
        architecture: architecture.map(ArchitectureState::to_proto),
        nodes: node_assignments,
        pipelines: placed
            .pipelines
            .iter()
            .map(|p| Pipeline {
                node_ids: p.stages.iter().map(|s| s.node_id.clone()).collect(),
            })
            .collect(),
        deficits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_common::ModelConfig;
    use neuroshard_common::architecture::TRAINING_BYTES_PER_PARAM;

    const LIVENESS: LivenessPolicy = LivenessPolicy {
        suspect_after_ms: 15_000,
        dead_after_ms: 30_000,
    };

    fn node(id: &str, memory: u64, heartbeat_age_ms: u64) -> StoredNode {
        StoredNode {
            endpoint: format!("http://{id}:7500"),
            usable_memory_bytes: memory,
            tokens_per_second: 100.0,
            queue_depth: 3,
            heartbeat_age_ms,
            registered_age_ms: heartbeat_age_ms,
            ..StoredNode::for_test(id)
        }
    }

    #[test]
    fn dead_nodes_are_listed_but_hold_nothing() {
        let nodes = [node("a", 1 << 40, 0), node("dead", 1 << 40, 60_000)];
        let (states, live) = live_capacities(&nodes, LIVENESS);
        assert_eq!(states, vec![NodeState::Live, NodeState::Dead]);
        assert_eq!(live.len(), 1);
        let architecture = ArchitectureState::genesis(ModelConfig::small(4096));
        let snapshot = build(
            &nodes,
            &states,
            &live,
            Some(&architecture),
            &[],
            TRAINING_BYTES_PER_PARAM,
            1,
        )
        .unwrap();
        let roles: Vec<i32> = snapshot.nodes.iter().map(|n| n.role).collect();
        assert_eq!(
            roles,
            vec![WireRole::Full as i32, WireRole::Unspecified as i32]
        );
        assert!(snapshot.nodes.iter().all(|n| n.queue_depth == 0));
        assert_eq!(snapshot.pipelines.len(), 1);
        assert!(snapshot.deficits.is_empty());
    }

    /// The published assignment is the next one's starting point while the architecture
    /// stays; a growth starts over. Observed throughput is published and lowers the claim
    /// placement orders nodes by.
    #[test]
    fn spans_carry_over_within_one_architecture_version() {
        let mut nodes: Vec<StoredNode> = (0..4)
            .map(|i| node(&format!("n{i}"), 60_000_000, 0))
            .collect();
        nodes[1].observed_tokens_per_second = Some(5.0);
        let (states, live) = live_capacities(&nodes, LIVENESS);
        assert_eq!(live[1].throughput, 5.0);
        let genesis = ArchitectureState::genesis(ModelConfig::small(4096));
        let first = build(
            &nodes,
            &states,
            &live,
            Some(&genesis),
            &[],
            TRAINING_BYTES_PER_PARAM,
            2,
        )
        .unwrap();
        assert_eq!(first.nodes[1].observed_tokens_per_second, 5.0);
        assert_eq!(first.nodes[0].observed_tokens_per_second, 0.0);
        let held = held_spans(Some(&first), Some(&genesis));
        assert_eq!(held.len(), 4);
        // Swap two nodes' spans by hand: a sticky rebuild keeps them as they are.
        let mut swapped = held.clone();
        let (a, b) = (swapped[0].clone(), swapped[3].clone());
        swapped[0].start = b.start;
        swapped[0].end = b.end;
        swapped[3].start = a.start;
        swapped[3].end = a.end;
        let again = build(
            &nodes,
            &states,
            &live,
            Some(&genesis),
            &swapped,
            TRAINING_BYTES_PER_PARAM,
            2,
        )
        .unwrap();
        let span_of = |s: &AssignmentSnapshot, id: &str| {
            s.nodes.iter().find(|n| n.node_id == id).unwrap().span
        };
        assert_eq!(
            span_of(&again, &a.node_id).map(|s| (s.start, s.end)),
            Some((b.start, b.end))
        );

        let grown = genesis.grown_to(6).unwrap();
        assert!(held_spans(Some(&first), Some(&grown)).is_empty());
        assert!(held_spans(None, Some(&genesis)).is_empty());
        assert!(held_spans(Some(&first), None).is_empty());
    }

    #[test]
    fn without_an_architecture_nothing_is_placed() {
        let nodes = [node("a", 1 << 40, 0)];
        let (states, live) = live_capacities(&nodes, LIVENESS);
        let snapshot = build(
            &nodes,
            &states,
            &live,
            None,
            &[],
            TRAINING_BYTES_PER_PARAM,
            2,
        )
        .unwrap();
        assert!(snapshot.architecture.is_none());
        assert!(snapshot.nodes[0].span.is_none());
        assert!(snapshot.pipelines.is_empty() && snapshot.deficits.is_empty());
    }
}
