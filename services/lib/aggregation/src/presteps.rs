//! Pre-steps that go before any rule and strengthen it against attackers who spread their
//! harm across coordinates or hide among honest variance.
//!
//! - **Nearest-neighbour mixing** (Allouah et al., 2023): each contribution is replaced by the
//!   mean of the n − f contributions nearest to it (itself included). n in, n out; the rule
//!   then runs with the same f.
//! - **Bucketing** (Karimireddy et al., 2022): a seeded shuffle, then the mean of each bucket of
//!   `size`. ⌈n / size⌉ out; one attacker spoils at most one bucket, so the rule runs with the
//!   same f over fewer, less noisy contributions.

use neuroshard_common::{Error, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{check, distance2, mean_of};

/// Nearest-neighbour mixing of `vectors` assuming `byzantine` of them.
pub fn nearest_neighbour_mixing(vectors: &[&[f32]], byzantine: usize) -> Result<Vec<Vec<f32>>> {
    let d = check(vectors)?;
    let n = vectors.len();
    if byzantine >= n {
        return Err(Error::failed_precondition(format!(
            "nearest-neighbour mixing: {byzantine} Byzantine of {n} leaves no one to mix with"
        )));
    }
    let keep = n - byzantine;
    Ok((0..n)
        .map(|i| {
            let mut by_distance: Vec<(f64, usize)> = (0..n)
                .map(|j| (distance2(vectors[i], vectors[j]), j))
                .collect();
            by_distance.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let nearest: Vec<&[f32]> = by_distance[..keep]
                .iter()
                .map(|&(_, j)| vectors[j])
                .collect();
            mean_of(&nearest, d)
        })
        .collect())
}

/// Bucketing of `vectors` into buckets of `size` after a shuffle seeded by `seed` (the round's,
/// so a verifier can replay it).
pub fn bucketing(vectors: &[&[f32]], size: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
    let d = check(vectors)?;
    if size == 0 {
        return Err(Error::invalid_argument(
            "bucketing: bucket size must be at least 1",
        ));
    }
    let mut order: Vec<usize> = (0..vectors.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    Ok(order
        .chunks(size)
        .map(|bucket| {
            let members: Vec<&[f32]> = bucket.iter().map(|&i| vectors[i]).collect();
            mean_of(&members, d)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Rule, aggregate};

    #[test]
    fn mixing_pulls_each_contribution_to_its_neighbours() {
        let v: Vec<&[f32]> = vec![&[0.0], &[1.0], &[2.0], &[100.0]];
        let mixed = nearest_neighbour_mixing(&v, 1).unwrap();
        // 100's three nearest are itself, 2 and 1.
        assert_eq!(mixed[..3], [vec![1.0], vec![1.0], vec![1.0]]);
        assert!((mixed[3][0] - 103.0 / 3.0).abs() < 1e-5, "{mixed:?}");
        assert!(nearest_neighbour_mixing(&v, 4).is_err());
    }

    #[test]
    fn bucketing_is_a_seeded_partition_and_keeps_the_mean() {
        let data: Vec<Vec<f32>> = (0..7).map(|i| vec![i as f32, -(i as f32)]).collect();
        let v: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let a = bucketing(&v, 2, 9).unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(a, bucketing(&v, 2, 9).unwrap(), "same seed, same buckets");
        assert_ne!(
            a,
            bucketing(&v, 2, 10).unwrap(),
            "another seed, other buckets"
        );
        // Weighted by bucket sizes, the buckets' mean is the mean.
        let total: f32 = a[..3].iter().map(|b| b[0] * 2.0).sum::<f32>() + a[3][0];
        assert!((total / 7.0 - 3.0).abs() < 1e-5);
        assert!(bucketing(&v, 0, 1).is_err());
    }

    #[test]
    fn mixing_then_a_rule_still_rejects_an_outlier() {
        let data: Vec<Vec<f32>> = vec![
            vec![1.0, 1.0],
            vec![1.2, 0.8],
            vec![0.8, 1.2],
            vec![1.0, 0.9],
            vec![1e6, -1e6],
        ];
        let v: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let mixed = nearest_neighbour_mixing(&v, 1).unwrap();
        let views: Vec<&[f32]> = mixed.iter().map(Vec::as_slice).collect();
        let out = aggregate(Rule::Median, &views, 1, None).unwrap().vector;
        assert!(
            (out[0] - 1.0).abs() < 0.2 && (out[1] - 1.0).abs() < 0.2,
            "{out:?}"
        );
    }
}
