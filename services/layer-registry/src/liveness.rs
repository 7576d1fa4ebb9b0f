//! Liveness from heartbeat age: live, then suspect (still assigned, avoided by routing), then
//! dead (its layers are reassigned). Draining overrides: the node serves but holds nothing.

use neuroshard_proto::registry::v1::NodeState;

/// Heartbeat age thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
}

impl LivenessPolicy {
    pub fn state(&self, heartbeat_age_ms: u64, draining: bool) -> NodeState {
        if heartbeat_age_ms > self.dead_after_ms {
            NodeState::Dead
        } else if draining {
            NodeState::Draining
        } else if heartbeat_age_ms > self.suspect_after_ms {
            NodeState::Suspect
        } else {
            NodeState::Live
        }
    }
}

/// Whether a node in `state` is given layers.
pub fn holds_layers(state: NodeState) -> bool {
    matches!(state, NodeState::Live | NodeState::Suspect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_draining() {
        let p = LivenessPolicy {
            suspect_after_ms: 15_000,
            dead_after_ms: 30_000,
        };
        assert_eq!(p.state(0, false), NodeState::Live);
        assert_eq!(p.state(15_000, false), NodeState::Live);
        assert_eq!(p.state(15_001, false), NodeState::Suspect);
        assert_eq!(p.state(30_001, false), NodeState::Dead);
        assert_eq!(p.state(10, true), NodeState::Draining);
        assert_eq!(p.state(40_000, true), NodeState::Dead);
        assert!(holds_layers(NodeState::Suspect));
        assert!(!holds_layers(NodeState::Draining));
        assert!(!holds_layers(NodeState::Dead));
    }
}
