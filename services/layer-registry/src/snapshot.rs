//! Builds the published assignment from stored nodes: liveness, then placement over the nodes
//! that hold layers, then the protobuf snapshot. Pure: the store calls it under its lock.

use neuroshard_common::ModelConfig;
use neuroshard_common::architecture::{embedding_parameters, head_parameters, layer_parameters};
use neuroshard_common::growth::ArchitectureState;
use neuroshard_proto::common::v1::{LayerSpan, Role as ProtoRole};
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, Capacity, LayerDeficit, NodeAssignment, NodeState, Pipeline,
};

use crate::assignment::{self, Health, LayerCosts, NodeCapacity, Role};
use crate::liveness::{LivenessPolicy, holds_layers};
use crate::store::NodeRow;

/// Byte costs of the model's parts for placement.
pub fn layer_costs(model: &ModelConfig, bytes_per_param: u64) -> LayerCosts {
    let bytes = |params: i64| params.max(0) as u64 * bytes_per_param;
    LayerCosts {
        layer_bytes: bytes(layer_parameters(model)),
        embedding_bytes: bytes(embedding_parameters(model)),
        head_bytes: bytes(head_parameters(model)),
    }
}

fn proto_role(role: Role) -> ProtoRole {
    match role {
        Role::Driver => ProtoRole::Driver,
        Role::Worker => ProtoRole::Worker,
        Role::Validator => ProtoRole::Validator,
        Role::Full => ProtoRole::Full,
    }
}

/// Each stored node's liveness, and the capacities of those that are given layers.
pub fn live_capacities(
    nodes: &[NodeRow],
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
            throughput: n.tokens_per_second,
        })
        .collect();
    (states, capacities)
}

/// Places `model` on `capacities`.
pub fn place(
    model: &ModelConfig,
    capacities: &[NodeCapacity],
    bytes_per_param: u64,
    min_replicas: u32,
) -> Result<assignment::Assignment, neuroshard_common::Error> {
    assignment::assign(
        u32::try_from(model.num_layers.max(0)).unwrap_or(u32::MAX),
        &layer_costs(model, bytes_per_param),
        capacities,
        min_replicas,
    )
    .map_err(|e| neuroshard_common::Error::internal(format!("placement: {e}")))
}

/// The assignment for `nodes` with liveness `states` (from [`live_capacities`]) of the
/// `architecture` (none yet: nothing is placed), version left 0: the store numbers published
/// snapshots. Queue depths are left out so that heartbeats alone do not produce a new version.
pub fn build(
    nodes: &[NodeRow],
    states: &[NodeState],
    capacities: &[NodeCapacity],
    architecture: Option<&ArchitectureState>,
    bytes_per_param: u64,
    min_replicas: u32,
) -> Result<AssignmentSnapshot, neuroshard_common::Error> {
    let placed = match architecture {
        Some(arch) => place(&arch.config, capacities, bytes_per_param, min_replicas)?,
        None => assignment::Assignment {
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
                role: span.map_or(ProtoRole::Unspecified, |s| proto_role(s.role)) as i32,
                capacity: Some(Capacity {
                    usable_memory_bytes: n.usable_memory_bytes,
                    device: n.device,
                    tokens_per_second: n.tokens_per_second,
                }),
                queue_depth: 0,
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
