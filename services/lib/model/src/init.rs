//! Deterministic initialisation agreed by seed: every tensor draws from its own stream keyed
//! by (seed, tensor name), so a shard initialised alone equals the same span of a full model
//! initialised with the same seed, on any node. No global RNG state is touched.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::shard::Shard;

/// Std of the normal init of every projection (Llama's `initializer_range`).
pub const INIT_STD: f64 = 0.02;

/// Fills every weight of `shard`: norms with ones, projections and embeddings with
/// N(0, 0.02²), and the residual output projections (`o_proj`, `down_proj`) with
/// N(0, (0.02 / sqrt(2 · num_layers))²) so the residual stream's variance does not grow with depth.
pub fn initialize(shard: &mut Shard, seed: u64) -> Result<()> {
    let num_layers = shard.config().num_layers;
    initialize_for_depth(shard, seed, num_layers)
}

/// [`initialize`] as a `depth`-layer model would draw it: the residual output projections'
/// std follows `depth`, not the shard's current depth. A model grown since its genesis draws
/// its genesis layers at the genesis depth, so every node gets the weights the swarm started
/// with.
pub fn initialize_for_depth(shard: &mut Shard, seed: u64, depth: i64) -> Result<()> {
    let residual_std = INIT_STD / ((2 * depth.max(1)) as f64).sqrt();
    let _guard = tch::no_grad_guard();
    for (name, mut var) in shard.var_store().variables() {
        let value = if is_norm(&name) {
            Tensor::ones(var.size(), (Kind::Float, tch::Device::Cpu))
        } else {
            let std = if is_residual_output(&name) {
                residual_std
            } else {
                INIT_STD
            };
            normal(&var.size(), std, stream_seed(seed, &name))
        };
        var.f_copy_(&value.to_kind(var.kind()).to_device(var.device()))?;
    }
    Ok(())
}

/// Zeroes the residual output projections of `model.layers.{layer}`, which makes that block
/// an identity map (its attention and MLP add nothing to the residual stream).
pub fn zero_residual_outputs(shard: &Shard, layer: i64) -> Result<()> {
    let prefix = format!("model.layers.{layer}.");
    let _guard = tch::no_grad_guard();
    for (name, mut var) in shard.var_store().variables() {
        if name.starts_with(&prefix) && is_residual_output(&name) {
            let _ = var.f_zero_()?;
        }
    }
    Ok(())
}

/// Whether `name` is a norm gain (initialised to ones, never weight-decayed).
pub fn is_norm(name: &str) -> bool {
    name.ends_with("layernorm.weight") || name == "model.norm.weight"
}

fn is_residual_output(name: &str) -> bool {
    name.ends_with("self_attn.o_proj.weight") || name.ends_with("mlp.down_proj.weight")
}

fn stream_seed(seed: u64, name: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"neuroshard/v1/init");
    hasher.update(seed.to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.finalize().into()
}

fn normal(shape: &[i64], std: f64, seed: [u8; 32]) -> Tensor {
    let mut rng = ChaCha8Rng::from_seed(seed);
    let numel: i64 = shape.iter().product();
    let values: Vec<f32> = (0..numel)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (z * std) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
}
