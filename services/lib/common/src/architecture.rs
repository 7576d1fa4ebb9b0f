//! Architecture from capacity: which NeuroLLM shape a swarm with a given total usable memory
//! and node count trains, and when it grows deeper.
//!
//! The depth curve is log-linear in memory between three anchors (40 GB → 16 layers,
//! 800 GB → 32, 8 TB → 64), extended past both ends with the nearest segment's slope.
//! Width follows depth: `H = 64·L` up to 16 layers, `H = 128·(L − 8)` beyond, which passes
//! through the anchors' widths (1024, 3072, 7168). The chosen depth is then lowered until
//! `MIN_REPLICAS` copies of the model, with full training state, fit in the total memory.
//! (Whether a given node can hold a given span is placement's concern, not the shape's.)
//! Everything is integer or exactly reproducible
//! float math: the same inputs give the same shape on every node.

use crate::error::{Error, Result};
use crate::model_config::{ModelConfig, swiglu_intermediate};

/// Every layer is held by at least this many nodes.
pub const MIN_REPLICAS: u64 = 2;

/// One decimal gigabyte.
pub const GB: u64 = 1_000_000_000;

/// (memory in bytes, layers) anchors of the depth curve.
const ANCHORS: [(f64, f64); 3] = [(40e9, 16.0), (800e9, 32.0), (8e12, 64.0)];

/// Bytes one parameter costs on a training node: f32 weight, gradient, AdamW's two moments,
/// and the DiLoCo round-start copy (5 × 4 bytes). The default of every memory budget that
/// decides placement and shape.
pub const TRAINING_BYTES_PER_PARAM: u64 = 20;

/// What goes into the shape decision besides memory and node count.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchitecturePolicy {
    pub vocab_size: i64,
    pub max_seq_len: i64,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub replicas: u64,
    /// Bytes one parameter costs on a training node ([`TRAINING_BYTES_PER_PARAM`]).
    pub training_bytes_per_param: u64,
    /// The depth curve reads total memory multiplied by this. 1 is the design's curve
    /// (40 GB → 16 layers); a local demo or a test raises it so that a few small nodes
    /// choose (and grow) a model of several layers. Whether replicas fit is always checked
    /// against the real memory.
    pub depth_curve_scale: f64,
}

impl Default for ArchitecturePolicy {
    fn default() -> Self {
        Self {
            vocab_size: 32_000,
            max_seq_len: 2048,
            rope_theta: 10_000.0,
            rms_eps: 1e-6,
            replicas: MIN_REPLICAS,
            training_bytes_per_param: TRAINING_BYTES_PER_PARAM,
            depth_curve_scale: 1.0,
        }
    }
}

/// A chosen shape with its honest sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    pub config: ModelConfig,
    /// Exact parameter count of `config`.
    pub parameters: i64,
    /// Bytes that `replicas` training copies need.
    pub replicated_training_bytes: u64,
}

impl ArchitecturePolicy {
    /// The shape for `memory_bytes` of usable memory spread over `nodes` nodes.
    pub fn architecture_for(&self, memory_bytes: u64, nodes: u64) -> Result<Architecture> {
        if nodes < self.replicas {
            return Err(Error::invalid_argument(format!(
                "{nodes} node(s) cannot hold {} replicas of every layer",
                self.replicas
            )));
        }
        let mut layers = self.curve(memory_bytes);
        loop {
            let config = self.shape(layers);
            if self.replicated_bytes(&config) <= u128::from(memory_bytes) {
                let parameters = parameter_count(&config);
                return Ok(Architecture {
                    replicated_training_bytes: self.replicated_bytes(&config) as u64,
                    parameters,
                    config,
                });
            }
            if layers == 1 {
                return Err(Error::invalid_argument(format!(
                    "{memory_bytes} bytes over {nodes} nodes cannot hold even a 1-layer model \
                     ({} bytes for {} training replicas)",
                    self.replicated_bytes(&config),
                    self.replicas
                )));
            }
            layers -= 1;
        }
    }

    /// The depth a model of `current`'s width should grow to with this much capacity, or
    /// `None` to stay. Grows only by at least [`Self::growth_step`] layers, so capacity
    /// hovering around a threshold does not make the model flap; never shrinks (a trained
    /// layer is never thrown away).
    pub fn grown_depth(&self, current: &ModelConfig, memory_bytes: u64, nodes: u64) -> Option<i64> {
        if nodes < self.replicas {
            return None;
        }
        let mut target = self.curve(memory_bytes);
        while target > current.num_layers {
            let candidate = ModelConfig {
                num_layers: target,
                ..current.clone()
            };
            if self.replicated_bytes(&candidate) <= u128::from(memory_bytes) {
                break;
            }
            target -= 1;
        }
        (target >= current.num_layers + Self::growth_step(current.num_layers)).then_some(target)
    }

    /// The fewest layers one growth adds to a `layers`-deep model: an eighth of its depth,
    /// at least one. This is the hysteresis band of [`Self::grown_depth`].
    pub fn growth_step(layers: i64) -> i64 {
        ((layers + 7) / 8).max(1)
    }

    /// Layers on the depth curve for `memory_bytes`, scaled by `depth_curve_scale`.
    fn curve(&self, memory_bytes: u64) -> i64 {
        depth_curve(memory_bytes as f64 * self.depth_curve_scale)
    }

    /// The shape with `layers` layers on the width rule.
    pub fn shape(&self, layers: i64) -> ModelConfig {
        let hidden = if layers <= 16 {
            64 * layers
        } else {
            128 * (layers - 8)
        };
        let head_dim = if hidden <= 1024 { 64 } else { 128 };
        let num_heads = hidden / head_dim;
        ModelConfig {
            vocab_size: self.vocab_size,
            hidden_size: hidden,
            num_layers: layers,
            num_heads,
            num_kv_heads: kv_heads_for(num_heads),
            intermediate_size: swiglu_intermediate(hidden, 256),
            rope_theta: self.rope_theta,
            rms_eps: self.rms_eps,
            max_seq_len: self.max_seq_len,
        }
    }

    fn replicated_bytes(&self, config: &ModelConfig) -> u128 {
        u128::from(self.replicas)
            * parameter_count(config) as u128
            * u128::from(self.training_bytes_per_param)
    }
}

/// Layers on the depth curve for `memory` bytes (floor), at least 1.
fn depth_curve(memory: f64) -> i64 {
    let segment = |(m0, l0): (f64, f64), (m1, l1): (f64, f64)| {
        l0 + (l1 - l0) * (memory / m0).ln() / (m1 / m0).ln()
    };
    let layers = if memory <= ANCHORS[1].0 {
        segment(ANCHORS[0], ANCHORS[1])
    } else {
        segment(ANCHORS[1], ANCHORS[2])
    };
    // The epsilon keeps an anchor exactly on its integer despite ln rounding.
    ((layers + 1e-9).floor() as i64).max(1)
}

/// Largest divisor of `heads` that is at most a third of it: GQA shrinking the KV cache ≥ 3×.
fn kv_heads_for(heads: i64) -> i64 {
    let limit = (heads / 3).max(1);
    (1..=limit).rev().find(|d| heads % d == 0).unwrap_or(1)
}

/// Parameters of one decoder block.
pub fn layer_parameters(c: &ModelConfig) -> i64 {
    let head_dim = c.head_dim();
    let attention = c.hidden_size * head_dim * (2 * c.num_heads + 2 * c.num_kv_heads);
    let mlp = 3 * c.hidden_size * c.intermediate_size;
    let norms = 2 * c.hidden_size;
    attention + mlp + norms
}

/// `model.embed_tokens`.
pub fn embedding_parameters(c: &ModelConfig) -> i64 {
    c.vocab_size * c.hidden_size
}

/// `model.norm` + `lm_head`.
pub fn head_parameters(c: &ModelConfig) -> i64 {
    c.hidden_size + c.vocab_size * c.hidden_size
}

/// Exact parameter count of the whole model.
pub fn parameter_count(c: &ModelConfig) -> i64 {
    embedding_parameters(c) + c.num_layers * layer_parameters(c) + head_parameters(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_at(memory_gb: u64, nodes: u64) -> (i64, i64) {
        let arch = ArchitecturePolicy::default()
            .architecture_for(memory_gb * GB, nodes)
            .unwrap();
        (arch.config.num_layers, arch.config.hidden_size)
    }

    #[test]
    fn seed_points_give_the_seed_shapes() {
        assert_eq!(shape_at(40, 10), (16, 1024));
        assert_eq!(shape_at(800, 100), (32, 3072));
        assert_eq!(shape_at(8000, 1000), (64, 7168));
    }

    #[test]
    fn seed_point_parameter_counts_are_the_true_counts() {
        let policy = ArchitecturePolicy::default();
        let arch = policy.architecture_for(40 * GB, 10).unwrap();
        // 16 × (1024·64·(2·16 + 2·4) + 3·1024·2816 + 2·1024) + 2·32000·1024 + 1024
        let expected = 16 * (1024 * 64 * 40 + 3 * 1024 * 2816 + 2048) + 2 * 32_000 * 1024 + 1024;
        assert_eq!(arch.parameters, expected);
        assert_eq!(arch.config.num_heads, 16);
        assert_eq!(arch.config.num_kv_heads, 4);
        assert_eq!(arch.config.intermediate_size, 2816);
        let big = policy.architecture_for(8000 * GB, 1000).unwrap();
        assert_eq!(big.config.num_heads, 56);
        assert_eq!(big.config.num_kv_heads, 14);
        // 64 × (7168·128·(2·56 + 2·14) + 3·7168·19200 + 2·7168) + 2·32000·7168 + 7168 ≈ 35.1 B
        let expected =
            64 * (7168 * 128 * 140 + 3 * 7168 * 19_200 + 2 * 7168) + 2 * 32_000 * 7168 + 7168;
        assert_eq!(big.parameters, expected);
        assert_eq!(big.config.intermediate_size, 19_200);
    }

    #[test]
    fn every_shape_is_valid_and_replicas_fit() {
        let policy = ArchitecturePolicy::default();
        for gb in [1u64, 2, 3, 5, 8, 13, 40, 100, 333, 800, 2000, 8000, 20_000] {
            let arch = policy.architecture_for(gb * GB, 10).unwrap();
            arch.config.validate().unwrap();
            assert!(
                arch.replicated_training_bytes <= gb * GB,
                "{gb} GB: {arch:?}"
            );
        }
    }

    #[test]
    fn monotone_in_memory_for_fixed_nodes() {
        let policy = ArchitecturePolicy::default();
        for nodes in [2u64, 4, 10, 100] {
            let mut last = 0;
            let mut memory = 2 * GB;
            while memory < 20_000 * GB {
                let params = policy
                    .architecture_for(memory, nodes)
                    .map_or(0, |a| a.parameters);
                assert!(
                    params >= last,
                    "{nodes} nodes, {memory} bytes: {params} < {last}"
                );
                last = params;
                memory += memory / 7;
            }
        }
    }

    #[test]
    fn too_few_nodes_or_too_little_memory_is_an_error() {
        let policy = ArchitecturePolicy::default();
        let err = policy.architecture_for(40 * GB, 1).unwrap_err().to_string();
        assert!(err.contains("2 replicas"), "{err}");
        let err = policy
            .architecture_for(1_000_000, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot hold even a 1-layer model"), "{err}");
    }

    #[test]
    fn depth_curve_scale_reads_more_layers_from_less_memory_but_checks_real_memory() {
        let scaled = ArchitecturePolicy {
            depth_curve_scale: 100.0,
            ..ArchitecturePolicy::default()
        };
        let arch = scaled.architecture_for(4 * GB, 4).unwrap();
        let unscaled = ArchitecturePolicy::default()
            .architecture_for(4 * GB, 4)
            .unwrap();
        assert!(
            arch.config.num_layers > unscaled.config.num_layers,
            "{arch:?}"
        );
        assert_eq!(arch.config, scaled.shape(arch.config.num_layers));
        assert!(arch.config.num_layers >= 6, "{arch:?}");
        assert!(arch.replicated_training_bytes <= 4 * GB, "{arch:?}");
        assert_eq!(
            shape_at(40, 10),
            (16, 1024),
            "the default curve is unscaled"
        );
        assert_eq!(ArchitecturePolicy::growth_step(4), 1);
        assert_eq!(ArchitecturePolicy::growth_step(16), 2);
        assert_eq!(ArchitecturePolicy::growth_step(17), 3);
    }

    #[test]
    fn growth_has_hysteresis_and_never_shrinks() {
        let policy = ArchitecturePolicy::default();
        let genesis = policy.architecture_for(40 * GB, 10).unwrap().config;
        assert_eq!(policy.grown_depth(&genesis, 40 * GB, 10), None);
        // A little more memory: the curve moves by less than the hysteresis band.
        assert_eq!(policy.grown_depth(&genesis, 44 * GB, 11), None);
        assert_eq!(policy.grown_depth(&genesis, 20 * GB, 5), None);
        let grown = policy.grown_depth(&genesis, 100 * GB, 25).unwrap();
        assert!(grown >= 18, "{grown}");
        let deeper = ModelConfig {
            num_layers: grown,
            ..genesis.clone()
        };
        assert_eq!(policy.grown_depth(&deeper, 100 * GB, 25), None);
    }
}
