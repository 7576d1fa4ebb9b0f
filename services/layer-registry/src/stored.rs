//! What the registry reads back from its database, as plain data: each node with its
//! heartbeat age, and the published architecture with its growth timer. The store maps
//! rows into these; the pure policy (liveness, placement, the snapshot, the architecture
//! decision) reads them without depending on the database.

use neuroshard_common::growth::ArchitectureState;

/// One node as stored, with its heartbeat age measured by the database clock.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub node_id: String,
    pub endpoint: String,
    pub usable_memory_bytes: u64,
    pub device: i32,
    pub tokens_per_second: f64,
    pub draining: bool,
    pub queue_depth: u32,
    pub heartbeat_age_ms: u64,
    /// Since its last registration (database clock).
    pub registered_age_ms: u64,
    /// The latest tokens/s an observer measured of it, if any ever did.
    pub observed_tokens_per_second: Option<f64>,
    /// What its heartbeats last reported loaded: `[start, end)` of an architecture version.
    pub loaded: Option<LoadedSpan>,
    /// The span it held when its drain began (`[start, end)`), while draining.
    pub drain_span: Option<(u32, u32)>,
    /// The role it registered as preferring (wire `Role`; 0: any).
    pub preferred_role: i32,
}

#[cfg(test)]
impl StoredNode {
    /// A live node for the policy tests: `id`, 1 byte, 1 token/s, heard from just now;
    /// tests change what they look at.
    pub fn for_test(id: &str) -> Self {
        Self {
            node_id: id.into(),
            endpoint: String::new(),
            usable_memory_bytes: 1,
            device: 0,
            tokens_per_second: 1.0,
            draining: false,
            queue_depth: 0,
            heartbeat_age_ms: 0,
            registered_age_ms: 0,
            observed_tokens_per_second: None,
            loaded: None,
            drain_span: None,
            preferred_role: 0,
        }
    }
}

/// A span a node reports loaded, of one architecture version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedSpan {
    pub start: u32,
    pub end: u32,
    pub architecture_version: u64,
}

/// The architecture as stored, with how long a growth has been pending (database clock).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredArchitecture {
    pub state: ArchitectureState,
    pub growth_pending_for_ms: Option<u64>,
}
