//! The global model as the aggregator holds it: the whole model in f32 on the CPU, flat by
//! Hugging Face name for the outer step, a checkpoint per published round on the state volume
//! (what `neuroshard model export` copies and what `transformers` loads), and the held-out
//! loss that scores submissions and rounds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use neuroshard_aggregation::round::Named;
use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::{Error, Result};
use neuroshard_model::checkpoint;
use neuroshard_model::data::batches::eval_windows;
use neuroshard_model::data::{Split, TokenShards};
use neuroshard_model::diloco::{load_named, named};
use neuroshard_model::growth::span_of_architecture;
use neuroshard_model::tch::{Device, Kind};
use neuroshard_model::tokenizer::TextTokenizer;
use neuroshard_model::training::evaluate;
use neuroshard_model::{Shard, ShardSpec};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

/// The whole model, one f32 copy.
#[derive(Debug)]
pub struct GlobalModel {
    shard: Shard,
    /// Shapes by name, for checking submissions and streaming weights.
    pub shapes: BTreeMap<String, Vec<i64>>,
}

impl GlobalModel {
    /// Round 0: what every node builds for the architecture from `checkpoint` or `seed`.
    pub fn initial(arch: &ArchitectureState, checkpoint: Option<&Path>, seed: u64) -> Result<Self> {
        let layers = u32::try_from(arch.config.num_layers)
            .map_err(|_| Error::invalid_argument("num_layers out of range"))?;
        let shard =
            span_of_architecture(arch, 0, layers, checkpoint, seed, Device::Cpu, Kind::Float)?;
        Ok(Self::of(shard))
    }

    /// A published round's checkpoint.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = checkpoint::read_config(dir)?;
        let shard = checkpoint::load_shard(
            dir,
            ShardSpec::full(config.num_layers),
            Device::Cpu,
            Kind::Float,
        )?;
        Ok(Self::of(shard))
    }

    fn of(shard: Shard) -> Self {
        let shapes = shard
            .var_store()
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.size()))
            .collect();
        Self { shard, shapes }
    }

    pub fn num_layers(&self) -> u32 {
        self.shard.config().num_layers as u32
    }

    pub fn weights(&self) -> Result<Named> {
        Ok(named(&self.shard)?)
    }

    /// Copies the tensors of `weights` this model has (same sizes); the others keep theirs.
    pub fn overlay(&self, weights: &Named) -> Result<()> {
        let present: Named = self
            .shapes
            .keys()
            .filter_map(|n| weights.get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        let mut all = self.weights()?;
        all.extend(present);
        self.set_weights(&all)
    }

    pub fn set_weights(&self, weights: &Named) -> Result<()> {
        Ok(load_named(&self.shard, weights)?)
    }

    /// Writes the current weights as a checkpoint in `dir` (config.json, model.safetensors,
    /// and the tokenizer when there is one), atomically file by file.
    pub fn save(&self, dir: &Path, tokenizer: Option<&TextTokenizer>) -> Result<()> {
        let json = tokenizer
            .map(TextTokenizer::to_json)
            .transpose()
            .map_err(|e| Error::internal(format!("tokenizer: {e}")))?;
        let eos = tokenizer.map_or(0, |t| i64::from(t.eos_id()));
        checkpoint::save(dir, &self.shard, json.as_deref(), eos)?;
        Ok(())
    }

    /// Mean held-out loss of `weights` (the model's, with these values) on `windows`.
    pub fn loss(&self, weights: &Named, windows: &[Vec<i64>]) -> Result<f64> {
        self.set_weights(weights)?;
        Ok(evaluate(&self.shard, windows, 8)?)
    }
}

/// The held-out split, cut into windows; each round scores on a sample chosen by its seed.
#[derive(Debug, Clone)]
pub struct HeldOut {
    windows: Vec<Vec<i64>>,
    per_round: usize,
}

impl HeldOut {
    pub fn open(dir: &Path, seq_len: usize, per_round: usize, vocab_size: i64) -> Result<Self> {
        let data = TokenShards::open(dir)?;
        let tokens = data.load_split(Split::Validation)?;
        if let Some(bad) = tokens.iter().find(|&&t| i64::from(t) >= vocab_size) {
            return Err(Error::failed_precondition(format!(
                "data_dir {}: token {bad} is outside the model's vocabulary of {vocab_size}",
                dir.display()
            )));
        }
        let windows = eval_windows(&tokens, seq_len, usize::MAX);
        if windows.is_empty() {
            return Err(Error::failed_precondition(format!(
                "data_dir {}: the held-out split has fewer than {} tokens",
                dir.display(),
                seq_len + 1
            )));
        }
        Ok(Self { windows, per_round })
    }

    /// The windows of the round seeded `seed`.
    pub fn for_round(&self, seed: u64) -> Vec<Vec<i64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let count = self.per_round.min(self.windows.len());
        let mut picked: Vec<usize> = sample(&mut rng, self.windows.len(), count).into_vec();
        picked.sort_unstable();
        picked
            .into_iter()
            .map(|i| self.windows[i].clone())
            .collect()
    }
}

/// The directory of round `round`'s weights under `state_dir`.
pub fn round_dir(state_dir: &Path, round: u64) -> PathBuf {
    state_dir.join("rounds").join(format!("{round:08}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_common::ModelConfig;

    /// A grown model keeps the trained tensors and adds identity layers: the same loss.
    #[test]
    fn growth_keeps_the_trained_function() {
        let config = ModelConfig {
            hidden_size: 32,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 64,
            max_seq_len: 32,
            ..ModelConfig::small(64)
        };
        let genesis = ArchitectureState::genesis(config);
        let small = GlobalModel::initial(&genesis, None, 3).unwrap();
        // "Trained": every tensor moved off its initialisation.
        let trained: Named = small
            .weights()
            .unwrap()
            .into_iter()
            .map(|(n, v)| {
                (
                    n,
                    v.iter()
                        .enumerate()
                        .map(|(i, x)| x + (i % 7) as f32 * 1e-3)
                        .collect(),
                )
            })
            .collect();
        let windows: Vec<Vec<i64>> = (0..4)
            .map(|w| (0..17).map(|i| (i * 5 + w * 3) % 64).collect())
            .collect();
        let before = small.loss(&trained, &windows).unwrap();

        let grown = genesis.grown_to(4).unwrap();
        let bigger = GlobalModel::initial(&grown, None, 3).unwrap();
        bigger.overlay(&trained).unwrap();
        assert_eq!(bigger.num_layers(), 4);
        let weights = bigger.weights().unwrap();
        assert_eq!(
            weights["model.layers.1.mlp.up_proj.weight"],
            trained["model.layers.1.mlp.up_proj.weight"]
        );
        let after = bigger.loss(&weights, &windows).unwrap();
        assert!((before - after).abs() < 1e-5, "{before} vs {after}");
    }
}
