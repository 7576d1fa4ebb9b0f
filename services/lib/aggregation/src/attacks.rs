//! What Byzantine contributors send, for the robustness table and the verification tests.
//! Each attack sees the honest contributions of the round (the strongest threat model: the
//! attackers collude and know everything) and, for the history attack, the last aggregate.
//!
//! - **sign flip ×10**: −10 × the honest mean;
//! - **Gaussian noise**: the honest mean plus N(0, σ²) per coordinate, σ = 10 × the mean's
//!   RMS value;
//! - **A Little Is Enough** (Baruch et al., 2019): μ − z·σ per coordinate, z from n and f so
//!   that the shifted value still looks like one of the majority;
//! - **inner-product manipulation** (Xie et al., 2020): −ε × the honest mean, ε = 0.5, so
//!   that the aggregate's inner product with the true direction turns negative;
//! - **history** (against centered clipping): each round, the last aggregate plus a step just
//!   inside the clipping radius along one fixed direction, so the clipped pull adds up over
//!   rounds instead of averaging out.

use neuroshard_common::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::{check, mean_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    SignFlip,
    GaussianNoise,
    ALittleIsEnough,
    InnerProductManipulation,
    History,
}

pub const ATTACKS: [Attack; 5] = [
    Attack::SignFlip,
    Attack::GaussianNoise,
    Attack::ALittleIsEnough,
    Attack::InnerProductManipulation,
    Attack::History,
];

impl Attack {
    pub fn name(self) -> &'static str {
        match self {
            Self::SignFlip => "sign_flip_x10",
            Self::GaussianNoise => "gaussian_noise",
            Self::ALittleIsEnough => "a_little_is_enough",
            Self::InnerProductManipulation => "inner_product_manipulation",
            Self::History => "history",
        }
    }
}

/// The round as the attackers see it.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    /// The honest contributions.
    pub honest: &'a [&'a [f32]],
    /// How many attackers there are (and so how many vectors to make).
    pub attackers: usize,
    /// The last aggregate, for the history attack (none in the first round).
    pub last_aggregate: Option<&'a [f32]>,
    /// Seeds the noise; the round number in a table run.
    pub seed: u64,
}

/// The `attackers` vectors `attack` sends in `round`.
pub fn craft(attack: Attack, round: Round<'_>) -> Result<Vec<Vec<f32>>> {
    let d = check(round.honest)?;
    let n = round.honest.len() + round.attackers;
    let mean = mean_of(round.honest, d);
    let one = |v: Vec<f32>| vec![v; round.attackers];
    Ok(match attack {
        Attack::SignFlip => one(mean.iter().map(|x| -10.0 * x).collect()),
        Attack::InnerProductManipulation => one(mean.iter().map(|x| -0.5 * x).collect()),
        Attack::GaussianNoise => {
            let rms = (mean.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / d.max(1) as f64)
                .sqrt()
                .max(1e-12);
            let normal =
                Normal::new(0.0, 10.0 * rms).map_err(|e| Error::internal(format!("noise: {e}")))?;
            let mut rng = ChaCha8Rng::seed_from_u64(round.seed);
            (0..round.attackers)
                .map(|_| {
                    mean.iter()
                        .map(|m| (f64::from(*m) + normal.sample(&mut rng)) as f32)
                        .collect()
                })
                .collect()
        }
        Attack::ALittleIsEnough => {
            let z = alie_z(n, round.attackers);
            let std: Vec<f64> = (0..d)
                .map(|j| {
                    let m = f64::from(mean[j]);
                    let var = round
                        .honest
                        .iter()
                        .map(|v| (f64::from(v[j]) - m).powi(2))
                        .sum::<f64>()
                        / round.honest.len() as f64;
                    var.sqrt()
                })
                .collect();
            one(mean
                .iter()
                .zip(&std)
                .map(|(m, s)| (f64::from(*m) - z * s) as f32)
                .collect())
        }
        Attack::History => {
            // Just inside the spread of the honest contributions around the last aggregate,
            // always along the same direction (the all-ones diagonal), so that clipping keeps
            // it and it adds up round after round.
            let centre: Vec<f32> = round
                .last_aggregate
                .map_or_else(|| mean.clone(), <[f32]>::to_vec);
            let mut distances: Vec<f64> = round
                .honest
                .iter()
                .map(|v| crate::distance2(v, &centre).sqrt())
                .collect();
            distances.sort_by(f64::total_cmp);
            let radius = distances
                .get(distances.len().saturating_sub(1) / 2)
                .copied()
                .unwrap_or(0.0);
            let step = 0.99 * radius / (d.max(1) as f64).sqrt();
            one(centre
                .iter()
                .map(|c| (f64::from(*c) + step) as f32)
                .collect())
        }
    })
}

/// A Little Is Enough's z: the largest shift that keeps the attackers' value above the
/// values of s = ⌊n/2 + 1⌋ − f honest contributors under a normal fit, z = Φ⁻¹((n − s) / n).
pub fn alie_z(n: usize, attackers: usize) -> f64 {
    let s = (n / 2 + 1).saturating_sub(attackers);
    let p = (n.saturating_sub(s)) as f64 / n.max(1) as f64;
    inverse_normal_cdf(p.clamp(1e-6, 1.0 - 1e-6))
}

/// Φ⁻¹(p) by Acklam's rational approximation (relative error below 1.2e-9).
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Rule, aggregate};

    fn honest() -> Vec<Vec<f32>> {
        (0..6)
            .map(|i| {
                (0..8)
                    .map(|j| 1.0 + 0.1 * ((i * 3 + j) % 5) as f32)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn inverse_normal_cdf_matches_known_quantiles() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959964),
            (0.8413447, 1.0),
            (0.01, -2.326348),
        ] {
            assert!((inverse_normal_cdf(p) - z).abs() < 1e-5, "Φ⁻¹({p})");
        }
        // 8 contributors, 2 attackers: s = 3, z = Φ⁻¹(5/8).
        assert!((alie_z(8, 2) - 0.318639).abs() < 1e-5);
    }

    #[test]
    fn each_attack_makes_one_vector_per_attacker_of_the_right_length() {
        let h = honest();
        let views: Vec<&[f32]> = h.iter().map(Vec::as_slice).collect();
        for attack in ATTACKS {
            let round = Round {
                honest: &views,
                attackers: 2,
                last_aggregate: None,
                seed: 3,
            };
            let sent = craft(attack, round).unwrap();
            assert_eq!(sent.len(), 2, "{attack:?}");
            assert!(
                sent.iter()
                    .all(|v| v.len() == 8 && v.iter().all(|x| x.is_finite()))
            );
        }
    }

    /// Sign flip ruins the mean and not the median; that is what the table will show at scale.
    #[test]
    fn the_mean_falls_to_a_sign_flip_and_the_median_does_not() {
        let h = honest();
        let views: Vec<&[f32]> = h.iter().map(Vec::as_slice).collect();
        let round = Round {
            honest: &views,
            attackers: 2,
            last_aggregate: None,
            seed: 0,
        };
        let bad = craft(Attack::SignFlip, round).unwrap();
        let mut all = views.clone();
        all.extend(bad.iter().map(Vec::as_slice));
        let mean = aggregate(Rule::Mean, &all, 0, None).unwrap().vector;
        let median = aggregate(Rule::Median, &all, 2, None).unwrap().vector;
        assert!(mean.iter().all(|x| *x < 0.0), "{mean:?}");
        assert!(median.iter().all(|x| *x > 0.9), "{median:?}");
    }
}
