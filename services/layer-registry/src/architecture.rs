//! Which architecture the registry publishes: the configured shape (`fixed`), or one chosen
//! from live capacity and grown in depth as capacity grows (`auto`), decided by
//! `neuroshard_common::growth::next_step` with placement judging whether a shape can be held
//! with every layer at the replica target. Pure: the service calls it inside the store's
//! publish lock, with the architecture the store read back.
//!
//! Growth never reverses, so it is driven only by capacity the registry believes
//! ([`crate::trust::GrowthEvidence`]): nodes registered long enough and, with observers
//! configured, measured by one. Both the capacity read by the depth curve and the placement
//! that must hold the deeper model use those nodes alone. Genesis uses every live node.

use neuroshard_common::growth::{
    ArchitectureMode, ArchitectureState, LiveCapacity, Step, next_step,
};

use crate::placement::{NodeCapacity, place_model};
use crate::stored::StoredArchitecture;

/// The outcome for one publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The architecture to publish the assignment for (none yet: auto mode before genesis).
    pub architecture: Option<ArchitectureState>,
    /// `architecture` is new and must be stored.
    pub changed: bool,
    /// A growth is pending: start (or keep) the settle timer; false clears it.
    pub growth_pending: bool,
    /// Why there is no architecture yet, when there is none.
    pub waiting: Option<String>,
}

/// Decides the architecture for the nodes that hold layers (`live`); once there is one, only
/// the `verified` among them can make it grow.
pub fn decide(
    mode: &ArchitectureMode,
    stored: Option<&StoredArchitecture>,
    live: &[NodeCapacity],
    verified: &[NodeCapacity],
    bytes_per_param: u64,
    min_replicas: u32,
) -> Decision {
    let basis = if stored.is_some() { verified } else { live };
    let capacity = LiveCapacity {
        memory_bytes: basis
            .iter()
            .fold(0u64, |sum, n| sum.saturating_add(n.memory_bytes)),
        nodes: basis.len() as u64,
    };
    let placeable = |config: &neuroshard_common::ModelConfig| {
        place_model(config, basis, bytes_per_param, min_replicas)
            .is_ok_and(|a| a.health.is_healthy())
    };
    let current = stored.map(|s| &s.state);
    let step = next_step(
        mode,
        current,
        capacity,
        stored.and_then(|s| s.growth_pending_for_ms),
        placeable,
    );
    match step {
        Step::Publish(state) => Decision {
            architecture: Some(state),
            changed: true,
            growth_pending: false,
            waiting: None,
        },
        Step::Keep { pending } => Decision {
            architecture: current.cloned(),
            changed: false,
            growth_pending: pending.is_some(),
            waiting: None,
        },
        Step::Wait(reason) => Decision {
            architecture: current.cloned(),
            changed: false,
            growth_pending: false,
            waiting: Some(reason),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_common::ModelConfig;
    use neuroshard_common::architecture::{ArchitecturePolicy, TRAINING_BYTES_PER_PARAM};
    use neuroshard_common::growth::AutoPolicy;

    const MB: u64 = 1_000_000;

    /// Small shapes: 512-token vocabulary, and a depth curve scaled so that a few hundred MB
    /// choose a 4-layer, 256-wide model (see the worker's growth test for the same numbers).
    fn auto() -> ArchitectureMode {
        ArchitectureMode::Auto(AutoPolicy {
            shapes: ArchitecturePolicy {
                vocab_size: 512,
                max_seq_len: 64,
                depth_curve_scale: 22.0,
                ..ArchitecturePolicy::default()
            },
            genesis_nodes: 4,
            settle_ms: 0,
        })
    }

    fn nodes(n: usize, memory: u64) -> Vec<NodeCapacity> {
        (0..n)
            .map(|i| NodeCapacity {
                node_id: format!("n{i}"),
                memory_bytes: memory,
                throughput: 1.0,
            })
            .collect()
    }

    fn stored(state: &ArchitectureState) -> StoredArchitecture {
        StoredArchitecture {
            state: state.clone(),
            growth_pending_for_ms: None,
        }
    }

    #[test]
    fn auto_mode_waits_then_chooses_a_replicated_shape_then_grows() {
        let mode = auto();
        let early = decide(
            &mode,
            None,
            &nodes(3, 50 * MB),
            &[],
            TRAINING_BYTES_PER_PARAM,
            2,
        );
        assert!(early.architecture.is_none() && !early.changed);
        assert!(early.waiting.unwrap().contains("4 live nodes"));

        let genesis = decide(
            &mode,
            None,
            &nodes(4, 50 * MB),
            &[],
            TRAINING_BYTES_PER_PARAM,
            2,
        );
        assert!(genesis.changed);
        let state = genesis.architecture.unwrap();
        assert_eq!(
            (state.config.num_layers, state.config.hidden_size),
            (4, 256)
        );
        let placed = place_model(
            &state.config,
            &nodes(4, 50 * MB),
            TRAINING_BYTES_PER_PARAM,
            2,
        )
        .unwrap();
        assert!(placed.health.is_healthy());
        assert!(
            placed.spans.iter().all(|s| s.end - s.start < 4),
            "every node holds part of the model: {placed:?}"
        );

        let same = decide(
            &mode,
            Some(&stored(&state)),
            &nodes(4, 50 * MB),
            &nodes(4, 50 * MB),
            TRAINING_BYTES_PER_PARAM,
            2,
        );
        assert_eq!(same.architecture.as_ref(), Some(&state));
        assert!(!same.changed);

        // Six live nodes, but the two newcomers are not yet believed: no growth.
        let unverified = decide(
            &mode,
            Some(&stored(&state)),
            &nodes(6, 50 * MB),
            &nodes(4, 50 * MB),
            TRAINING_BYTES_PER_PARAM,
            2,
        );
        assert!(
            !unverified.changed && !unverified.growth_pending,
            "{unverified:?}"
        );

        let grown = decide(
            &mode,
            Some(&stored(&state)),
            &nodes(6, 50 * MB),
            &nodes(6, 50 * MB),
            TRAINING_BYTES_PER_PARAM,
            2,
        );
        assert!(grown.changed);
        let grown = grown.architecture.unwrap();
        assert_eq!(grown.config.num_layers, 6);
        assert_eq!(grown.config.hidden_size, 256);
        assert_eq!(grown.depths(), vec![4, 6]);
        assert!(
            place_model(
                &grown.config,
                &nodes(6, 50 * MB),
                TRAINING_BYTES_PER_PARAM,
                2
            )
            .unwrap()
            .health
            .is_healthy()
        );
    }

    #[test]
    fn fixed_mode_publishes_the_configured_model_whatever_the_capacity() {
        let config = ModelConfig::small(4096);
        let mode = ArchitectureMode::Fixed(config.clone());
        let first = decide(&mode, None, &[], &[], TRAINING_BYTES_PER_PARAM, 2);
        assert!(first.changed);
        let state = first.architecture.unwrap();
        assert_eq!(state.config, config);
        let again = decide(
            &mode,
            Some(&stored(&state)),
            &nodes(50, 1 << 40),
            &nodes(50, 1 << 40),
            TRAINING_BYTES_PER_PARAM,
            2,
        );
        assert!(!again.changed && !again.growth_pending);
    }
}
