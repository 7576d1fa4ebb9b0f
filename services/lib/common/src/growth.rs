//! Depth growth of a live swarm's model, as pure logic: the architecture state the registry
//! publishes (shape, version, growth history), which architecture to publish next for the
//! live capacity, and how layer indices map across growth. No I/O: the registry keeps the
//! state in PostgreSQL and calls [`next_step`] under its publish lock; workers ask
//! [`ArchitectureState`] which of their layers are new.
//!
//! **Index mapping.** Growth appends layers at the end of the stack, after the last layer and
//! before the final norm and LM head (DESIGN §4). Existing layers keep their indices, so
//! their tensor names, checkpoints and the weights nodes hold stay valid. The growth from
//! `from_layers` to `to_layers` adds layers `[from_layers, to_layers)`, initialised as identity
//! blocks (zero output projections), which leaves the network's function unchanged. Whether a
//! layer is new is therefore a function of its index alone: below the first growth's
//! `from_layers` it is a genesis layer, otherwise the growth whose range holds it added it.
//!
//! **When to grow** (auto mode). The genesis shape is `architecture_for` the live capacity
//! once `genesis_nodes` nodes are live, lowered to the deepest shape that placement can hold
//! with every layer replicated. Later, `grown_depth` (with its hysteresis band) proposes a
//! deeper model of the same width; the deepest proposal that placement can hold replicated is
//! adopted once capacity has supported growth without interruption for `settle_ms`, so a node
//! that joins for a moment does not grow the model. Depth never shrinks, and width, heads and
//! vocabulary never change once published: layers hold trained weights.

use neuroshard_proto::common::v1::{Architecture, DepthGrowth};

use crate::architecture::ArchitecturePolicy;
use crate::error::{Error, Result};
use crate::model_config::ModelConfig;

/// One growth: layers `[from_layers, to_layers)` were appended, producing `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowthRecord {
    pub from_layers: i64,
    pub to_layers: i64,
    pub version: u64,
}

/// The published architecture: shape, version (1 at genesis, +1 per change) and every
/// growth since genesis.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchitectureState {
    pub config: ModelConfig,
    pub version: u64,
    pub growth: Vec<GrowthRecord>,
}

impl ArchitectureState {
    /// A first architecture, never grown.
    pub fn genesis(config: ModelConfig) -> Self {
        Self {
            config,
            version: 1,
            growth: Vec::new(),
        }
    }

    /// Depth at genesis: layers below it existed from the start.
    pub fn genesis_layers(&self) -> i64 {
        self.growth
            .first()
            .map_or(self.config.num_layers, |g| g.from_layers)
    }

    /// Whether `layer` was added by a growth (identity-initialised) rather than at genesis.
    pub fn is_grown_layer(&self, layer: i64) -> bool {
        layer >= self.genesis_layers()
    }

    /// Every depth the model has had, genesis first, the current one last.
    pub fn depths(&self) -> Vec<i64> {
        std::iter::once(self.genesis_layers())
            .chain(self.growth.iter().map(|g| g.to_layers))
            .collect()
    }

    /// The state after appending layers up to `layers` (version + 1).
    pub fn grown_to(&self, layers: i64) -> Result<Self> {
        if layers <= self.config.num_layers {
            return Err(Error::invalid_argument(format!(
                "growth must add layers: {} -> {layers}",
                self.config.num_layers
            )));
        }
        let version = self.version + 1;
        let mut growth = self.growth.clone();
        growth.push(GrowthRecord {
            from_layers: self.config.num_layers,
            to_layers: layers,
            version,
        });
        Ok(Self {
            config: ModelConfig {
                num_layers: layers,
                ..self.config.clone()
            },
            version,
            growth,
        })
    }

    /// Checks that the shape is valid and the history is a chain ending at the current depth
    /// with increasing versions (state read from the wire or the database).
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        if self.version == 0 {
            return Err(Error::invalid_argument(
                "architecture.version: must be at least 1",
            ));
        }
        let mut depth = self.genesis_layers();
        let mut version = 0;
        for (i, g) in self.growth.iter().enumerate() {
            if g.from_layers != depth || g.to_layers <= g.from_layers || g.version <= version {
                return Err(Error::invalid_argument(format!(
                    "architecture.growth[{i}]: {} -> {} at version {} does not follow depth {depth} at version {version}",
                    g.from_layers, g.to_layers, g.version
                )));
            }
            depth = g.to_layers;
            version = g.version;
        }
        if depth != self.config.num_layers || version > self.version || depth < 1 {
            return Err(Error::invalid_argument(format!(
                "architecture.growth: ends at {depth} layers (version {version}), but the model has {} layers at version {}",
                self.config.num_layers, self.version
            )));
        }
        Ok(())
    }

    /// The wire form.
    pub fn to_proto(&self) -> Architecture {
        let u = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        let c = &self.config;
        Architecture {
            vocab_size: u(c.vocab_size),
            hidden_size: u(c.hidden_size),
            num_layers: u(c.num_layers),
            num_heads: u(c.num_heads),
            num_kv_heads: u(c.num_kv_heads),
            intermediate_size: u(c.intermediate_size),
            rope_theta: c.rope_theta,
            rms_eps: c.rms_eps,
            max_seq_len: u(c.max_seq_len),
            version: self.version,
            growth: self
                .growth
                .iter()
                .map(|g| DepthGrowth {
                    from_layers: u(g.from_layers),
                    to_layers: u(g.to_layers),
                    version: g.version,
                })
                .collect(),
        }
    }

    /// From the wire form, validated.
    pub fn from_proto(arch: &Architecture) -> Result<Self> {
        let state = Self {
            config: ModelConfig {
                vocab_size: i64::from(arch.vocab_size),
                hidden_size: i64::from(arch.hidden_size),
                num_layers: i64::from(arch.num_layers),
                num_heads: i64::from(arch.num_heads),
                num_kv_heads: i64::from(arch.num_kv_heads),
                intermediate_size: i64::from(arch.intermediate_size),
                rope_theta: arch.rope_theta,
                rms_eps: arch.rms_eps,
                max_seq_len: i64::from(arch.max_seq_len),
            },
            version: arch.version,
            growth: arch
                .growth
                .iter()
                .map(|g| GrowthRecord {
                    from_layers: i64::from(g.from_layers),
                    to_layers: i64::from(g.to_layers),
                    version: g.version,
                })
                .collect(),
        };
        state.validate()?;
        Ok(state)
    }
}

/// How the registry chooses the architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchitectureMode {
    /// Exactly this shape, never grown: serving a given trained checkpoint.
    Fixed(ModelConfig),
    /// From live capacity, growing in depth as capacity grows.
    Auto(AutoPolicy),
}

/// Auto mode's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoPolicy {
    /// Shapes, the depth curve and its hysteresis.
    pub shapes: ArchitecturePolicy,
    /// Live nodes needed before the genesis shape is chosen (width is fixed from then on).
    pub genesis_nodes: u64,
    /// How long capacity must keep supporting a growth before it happens.
    pub settle_ms: u64,
}

/// What the nodes that hold layers offer together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveCapacity {
    pub memory_bytes: u64,
    pub nodes: u64,
}

/// What to publish next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// No architecture can be chosen yet (auto mode before genesis); says why.
    Wait(String),
    /// Publish this architecture (genesis, a growth, or a changed fixed shape).
    Publish(ArchitectureState),
    /// Keep the current architecture. `pending` is a depth the capacity supports but has not
    /// yet supported for `settle_ms`: the settle timer runs while it is `Some` and restarts
    /// after a `None`.
    Keep { pending: Option<i64> },
}

/// The next architecture step for `capacity`, given the `current` state and how long a growth
/// has been pending (`None`: not pending). `placeable(config)` says whether placement can hold
/// `config` with every layer at the replica target on the live nodes.
pub fn next_step(
    mode: &ArchitectureMode,
    current: Option<&ArchitectureState>,
    capacity: LiveCapacity,
    pending_for_ms: Option<u64>,
    placeable: impl Fn(&ModelConfig) -> bool,
) -> Step {
    match (mode, current) {
        (ArchitectureMode::Fixed(config), Some(state)) if &state.config == config => {
            Step::Keep { pending: None }
        }
        (ArchitectureMode::Fixed(config), state) => Step::Publish(ArchitectureState {
            config: config.clone(),
            version: state.map_or(1, |s| s.version + 1),
            growth: Vec::new(),
        }),
        (ArchitectureMode::Auto(policy), None) => genesis(policy, capacity, placeable),
        (ArchitectureMode::Auto(policy), Some(state)) => {
            growth(policy, state, capacity, pending_for_ms, placeable)
        }
    }
}

fn genesis(
    policy: &AutoPolicy,
    capacity: LiveCapacity,
    placeable: impl Fn(&ModelConfig) -> bool,
) -> Step {
    let needed = policy.genesis_nodes.max(policy.shapes.replicas);
    if capacity.nodes < needed {
        return Step::Wait(format!(
            "waiting for {needed} live nodes to choose the architecture, {} so far",
            capacity.nodes
        ));
    }
    let largest = match policy
        .shapes
        .architecture_for(capacity.memory_bytes, capacity.nodes)
    {
        Ok(arch) => arch.config.num_layers,
        Err(e) => return Step::Wait(e.message),
    };
    (1..=largest)
        .rev()
        .map(|layers| policy.shapes.shape(layers))
        .find(|config| placeable(config))
        .map_or_else(
            || {
                Step::Wait(format!(
                    "no shape of at most {largest} layers can be placed with {} replicas of every layer",
                    policy.shapes.replicas
                ))
            },
            |config| Step::Publish(ArchitectureState::genesis(config)),
        )
}

fn growth(
    policy: &AutoPolicy,
    state: &ArchitectureState,
    capacity: LiveCapacity,
    pending_for_ms: Option<u64>,
    placeable: impl Fn(&ModelConfig) -> bool,
) -> Step {
    let current = state.config.num_layers;
    let Some(target) =
        policy
            .shapes
            .grown_depth(&state.config, capacity.memory_bytes, capacity.nodes)
    else {
        return Step::Keep { pending: None };
    };
    let smallest = current + ArchitecturePolicy::growth_step(current);
    let deeper = |layers| ModelConfig {
        num_layers: layers,
        ..state.config.clone()
    };
    let Some(layers) = (smallest..=target).rev().find(|&l| placeable(&deeper(l))) else {
        return Step::Keep { pending: None };
    };
    let settled = match pending_for_ms {
        Some(age) => age >= policy.settle_ms,
        None => policy.settle_ms == 0,
    };
    if !settled {
        return Step::Keep {
            pending: Some(layers),
        };
    }
    match state.grown_to(layers) {
        Ok(grown) => Step::Publish(grown),
        // Unreachable (layers > current), but a refusal to grow is the safe reading.
        Err(_) => Step::Keep { pending: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::GB;

    fn policy(settle_ms: u64) -> AutoPolicy {
        AutoPolicy {
            shapes: ArchitecturePolicy::default(),
            genesis_nodes: 4,
            settle_ms,
        }
    }

    fn cap(memory_bytes: u64, nodes: u64) -> LiveCapacity {
        LiveCapacity {
            memory_bytes,
            nodes,
        }
    }

    fn auto(p: &AutoPolicy) -> ArchitectureMode {
        ArchitectureMode::Auto(p.clone())
    }

    fn published(step: Step) -> ArchitectureState {
        match step {
            Step::Publish(state) => state,
            other => panic!("expected a new architecture, got {other:?}"),
        }
    }

    /// Smallest memory (to 0.1%) at which `state` would grow with `nodes` nodes.
    fn growth_threshold(p: &AutoPolicy, state: &ArchitectureState, nodes: u64) -> u64 {
        let (mut low, mut high) = (1u64, 1u64 << 50);
        while high - low > low / 1000 {
            let mid = low + (high - low) / 2;
            if p.shapes.grown_depth(&state.config, mid, nodes).is_some() {
                high = mid;
            } else {
                low = mid;
            }
        }
        high
    }

    #[test]
    fn genesis_waits_for_enough_nodes_then_takes_architecture_for() {
        let p = policy(0);
        let step = next_step(&auto(&p), None, cap(40 * GB, 3), None, |_| true);
        assert!(
            matches!(&step, Step::Wait(why) if why.contains("4 live nodes")),
            "{step:?}"
        );
        let state = published(next_step(&auto(&p), None, cap(40 * GB, 10), None, |_| true));
        let expected = p.shapes.architecture_for(40 * GB, 10).unwrap().config;
        assert_eq!(state, ArchitectureState::genesis(expected));
        assert_eq!(
            (state.config.num_layers, state.config.hidden_size),
            (16, 1024)
        );
    }

    #[test]
    fn genesis_lowers_the_depth_until_placement_holds_it() {
        let p = policy(0);
        let state = published(next_step(&auto(&p), None, cap(40 * GB, 10), None, |c| {
            c.num_layers <= 12
        }));
        assert_eq!(state.config, p.shapes.shape(12));
        let step = next_step(&auto(&p), None, cap(40 * GB, 10), None, |_| false);
        assert!(matches!(step, Step::Wait(_)), "{step:?}");
    }

    #[test]
    fn growth_appends_layers_and_records_where() {
        let p = policy(0);
        let genesis = published(next_step(&auto(&p), None, cap(40 * GB, 10), None, |_| true));
        assert_eq!(
            next_step(&auto(&p), Some(&genesis), cap(40 * GB, 10), None, |_| true),
            Step::Keep { pending: None }
        );
        let grown = published(next_step(
            &auto(&p),
            Some(&genesis),
            cap(100 * GB, 25),
            None,
            |_| true,
        ));
        let to = p.shapes.grown_depth(&genesis.config, 100 * GB, 25).unwrap();
        assert_eq!(grown.config.num_layers, to);
        assert_eq!(grown.config.hidden_size, genesis.config.hidden_size);
        assert_eq!(grown.config.num_heads, genesis.config.num_heads);
        assert_eq!(grown.version, 2);
        assert_eq!(
            grown.growth,
            vec![GrowthRecord {
                from_layers: 16,
                to_layers: to,
                version: 2
            }]
        );
        assert_eq!(grown.genesis_layers(), 16);
        assert!(!grown.is_grown_layer(15));
        assert!(grown.is_grown_layer(16));
        assert_eq!(grown.depths(), vec![16, to]);
        grown.validate().unwrap();
    }

    #[test]
    fn growth_takes_the_deepest_placeable_depth_or_waits() {
        let p = policy(0);
        let genesis = ArchitectureState::genesis(p.shapes.shape(16));
        let target = p.shapes.grown_depth(&genesis.config, 100 * GB, 25).unwrap();
        let grown = published(next_step(
            &auto(&p),
            Some(&genesis),
            cap(100 * GB, 25),
            None,
            |c| c.num_layers < target,
        ));
        assert_eq!(grown.config.num_layers, target - 1);
        // Nothing deeper can be placed with every layer replicated: no growth.
        assert_eq!(
            next_step(&auto(&p), Some(&genesis), cap(100 * GB, 25), None, |c| {
                c.num_layers == 16
            }),
            Step::Keep { pending: None }
        );
    }

    #[test]
    fn growth_waits_for_capacity_to_settle() {
        let p = policy(60_000);
        let genesis = ArchitectureState::genesis(p.shapes.shape(16));
        let step = next_step(&auto(&p), Some(&genesis), cap(100 * GB, 25), None, |_| true);
        let Step::Keep {
            pending: Some(target),
        } = step
        else {
            panic!("{step:?}")
        };
        assert_eq!(
            next_step(
                &auto(&p),
                Some(&genesis),
                cap(100 * GB, 25),
                Some(59_999),
                |_| true
            ),
            Step::Keep {
                pending: Some(target)
            }
        );
        let grown = published(next_step(
            &auto(&p),
            Some(&genesis),
            cap(100 * GB, 25),
            Some(60_000),
            |_| true,
        ));
        assert_eq!(grown.config.num_layers, target);
    }

    /// Capacity oscillating around the growth threshold (the settle timer restarting each
    /// time it dips) never grows the model; without a settle time it grows once, and the
    /// hysteresis band keeps the same oscillation from growing it again.
    #[test]
    fn capacity_oscillating_around_the_threshold_does_not_flap() {
        for settle_ms in [0u64, 10_000] {
            let p = policy(settle_ms);
            let mut state = ArchitectureState::genesis(p.shapes.shape(16));
            let threshold = growth_threshold(&p, &state, 25);
            let mut pending_since: Option<u64> = None;
            let mut changes = 0;
            for tick in 0..200u64 {
                let now = tick * 1_000;
                let memory = if tick % 6 < 3 {
                    threshold + threshold / 100
                } else {
                    threshold - threshold / 100
                };
                let pending_for = pending_since.map(|since| now - since);
                match next_step(
                    &auto(&p),
                    Some(&state),
                    cap(memory, 25),
                    pending_for,
                    |_| true,
                ) {
                    Step::Publish(next) => {
                        assert!(next.config.num_layers > state.config.num_layers);
                        state = next;
                        changes += 1;
                        pending_since = None;
                    }
                    Step::Keep { pending: Some(_) } => {
                        pending_since.get_or_insert(now);
                    }
                    Step::Keep { pending: None } => pending_since = None,
                    Step::Wait(why) => panic!("{why}"),
                }
            }
            let expected = if settle_ms == 0 { 1 } else { 0 };
            assert_eq!(changes, expected, "settle {settle_ms} ms: {state:?}");
        }
    }

    #[test]
    fn depth_never_shrinks_and_width_never_changes() {
        let p = policy(0);
        let big = ArchitectureState::genesis(p.shapes.shape(24));
        for memory in [GB, 10 * GB, 40 * GB, 800 * GB] {
            match next_step(&auto(&p), Some(&big), cap(memory, 25), None, |_| true) {
                Step::Publish(next) => {
                    assert!(next.config.num_layers > 24);
                    assert_eq!(next.config.hidden_size, big.config.hidden_size);
                }
                Step::Keep { .. } => {}
                Step::Wait(why) => panic!("{why}"),
            }
        }
    }

    #[test]
    fn fixed_mode_publishes_the_configured_shape_and_a_new_version_on_change() {
        let config = ModelConfig::small(4096);
        let mode = ArchitectureMode::Fixed(config.clone());
        let state = published(next_step(&mode, None, cap(0, 0), None, |_| false));
        assert_eq!(state, ArchitectureState::genesis(config.clone()));
        assert_eq!(
            next_step(&mode, Some(&state), cap(100 * GB, 100), None, |_| true),
            Step::Keep { pending: None }
        );
        let other = ModelConfig {
            num_layers: 6,
            ..config
        };
        let next = published(next_step(
            &ArchitectureMode::Fixed(other.clone()),
            Some(&state),
            cap(0, 0),
            None,
            |_| true,
        ));
        assert_eq!((next.config, next.version), (other, 2));
    }

    #[test]
    fn wire_form_round_trips_and_inconsistent_history_is_refused() {
        let state = ArchitectureState::genesis(ModelConfig::small(512))
            .grown_to(6)
            .unwrap()
            .grown_to(9)
            .unwrap();
        assert_eq!(state.depths(), vec![4, 6, 9]);
        assert_eq!(
            ArchitectureState::from_proto(&state.to_proto()).unwrap(),
            state
        );
        let mut gap = state.to_proto();
        gap.growth[1].from_layers = 7;
        let err = ArchitectureState::from_proto(&gap).unwrap_err().to_string();
        assert!(err.contains("architecture.growth[1]"), "{err}");
        let mut short = state.to_proto();
        short.num_layers = 8;
        let err = ArchitectureState::from_proto(&short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ends at 9 layers"), "{err}");
        assert!(state.grown_to(9).is_err());
    }
}
