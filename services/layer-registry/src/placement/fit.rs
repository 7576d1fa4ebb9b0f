//! A node's memory turned into whole layers per position, the unit both searches count in.

use super::types::LayerCosts;

/// Node costs above this are clamped so that per-pipeline sums cannot
/// overflow; such nodes are interchangeable for every purpose here anyway.
const COST_CAP: u64 = 1 << 24;

/// Layer capacities of one node in each position, capped at `L`: how many layers it fits as
/// a worker, beside the embedding (driver), beside the head (validator), and whether it holds
/// the whole model. Both searches and the layout work on these, never on bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Caps {
    /// Memory in whole layers (clamped); what using this node costs.
    pub(super) cost: u32,
    pub(super) worker: u32,
    pub(super) driver: u32,
    pub(super) validator: u32,
    pub(super) full: bool,
}

impl Caps {
    pub(super) fn of(memory: u64, num_layers: u32, costs: &LayerCosts) -> Self {
        let lb = costs.layer_bytes;
        let l = u64::from(num_layers);
        let layers = |bytes: u64| (bytes / lb).min(l) as u32;
        // Any node at least this large can hold the whole model alone, so
        // larger ones are functionally identical and may share one cost.
        let full_size = l
            .saturating_add(costs.embedding_bytes.div_ceil(lb))
            .saturating_add(costs.head_bytes.div_ceil(lb))
            .saturating_add(1)
            .min(COST_CAP);
        Caps {
            cost: (memory / lb).min(full_size) as u32,
            worker: layers(memory),
            driver: memory.checked_sub(costs.embedding_bytes).map_or(0, layers),
            validator: memory.checked_sub(costs.head_bytes).map_or(0, layers),
            full: u128::from(memory) >= costs.span_bytes(num_layers, 0, num_layers),
        }
    }
}
