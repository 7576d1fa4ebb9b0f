//! Function-preserving depth growth: new layers are appended after the existing ones with
//! zeroed residual output projections, so each new block is the identity and the model's
//! outputs are unchanged at the moment of growth; training then moves the new layers.
//! [`grow_depth`] grows a shard in memory; [`build_grown_span`] builds any span of a grown
//! model from where its older layers live (a checkpoint, or the agreed seed), which is how a
//! swarm node loads its span after the registry has grown the model.

use std::path::Path;

use tch::{Device, Kind};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::init;
use crate::shard::{Shard, ShardSpec};

/// Where the layers that predate a growth come from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A checkpoint of the model at `base_layers` depth.
    Checkpoint(&'a Path),
    /// The seeded initialisation of the model at `base_layers` depth.
    Seed,
}

/// Layer index of a tensor name `model.layers.{i}.…`, if it belongs to a layer.
fn layer_of(name: &str) -> Option<i64> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Builds `spec` of the `config` model, grown from a `base_layers`-deep model: layers below
/// `base_layers`, the embedding and the head come from `origin`; layers from `base_layers` on
/// were appended by growth and are drawn from `seed`, then made identity blocks. The result
/// computes what the `base_layers`-deep model computes. For `Origin::Seed`, `seed` must be
/// the seed the base model was initialised with (all nodes share it).
pub fn build_grown_span(
    config: &ModelConfig,
    spec: ShardSpec,
    base_layers: i64,
    origin: Origin<'_>,
    seed: u64,
    device: Device,
    kind: Kind,
) -> Result<Shard> {
    if !(1..=config.num_layers).contains(&base_layers) {
        return Err(ModelError::InvalidConfig(format!(
            "base depth {base_layers} is not within the model's 1..={} layers",
            config.num_layers
        )));
    }
    let mut shard = Shard::new(config, spec, device, kind)?;
    let grown = spec.start.max(base_layers)..spec.end;
    // A checkpoint overwrites everything but the grown layers: draw only when there are some.
    if matches!(origin, Origin::Seed) || !grown.is_empty() {
        init::initialize_for_depth(&mut shard, seed, base_layers)?;
    }
    if let Origin::Checkpoint(dir) = origin {
        let stored = crate::checkpoint::read_config(dir)?;
        let expected = ModelConfig {
            num_layers: base_layers,
            ..config.clone()
        };
        if stored != expected {
            return Err(ModelError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("holds {stored:?}, but the layers before growth are {expected:?}"),
            });
        }
        crate::checkpoint::load_matching(&mut shard, dir, |name| {
            layer_of(name).is_none_or(|layer| layer < base_layers)
        })?;
    }
    for layer in grown {
        init::zero_residual_outputs(&shard, layer)?;
    }
    Ok(shard)
}

/// Layers [start, end) of the published architecture `arch`, as every node builds them: the
/// layers the registry added since the weights were made are identity blocks drawn from
/// `seed`, so the function is the one the weights had; the others come from `checkpoint`,
/// which must hold the model at one of the depths the architecture has had, or from `seed`
/// at the genesis depth.
pub fn span_of_architecture(
    arch: &neuroshard_common::growth::ArchitectureState,
    start: u32,
    end: u32,
    checkpoint: Option<&Path>,
    seed: u64,
    device: Device,
    kind: Kind,
) -> Result<Shard> {
    let config = &arch.config;
    let spec = ShardSpec::span(i64::from(start), i64::from(end), config.num_layers)?;
    let (base, origin) = match checkpoint {
        Some(dir) => {
            let stored = crate::checkpoint::read_config(dir)?;
            let same_shape = stored
                == ModelConfig {
                    num_layers: stored.num_layers,
                    ..config.clone()
                };
            if !same_shape || !arch.depths().contains(&stored.num_layers) {
                return Err(ModelError::Checkpoint {
                    path: dir.to_path_buf(),
                    message: format!(
                        "holds a different architecture than the registry assigns ({} layers of \
                         width {}; the registry's model has had depths {:?} at width {})",
                        stored.num_layers,
                        stored.hidden_size,
                        arch.depths(),
                        config.hidden_size
                    ),
                });
            }
            (stored.num_layers, Origin::Checkpoint(dir))
        }
        None => (arch.genesis_layers(), Origin::Seed),
    };
    build_grown_span(config, spec, base, origin, seed, device, kind)
}

/// A copy of `shard` for a model grown to `new_num_layers`. Existing tensors are copied by
/// name; a shard holding the head extends its span to the new end, and the new layers are
/// initialised from `seed` and made identity blocks.
pub fn grow_depth(shard: &Shard, new_num_layers: i64, seed: u64) -> Result<Shard> {
    let old = shard.config();
    if new_num_layers <= old.num_layers {
        return Err(ModelError::InvalidConfig(format!(
            "growth must add layers: {} -> {new_num_layers}",
            old.num_layers
        )));
    }
    let config = crate::config::ModelConfig {
        num_layers: new_num_layers,
        ..old.clone()
    };
    let spec = shard.spec();
    let new_spec = ShardSpec {
        end: if spec.head { new_num_layers } else { spec.end },
        ..spec
    };
    let mut grown = Shard::new(&config, new_spec, shard.device(), shard.kind())?;
    init::initialize(&mut grown, seed)?;
    for layer in old.num_layers..new_spec.end.max(old.num_layers) {
        init::zero_residual_outputs(&grown, layer)?;
    }
    let existing = shard.var_store().variables();
    let _guard = tch::no_grad_guard();
    for (name, mut var) in grown.var_store().variables() {
        if let Some(value) = existing.get(&name) {
            var.f_copy_(value)?;
        }
    }
    Ok(grown)
}
