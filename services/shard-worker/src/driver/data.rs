//! What a pipeline trains on in a round: the training shards `shards_for_replica` picks for
//! (round, replica), each checked against the manifest's SHA-256 before use, and the batches
//! `BatchSampler` draws from them by step. Every choice is a function of the manifest, the
//! round, the replica and the step, so a verifier can replay a round's data.

use std::path::Path;

use neuroshard_common::{Error, Result};
use neuroshard_model::data::{BatchSampler, TokenShards};
use neuroshard_model::diloco::replica_tokens;

/// One round's data for one replica.
#[derive(Debug)]
pub struct RoundData {
    pub shard_ids: Vec<String>,
    sampler: BatchSampler,
    round: u64,
}

impl RoundData {
    /// Loads (and verifies) the shards replica `replica` trains on in `round`. Blocking I/O.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        dir: &Path,
        round: u64,
        replica: u64,
        shards_per_round: usize,
        seq_len: usize,
        batch_size: usize,
        vocab_size: i64,
    ) -> Result<Self> {
        let data = TokenShards::open(dir).map_err(Error::from)?;
        let manifest = &data.manifest;
        if i64::from(manifest.vocab_size) > vocab_size {
            return Err(Error::failed_precondition(format!(
                "dataset {}: its vocabulary has {} ids, the model's {vocab_size}",
                dir.display(),
                manifest.vocab_size
            )));
        }
        let (shard_ids, tokens) =
            replica_tokens(&data, round, replica, shards_per_round).map_err(Error::from)?;
        let sampler = BatchSampler::new(tokens, manifest, seq_len, batch_size, replica)
            .map_err(Error::from)?;
        Ok(Self {
            shard_ids,
            sampler,
            round,
        })
    }

    /// Step `step`'s batch: `[batch_size, seq_len + 1]` token ids, row-major.
    pub fn batch(&self, step: u64) -> Vec<i64> {
        self.sampler.batch(self.round, step)
    }

    pub fn rows(&self) -> usize {
        self.sampler.batch_size()
    }
}
