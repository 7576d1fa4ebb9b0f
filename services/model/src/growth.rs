//! Function-preserving depth growth: new layers are appended after the existing ones with
//! zeroed residual output projections, so each new block is the identity and the model's
//! outputs are unchanged at the moment of growth; training then moves the new layers.

use crate::error::{ModelError, Result};
use crate::init;
use crate::shard::{Shard, ShardSpec};

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
