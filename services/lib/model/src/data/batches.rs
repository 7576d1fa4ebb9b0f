//! Deterministic data selection. Which shards a replica trains on in a round, and which
//! windows fill each batch, are pure functions of (manifest, round, replica, step), so a
//! verifier can replay exactly what a node claims to have trained on.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::manifest::{Manifest, Split};
use crate::error::{ModelError, Result};

fn stream(domain: &[u8], manifest_digest: &[u8; 32], parts: &[u64]) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(domain);
    hasher.update(manifest_digest);
    for part in parts {
        hasher.update(part.to_le_bytes());
    }
    ChaCha8Rng::from_seed(hasher.finalize().into())
}

/// Ids of the `count` training shards replica `replica` trains on in `round`: a seeded
/// permutation of the training shards, cut so that replicas of one round get disjoint shards
/// while there are enough.
pub fn shards_for_replica(
    manifest: &Manifest,
    round: u64,
    replica: u64,
    count: usize,
) -> Result<Vec<String>> {
    let mut ids: Vec<&str> = manifest
        .shards_of(Split::Train)
        .map(|s| s.id.as_str())
        .collect();
    if ids.is_empty() {
        return Err(ModelError::Data(
            "the manifest lists no training shards".into(),
        ));
    }
    let mut rng = stream(b"neuroshard/v1/shards", &manifest.digest()?, &[round]);
    // Fisher-Yates with the round's stream: the same permutation for every replica.
    for i in (1..ids.len()).rev() {
        let j = rng.random_range(0..=i);
        ids.swap(i, j);
    }
    let start = (replica as usize).wrapping_mul(count);
    Ok((0..count)
        .map(|k| ids[(start + k) % ids.len()].to_string())
        .collect())
}

/// Draws training windows of `seq_len + 1` tokens from a token array.
#[derive(Debug)]
pub struct BatchSampler {
    tokens: Vec<u32>,
    seq_len: usize,
    batch_size: usize,
    digest: [u8; 32],
    replica: u64,
}

impl BatchSampler {
    pub fn new(
        tokens: Vec<u32>,
        manifest: &Manifest,
        seq_len: usize,
        batch_size: usize,
        replica: u64,
    ) -> Result<Self> {
        if tokens.len() < seq_len + 2 {
            return Err(ModelError::Data(format!(
                "{} tokens cannot fill one window of {} tokens",
                tokens.len(),
                seq_len + 1
            )));
        }
        if batch_size == 0 || seq_len == 0 {
            return Err(ModelError::Data(
                "batch_size and seq_len must be positive".into(),
            ));
        }
        Ok(Self {
            tokens,
            seq_len,
            batch_size,
            digest: manifest.digest()?,
            replica,
        })
    }

    /// Batch `step` of `round`: `batch_size` windows, row-major [batch, seq_len + 1].
    pub fn batch(&self, round: u64, step: u64) -> Vec<i64> {
        let mut rng = stream(
            b"neuroshard/v1/batch",
            &self.digest,
            &[round, self.replica, step],
        );
        let window = self.seq_len + 1;
        let last_start = self.tokens.len() - window;
        let mut out = Vec::with_capacity(self.batch_size * window);
        for _ in 0..self.batch_size {
            let start = rng.random_range(0..=last_start);
            out.extend(
                self.tokens[start..start + window]
                    .iter()
                    .map(|&t| i64::from(t)),
            );
        }
        out
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

/// Consecutive non-overlapping windows of `seq_len + 1` tokens for evaluation, at most
/// `max_windows`, flattened row-major.
pub fn eval_windows(tokens: &[u32], seq_len: usize, max_windows: usize) -> Vec<Vec<i64>> {
    tokens
        .windows(seq_len + 1)
        .step_by(seq_len)
        .take(max_windows)
        .map(|w| w.iter().map(|&t| i64::from(t)).collect())
        .collect()
}

/// Entropy in nats of the unigram distribution of `tokens`: the loss of a model that
/// knows token frequencies and nothing else.
pub fn unigram_entropy(tokens: &[u32]) -> f64 {
    let mut counts = std::collections::HashMap::<u32, u64>::new();
    for &t in tokens {
        *counts.entry(t).or_default() += 1;
    }
    let n = tokens.len() as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::manifest::{ShardEntry, TOKEN_FORMAT};

    fn manifest(shards: usize) -> Manifest {
        Manifest {
            name: "t".into(),
            tokenizer_sha256: "00".into(),
            vocab_size: 100,
            eos_token_id: 0,
            token_format: TOKEN_FORMAT.into(),
            shards: (0..shards)
                .map(|i| ShardEntry {
                    id: format!("train-{i:05}"),
                    split: Split::Train,
                    sha256: "00".into(),
                    tokens: 10,
                    location: format!("train-{i:05}.bin"),
                })
                .collect(),
        }
    }

    #[test]
    fn shard_choice_is_replayable_and_disjoint_per_round() {
        let m = manifest(8);
        let a = shards_for_replica(&m, 3, 0, 4).unwrap();
        let b = shards_for_replica(&m, 3, 1, 4).unwrap();
        assert_eq!(a, shards_for_replica(&m, 3, 0, 4).unwrap());
        assert!(a.iter().all(|id| !b.contains(id)));
        assert_ne!(
            a,
            shards_for_replica(&m, 4, 0, 4).unwrap(),
            "rounds reshuffle"
        );
    }

    #[test]
    fn batches_are_deterministic_and_in_range() {
        let m = manifest(1);
        let tokens: Vec<u32> = (0..1000).map(|i| i % 100).collect();
        let sampler = BatchSampler::new(tokens, &m, 16, 4, 0).unwrap();
        let b = sampler.batch(0, 7);
        assert_eq!(b.len(), 4 * 17);
        assert_eq!(b, sampler.batch(0, 7));
        assert_ne!(b, sampler.batch(0, 8));
        // Windows are contiguous runs of the source.
        for row in b.chunks(17) {
            for pair in row.windows(2) {
                assert_eq!((pair[0] + 1) % 100, pair[1]);
            }
        }
    }

    #[test]
    fn unigram_entropy_of_uniform_is_log_n() {
        let tokens: Vec<u32> = (0..4000).map(|i| i % 4).collect();
        assert!((unigram_entropy(&tokens) - 4f64.ln()).abs() < 1e-12);
    }
}
