//! Next-token sampling from logits: temperature, top-k, top-p, seeded. Pure Rust over `&[f32]`
//! so any service can use it without libtorch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, TextError};

/// How to pick the next token. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(TextError::InvalidInput(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(TextError::InvalidInput(format!(
                "top_p must lie in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// A seeded sampler; the same params and logits give the same tokens.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// Picks a token id from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(TextError::InvalidInput("logits: empty row".into()));
        }
        if logits.iter().any(|l| l.is_nan()) {
            return Err(TextError::InvalidInput("logits: NaN".into()));
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        // Candidates sorted by logit, descending; ties broken by id for determinism.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        if self.params.top_k > 0 {
            order.truncate(self.params.top_k);
        }
        let max = logits[order[0] as usize];
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| {
                (f64::from(logits[i as usize] - max) / f64::from(self.params.temperature)).exp()
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let mut keep = weights.len();
        if self.params.top_p < 1.0 {
            let mut mass = 0.0;
            for (n, w) in weights.iter().enumerate() {
                mass += w / total;
                if mass >= f64::from(self.params.top_p) {
                    keep = n + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..keep].iter().sum();
        let mut target = self.rng.random::<f64>() * kept_total;
        for (n, w) in weights[..keep].iter().enumerate() {
            target -= w;
            if target <= 0.0 {
                return Ok(order[n]);
            }
        }
        Ok(order[keep - 1])
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: 7,
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(params(0.0, 0, 1.0)).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]).unwrap(), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(params(5.0, 1, 1.0)).unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]).unwrap(), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // Probabilities ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two only.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(params(1.0, 0, 0.8)).unwrap();
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits).unwrap() as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        assert!(seen[0] > seen[1] && seen[1] > 300, "{seen:?}");
    }

    #[test]
    fn sampling_follows_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let mut s = Sampler::new(params(1.0, 0, 1.0)).unwrap();
        let ones = (0..20_000)
            .filter(|_| s.sample(&logits).unwrap() == 1)
            .count();
        let share = ones as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = || {
            let mut s = Sampler::new(params(1.0, 10, 0.9)).unwrap();
            (0..20)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn bad_params_and_logits_are_refused() {
        assert!(Sampler::new(params(-1.0, 0, 1.0)).is_err());
        assert!(Sampler::new(params(f32::NAN, 0, 1.0)).is_err());
        assert!(Sampler::new(params(1.0, 0, 0.0)).is_err());
        let mut s = Sampler::new(params(1.0, 0, 1.0)).unwrap();
        assert!(
            s.sample(&[0.0, f32::NAN])
                .unwrap_err()
                .to_string()
                .contains("NaN")
        );
        assert!(s.sample(&[]).is_err());
    }
}
