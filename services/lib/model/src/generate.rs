//! Autoregressive generation with the KV cache: the prompt is run once, then each step runs
//! one position. Each token is handed to the caller as soon as it is sampled.

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::sampling::{Sampler, SamplingParams};
use crate::shard::{Shard, ShardInput};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop after sampling this token (not passed to the callback).
    pub stop_token: Option<u32>,
}

/// Generates up to `max_tokens` after `prompt` with a full-model shard, calling `on_token`
/// with each sampled id. Returns the generated ids.
pub fn generate(
    model: &Shard,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let spec = model.spec();
    if !(spec.embed && spec.head) {
        return Err(ModelError::InvalidInput(
            "generation needs the full model".into(),
        ));
    }
    if prompt.is_empty() {
        return Err(ModelError::InvalidInput("prompt: no tokens".into()));
    }
    let max_seq = model.config().max_seq_len as usize;
    if prompt.len() >= max_seq {
        return Err(ModelError::InvalidInput(format!(
            "prompt: {} tokens, the model's context is {max_seq}",
            prompt.len()
        )));
    }
    let budget = options.max_tokens.min(max_seq - prompt.len());
    let mut sampler = Sampler::new(options.sampling.clone())?;
    let mut cache = model.new_cache();
    let _guard = tch::no_grad_guard();
    let mut input: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let mut out = Vec::new();
    while out.len() < budget {
        let tokens = Tensor::from_slice(&input).view([1, -1]);
        let logits = model.forward(ShardInput::Tokens(&tokens), Some(&mut cache))?;
        let last = last_row_f32(&logits)?;
        let next = sampler.sample(&last)?;
        if Some(next) == options.stop_token {
            break;
        }
        on_token(next)?;
        out.push(next);
        input = vec![i64::from(next)];
    }
    Ok(out)
}

/// Logits of the last position of a [1, seq, vocab] tensor, as f32 on the host.
pub fn last_row_f32(logits: &Tensor) -> Result<Vec<f32>> {
    let seq = logits.size()[1];
    let row = logits
        .get(0)
        .get(seq - 1)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    Ok(Vec::<f32>::try_from(&row)?)
}
