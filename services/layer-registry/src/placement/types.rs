//! What placement takes and gives: the nodes and the model's memory costs in, the spans,
//! pipelines and per-layer holder counts out. Plain data, no search logic.

use std::fmt;

use neuroshard_common::ModelConfig;
use neuroshard_common::architecture::{embedding_parameters, head_parameters, layer_parameters};
use neuroshard_common::role::Role;

/// A live node offered for assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCapacity {
    pub node_id: String,
    pub memory_bytes: u64,
    /// Tokens per second. Only used to order nodes of equal memory.
    pub throughput: f64,
}

/// Memory footprint of the model's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerCosts {
    /// Bytes per decoder layer (weights, optimizer state, activations).
    pub layer_bytes: u64,
    /// Extra bytes for the node whose span starts at layer 0.
    pub embedding_bytes: u64,
    /// Extra bytes for the node whose span ends at the last layer.
    pub head_bytes: u64,
}

impl LayerCosts {
    /// The costs of `model`'s parts when each parameter takes `bytes_per_param` bytes.
    pub fn of_model(model: &ModelConfig, bytes_per_param: u64) -> Self {
        let bytes = |params: i64| params.max(0) as u64 * bytes_per_param;
        LayerCosts {
            layer_bytes: bytes(layer_parameters(model)),
            embedding_bytes: bytes(embedding_parameters(model)),
            head_bytes: bytes(head_parameters(model)),
        }
    }

    /// Bytes needed to hold `[start, end)` of a `num_layers`-layer model,
    /// including the embedding or head when the span touches either end.
    pub fn span_bytes(&self, num_layers: u32, start: u32, end: u32) -> u128 {
        let layers = u128::from(end.saturating_sub(start)) * u128::from(self.layer_bytes);
        let embedding = if start == 0 { self.embedding_bytes } else { 0 };
        let head = if end == num_layers {
            self.head_bytes
        } else {
            0
        };
        layers + u128::from(embedding) + u128::from(head)
    }
}

/// Layers `[start, end)` held by one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeSpan {
    pub node_id: String,
    pub start: u32,
    pub end: u32,
    pub role: Role,
}

impl NodeSpan {
    pub fn layer_count(&self) -> u32 {
        self.end - self.start
    }

    pub fn contains(&self, layer: u32) -> bool {
        self.start <= layer && layer < self.end
    }
}

/// A span a node holds now, as the last published assignment gave it: what sticky placement
/// starts from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeldSpan {
    pub node_id: String,
    pub start: u32,
    pub end: u32,
}

/// Consecutive spans covering `[0, L)` in order: one full copy of the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pipeline {
    pub stages: Vec<NodeSpan>,
}

/// A layer with fewer holders than requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerDeficit {
    pub layer: u32,
    pub holders: u32,
    pub missing: u32,
}

/// Whether every layer has `min_replicas` holders, and if not, which layers lack how many.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Health {
    Healthy,
    Degraded {
        deficits: Vec<LayerDeficit>,
        total_missing: u32,
    },
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Where every layer goes: the result of [`place`](super::place).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Every assigned node exactly once: pipeline stages first (pipeline by
    /// pipeline), then partial spans.
    pub spans: Vec<NodeSpan>,
    /// Live nodes given nothing, in internal order (memory descending).
    pub unassigned: Vec<String>,
    /// Complete, node-disjoint covers of `[0, L)`.
    pub pipelines: Vec<Pipeline>,
    /// `holders[layer]` = number of spans containing `layer`.
    pub holders: Vec<u32>,
    pub health: Health,
}

/// Inputs placement refuses: nothing about capacity, only malformed requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PlacementError {
    ZeroLayers,
    TooManyLayers { num_layers: u32, max: u32 },
    ZeroLayerBytes,
    DuplicateNodeId(String),
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::ZeroLayers => {
                write!(f, "model has zero decoder layers, nothing to assign")
            }
            PlacementError::TooManyLayers { num_layers, max } => write!(
                f,
                "model has {num_layers} decoder layers, layer assignment supports at most {max}"
            ),
            PlacementError::ZeroLayerBytes => write!(
                f,
                "layer_bytes is zero, a decoder layer must have a positive memory cost"
            ),
            PlacementError::DuplicateNodeId(id) => {
                write!(f, "node id {id:?} appears more than once in the node list")
            }
        }
    }
}

impl std::error::Error for PlacementError {}
