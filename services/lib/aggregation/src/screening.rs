//! Cheap checks of a round's submissions for one span, before any loss is computed: a Δ that
//! is zero, a copy of an earlier submission (or a rescaled copy), one whose size is far from
//! the others', one far from the robust centre of the round, and one that does not point
//! where the round's training went. Flags are evidence for the
//! verifier to weigh, not verdicts: the held-out-loss score decides what is paid.

use serde::{Deserialize, Serialize};

use crate::{check, distance2};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScreeningConfig {
    /// A submission whose cosine similarity with an earlier one is at least this is a copy.
    pub copy_cosine: f64,
    /// A norm below this share of the median norm is zero.
    pub zero_ratio: f64,
    /// A norm more than this many times the median norm (or less than its inverse, above
    /// zero) is scaled.
    pub scale_ratio: f64,
    /// A distance to the coordinate-wise median more than this many times the median of those
    /// distances is an outlier.
    pub outlier_ratio: f64,
    /// A cosine with the coordinate-wise median below this share of the round's median
    /// cosine is unaligned (a Δ that does not point where the round's training went: random
    /// or from other data). Checked only when the round has a direction (median cosine at
    /// least [`ScreeningConfig::min_round_alignment`]).
    pub alignment_ratio: f64,
    pub min_round_alignment: f64,
}

impl Default for ScreeningConfig {
    fn default() -> Self {
        Self {
            copy_cosine: 0.999,
            zero_ratio: 1e-6,
            scale_ratio: 3.0,
            outlier_ratio: 3.0,
            alignment_ratio: 0.5,
            min_round_alignment: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "flag", rename_all = "snake_case")]
pub enum Flag {
    Zero,
    /// Points the same way as submission `of`, which came earlier.
    Copy {
        of: usize,
        cosine: f64,
    },
    /// Its norm over the round's median norm.
    Scaled {
        ratio: f64,
    },
    /// Its distance to the coordinate-wise median over the median such distance.
    Outlier {
        ratio: f64,
    },
    /// Its cosine with the coordinate-wise median, and the round's median cosine.
    Unaligned {
        cosine: f64,
        round: f64,
    },
}

/// The flags of each submission, in arrival order (an earlier one is the original a later
/// copy is flagged against). Refused input (unequal lengths, NaN) gives `Err`.
pub fn screen(
    vectors: &[&[f32]],
    config: &ScreeningConfig,
) -> neuroshard_common::Result<Vec<Vec<Flag>>> {
    let d = check(vectors)?;
    let n = vectors.len();
    let norms: Vec<f64> = vectors
        .iter()
        .map(|v| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt())
        .collect();
    let median_norm = median(norms.clone());
    let centre: Vec<f32> = (0..d)
        .map(|j| {
            let mut column: Vec<f32> = vectors.iter().map(|v| v[j]).collect();
            column.sort_by(f32::total_cmp);
            if n % 2 == 1 {
                column[n / 2]
            } else {
                (column[n / 2 - 1] + column[n / 2]) / 2.0
            }
        })
        .collect();
    let distances: Vec<f64> = vectors
        .iter()
        .map(|v| distance2(v, &centre).sqrt())
        .collect();
    let median_distance = median(distances.clone());
    let centre_norm = centre
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    let alignment: Vec<f64> = vectors
        .iter()
        .zip(&norms)
        .map(|(v, norm)| {
            let dot: f64 = v
                .iter()
                .zip(&centre)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            if *norm > 0.0 && centre_norm > 0.0 {
                dot / (norm * centre_norm)
            } else {
                0.0
            }
        })
        .collect();
    let round_alignment = median(alignment.clone());
    Ok((0..n)
        .map(|i| {
            let mut flags = Vec::new();
            if norms[i] <= config.zero_ratio * median_norm || norms[i] == 0.0 {
                flags.push(Flag::Zero);
                return flags;
            }
            for j in 0..i {
                if norms[j] == 0.0 {
                    continue;
                }
                let dot: f64 = vectors[i]
                    .iter()
                    .zip(vectors[j])
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let cosine = dot / (norms[i] * norms[j]);
                if cosine >= config.copy_cosine {
                    flags.push(Flag::Copy { of: j, cosine });
                    break;
                }
            }
            if median_norm > 0.0 {
                let ratio = norms[i] / median_norm;
                if ratio > config.scale_ratio || ratio < 1.0 / config.scale_ratio {
                    flags.push(Flag::Scaled { ratio });
                }
            }
            if n >= 3 && median_distance > 0.0 {
                let ratio = distances[i] / median_distance;
                if ratio > config.outlier_ratio {
                    flags.push(Flag::Outlier { ratio });
                }
            }
            if n >= 3
                && round_alignment >= config.min_round_alignment
                && alignment[i] < config.alignment_ratio * round_alignment
            {
                flags.push(Flag::Unaligned {
                    cosine: alignment[i],
                    round: round_alignment,
                });
            }
            flags
        })
        .collect())
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    /// A round of `n` honest Δ: a shared direction (they trained from the same θ_start on
    /// data of one distribution) plus each one's own noise of the same size.
    fn honest_round(n: usize, d: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        let normal = Normal::new(0.0f32, 1.0).unwrap();
        let shared: Vec<f32> = (0..d).map(|_| normal.sample(rng)).collect();
        (0..n)
            .map(|_| shared.iter().map(|s| s + normal.sample(rng)).collect())
            .collect()
    }

    /// 100 seeded trials each: an honest round passes clean (the false-positive rate is
    /// counted, and bounded), and a zero, a copied, a ×10 and a random Δ among 7 honest ones
    /// are flagged every time.
    #[test]
    fn zero_copied_scaled_and_random_submissions_are_flagged_and_honest_ones_pass() {
        let config = ScreeningConfig::default();
        let (n, d, trials) = (8usize, 512usize, 100u64);
        let mut false_positives = 0usize;
        for seed in 0..trials {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let honest = honest_round(n, d, &mut rng);
            let views: Vec<&[f32]> = honest.iter().map(Vec::as_slice).collect();
            false_positives += screen(&views, &config)
                .unwrap()
                .iter()
                .filter(|f| !f.is_empty())
                .count();

            let normal = Normal::new(0.0f32, 1.0).unwrap();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let random: Vec<f32> = {
                let r: Vec<f32> = (0..d).map(|_| normal.sample(&mut rng)).collect();
                let scale = norm(&honest[0]) / norm(&r);
                r.iter().map(|x| x * scale).collect()
            };
            let cheats: [(&str, Vec<f32>); 4] = [
                ("zero", vec![0.0; d]),
                ("copy", honest[2].clone()),
                ("scaled", honest[3].iter().map(|x| x * 10.0).collect()),
                ("random", random),
            ];
            for (name, cheat) in cheats {
                let mut round: Vec<&[f32]> = views[..n - 1].to_vec();
                round.push(&cheat);
                let flags = screen(&round, &config).unwrap();
                let flagged = &flags[n - 1];
                let expected = match name {
                    "zero" => flagged.contains(&Flag::Zero),
                    "copy" => flagged
                        .iter()
                        .any(|f| matches!(f, Flag::Copy { of: 2, .. })),
                    "scaled" => flagged.iter().any(|f| matches!(f, Flag::Scaled { .. })),
                    _ => flagged
                        .iter()
                        .any(|f| matches!(f, Flag::Outlier { .. } | Flag::Unaligned { .. })),
                };
                assert!(expected, "seed {seed}: {name} not flagged: {flagged:?}");
            }
        }
        let rate = false_positives as f64 / (trials as f64 * n as f64);
        eprintln!(
            "honest submissions flagged: {false_positives} of {} ({rate:.4})",
            trials as usize * n
        );
        assert!(rate <= 0.01, "false-positive rate {rate}");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(screen(&[], &ScreeningConfig::default()).is_err());
        assert!(screen(&[&[1.0], &[1.0, 2.0]], &ScreeningConfig::default()).is_err());
    }
}
