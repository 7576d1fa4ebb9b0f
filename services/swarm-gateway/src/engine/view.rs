//! The gateway's picture of the swarm, rebuilt from each assignment snapshot the registry
//! streams: who holds which layers, where to reach them, and how healthy they are. Pure.

use neuroshard_proto::common::v1::{Architecture, Role};
use neuroshard_proto::registry::v1::{AssignmentSnapshot, NodeState};

/// One node as routing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub endpoint: String,
    /// `[start, end)` layer indices.
    pub start: u32,
    pub end: u32,
    /// As the registry sent it; [`neuroshard_common::role::wire_role_name`] names it.
    pub role: Role,
    pub state: NodeState,
    /// What the node claims.
    pub tokens_per_s: f64,
    /// What observers measured of it (0 until measured).
    pub observed_tokens_per_s: f64,
    pub memory_bytes: u64,
}

impl NodeView {
    /// Live and suspect nodes may carry traffic (suspect ones only when nothing better exists,
    /// see routing); dead and draining ones never.
    pub fn routable(&self) -> bool {
        matches!(self.state, NodeState::Live | NodeState::Suspect) && self.end > self.start
    }
}

/// The whole assignment at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwarmView {
    pub version: u64,
    pub architecture: Option<Architecture>,
    pub nodes: Vec<NodeView>,
    /// Layer copies missing to reach the replica target, summed over layers.
    pub deficit: u32,
}

impl SwarmView {
    pub fn from_snapshot(snapshot: &AssignmentSnapshot) -> Self {
        let nodes = snapshot
            .nodes
            .iter()
            .map(|n| {
                let span = n.span.unwrap_or_default();
                let capacity = n.capacity.unwrap_or_default();
                NodeView {
                    id: n.node_id.clone(),
                    endpoint: n.endpoint.clone(),
                    start: span.start,
                    end: span.end,
                    role: Role::try_from(n.role).unwrap_or(Role::Unspecified),
                    state: NodeState::try_from(n.state).unwrap_or(NodeState::Unspecified),
                    tokens_per_s: capacity.tokens_per_second,
                    observed_tokens_per_s: n.observed_tokens_per_second,
                    memory_bytes: capacity.usable_memory_bytes,
                }
            })
            .collect();
        Self {
            version: snapshot.version,
            architecture: snapshot.architecture.clone(),
            nodes,
            deficit: snapshot.deficits.iter().map(|d| d.missing).sum(),
        }
    }

    pub fn num_layers(&self) -> u32 {
        self.architecture
            .as_ref()
            .map(|a| a.num_layers)
            .unwrap_or(0)
    }

    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Node ids holding `layer` (any state), in assignment order.
    pub fn holders(&self, layer: u32) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.start <= layer && layer < n.end)
            .map(|n| n.id.clone())
            .collect()
    }
}

/// The wire name of a node state.
pub fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Live => "live",
        NodeState::Suspect => "suspect",
        NodeState::Dead => "dead",
        NodeState::Draining => "draining",
        NodeState::Unspecified => "unknown",
    }
}
