//! Robust aggregation rules: many contributors' Δ for one layer in, one Δ out. Each rule's
//! parameters derive from the number of contributors `n` and the assumed number of Byzantine
//! ones `f`; a rule asked to tolerate more than it can with `n` present refuses, naming the
//! bound, rather than fall back to averaging. A rule that degenerates (a trimmed mean that
//! trims nothing) says so in its report.
//!
//! | rule | tolerates | with f Byzantine of n |
//! |---|---|---|
//! | mean | none | f = 0 |
//! | coordinate-wise trimmed mean | f < n/2 | drops the f smallest and f largest per coordinate |
//! | coordinate-wise median | f < n/2 | |
//! | Krum | n > 2f + 2 | the contribution closest to its n − f − 2 nearest |
//! | Multi-Krum | n > 2f + 2 | the mean of the n − f best Krum scores |
//! | geometric median (smoothed Weiszfeld) | f < n/2 | |
//! | centered clipping | f < n/2 | three clipped steps from a reference (the last aggregate) |

use neuroshard_common::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::{check, distance2, mean_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Mean,
    TrimmedMean,
    Median,
    Krum,
    MultiKrum,
    GeometricMedian,
    CenteredClipping,
}

/// Every rule, in the order of the table above.
pub const RULES: [Rule; 7] = [
    Rule::Mean,
    Rule::TrimmedMean,
    Rule::Median,
    Rule::Krum,
    Rule::MultiKrum,
    Rule::GeometricMedian,
    Rule::CenteredClipping,
];

/// Weiszfeld stops when the estimate moves less than this (relative) or after
/// [`WEISZFELD_MAX_ITERATIONS`].
const WEISZFELD_TOLERANCE: f64 = 1e-7;
const WEISZFELD_MAX_ITERATIONS: usize = 200;
/// Smoothing: no contributor weighs more than 1 / this distance (Pillutla et al.'s ν).
const WEISZFELD_SMOOTHING: f64 = 1e-9;
/// Centered clipping's iterations (Karimireddy et al. use few; three is their default).
const CLIPPING_ITERATIONS: usize = 3;

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::TrimmedMean => "trimmed_mean",
            Self::Median => "median",
            Self::Krum => "krum",
            Self::MultiKrum => "multi_krum",
            Self::GeometricMedian => "geometric_median",
            Self::CenteredClipping => "centered_clipping",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        RULES.into_iter().find(|r| r.name() == name).ok_or_else(|| {
            Error::invalid_argument(format!(
                "`{name}` is not an aggregation rule ({})",
                RULES.map(Rule::name).join(", ")
            ))
        })
    }

    /// The most Byzantine contributors this rule tolerates among `n`.
    pub fn tolerates(self, n: usize) -> usize {
        match self {
            Self::Mean => 0,
            Self::TrimmedMean | Self::Median | Self::GeometricMedian | Self::CenteredClipping => {
                n.saturating_sub(1) / 2
            }
            // n > 2f + 2.
            Self::Krum | Self::MultiKrum => n.saturating_sub(3) / 2,
        }
    }

    fn bound(self) -> &'static str {
        match self {
            Self::Mean => "the mean tolerates no Byzantine contributor",
            Self::Krum | Self::MultiKrum => "it needs n > 2f + 2",
            _ => "it needs f < n/2",
        }
    }
}

/// What a rule did, for the round report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleReport {
    pub rule: Rule,
    pub contributors: usize,
    /// The Byzantine bound it was asked to tolerate.
    pub byzantine: usize,
    /// Contributors the rule kept whole (Krum: one; Multi-Krum: n − f); empty for the
    /// coordinate-wise and averaging rules.
    pub selected: Vec<usize>,
    /// A degenerate case or a choice the rule made (no reference, iterations), if any.
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub vector: Vec<f32>,
    pub report: RuleReport,
}

/// Combines `vectors` with `rule`, tolerating `byzantine` of them. `reference` is centered
/// clipping's centre (the previous aggregate; without one it starts from the coordinate-wise
/// median). Refused: no contributions, unequal lengths, non-finite values, and a Byzantine
/// bound the rule cannot tolerate with these contributors.
pub fn aggregate(
    rule: Rule,
    vectors: &[&[f32]],
    byzantine: usize,
    reference: Option<&[f32]>,
) -> Result<Aggregate> {
    let d = check(vectors)?;
    let n = vectors.len();
    if byzantine > rule.tolerates(n) {
        return Err(Error::failed_precondition(format!(
            "{} cannot tolerate {byzantine} Byzantine of {n} contributors: {} (at most {} here)",
            rule.name(),
            rule.bound(),
            rule.tolerates(n)
        )));
    }
    if let Some(r) = reference
        && (r.len() != d || r.iter().any(|x| !x.is_finite()))
    {
        return Err(Error::invalid_argument(format!(
            "reference: {} values (finite ones expected), contributions have {d}",
            r.len()
        )));
    }
    let mut report = RuleReport {
        rule,
        contributors: n,
        byzantine,
        selected: Vec::new(),
        note: None,
    };
    let vector = match rule {
        Rule::Mean => mean_of(vectors, d),
        Rule::TrimmedMean => {
            if byzantine == 0 {
                report.note = Some("trims nothing (f = 0): the mean".into());
            }
            per_coordinate(vectors, d, |column| {
                let kept = &column[byzantine..column.len() - byzantine];
                (kept.iter().map(|x| f64::from(*x)).sum::<f64>() / kept.len() as f64) as f32
            })
        }
        Rule::Median => per_coordinate(vectors, d, median_sorted),
        Rule::Krum | Rule::MultiKrum => {
            let scores = krum_scores(vectors, byzantine);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
            let keep = if rule == Rule::Krum { 1 } else { n - byzantine };
            order.truncate(keep);
            order.sort_unstable();
            let chosen: Vec<&[f32]> = order.iter().map(|&i| vectors[i]).collect();
            report.selected = order;
            mean_of(&chosen, d)
        }
        Rule::GeometricMedian => {
            let (vector, iterations) = geometric_median(vectors, d);
            report.note = Some(format!("Weiszfeld: {iterations} iterations"));
            vector
        }
        Rule::CenteredClipping => {
            let start = match reference {
                Some(r) => r.to_vec(),
                None => {
                    report.note =
                        Some("no reference yet: centred on the coordinate-wise median".into());
                    per_coordinate(vectors, d, median_sorted)
                }
            };
            centered_clipping(vectors, start)
        }
    };
    Ok(Aggregate { vector, report })
}

/// `reduce` over each coordinate's values, sorted ascending.
fn per_coordinate(vectors: &[&[f32]], d: usize, reduce: impl Fn(&[f32]) -> f32) -> Vec<f32> {
    let mut column = vec![0f32; vectors.len()];
    (0..d)
        .map(|j| {
            for (slot, v) in column.iter_mut().zip(vectors) {
                *slot = v[j];
            }
            column.sort_by(f32::total_cmp);
            reduce(&column)
        })
        .collect()
}

fn median_sorted(column: &[f32]) -> f32 {
    let n = column.len();
    if n % 2 == 1 {
        column[n / 2]
    } else {
        ((f64::from(column[n / 2 - 1]) + f64::from(column[n / 2])) / 2.0) as f32
    }
}

/// Krum's score of each contribution: the sum of squared distances to its n − f − 2 nearest
/// others (at least one).
fn krum_scores(vectors: &[&[f32]], byzantine: usize) -> Vec<f64> {
    let n = vectors.len();
    let nearest = n.saturating_sub(byzantine + 2).max(1);
    let mut d2 = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let d = distance2(vectors[i], vectors[j]);
            d2[i][j] = d;
            d2[j][i] = d;
        }
    }
    (0..n)
        .map(|i| {
            let mut others: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| d2[i][j]).collect();
            others.sort_by(f64::total_cmp);
            others.iter().take(nearest).sum()
        })
        .collect()
}

/// Smoothed Weiszfeld from the coordinate-wise median; returns the estimate and the
/// iterations it took.
fn geometric_median(vectors: &[&[f32]], d: usize) -> (Vec<f32>, usize) {
    let mut z: Vec<f64> = per_coordinate(vectors, d, median_sorted)
        .into_iter()
        .map(f64::from)
        .collect();
    for iteration in 1..=WEISZFELD_MAX_ITERATIONS {
        let weights: Vec<f64> = vectors
            .iter()
            .map(|v| {
                let dist = v
                    .iter()
                    .zip(&z)
                    .map(|(x, z)| (f64::from(*x) - z).powi(2))
                    .sum::<f64>()
                    .sqrt();
                1.0 / dist.max(WEISZFELD_SMOOTHING)
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let mut next = vec![0f64; d];
        for (v, w) in vectors.iter().zip(&weights) {
            for (n, x) in next.iter_mut().zip(v.iter()) {
                *n += w * f64::from(*x);
            }
        }
        next.iter_mut().for_each(|n| *n /= total);
        let moved = next
            .iter()
            .zip(&z)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = next.iter().map(|a| a * a).sum::<f64>().sqrt().max(1.0);
        z = next;
        if moved <= WEISZFELD_TOLERANCE * scale {
            return (z.into_iter().map(|x| x as f32).collect(), iteration);
        }
    }
    (
        z.into_iter().map(|x| x as f32).collect(),
        WEISZFELD_MAX_ITERATIONS,
    )
}

/// Centered clipping: from `centre`, [`CLIPPING_ITERATIONS`] steps of the mean of every
/// contribution's difference clipped to radius τ, τ the median distance to the centre at the
/// start (so at least half the contributions pass unclipped).
fn centered_clipping(vectors: &[&[f32]], centre: Vec<f32>) -> Vec<f32> {
    let mut v: Vec<f64> = centre.into_iter().map(f64::from).collect();
    let distances = |v: &[f64]| -> Vec<f64> {
        vectors
            .iter()
            .map(|x| {
                x.iter()
                    .zip(v)
                    .map(|(a, b)| (f64::from(*a) - b).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    };
    let mut sorted = distances(&v);
    sorted.sort_by(f64::total_cmp);
    let tau = sorted[(sorted.len() - 1) / 2];
    let n = vectors.len() as f64;
    for _ in 0..CLIPPING_ITERATIONS {
        let dist = distances(&v);
        let mut step = vec![0f64; v.len()];
        for (x, d) in vectors.iter().zip(&dist) {
            let scale = if *d > tau && *d > 0.0 { tau / d } else { 1.0 };
            for ((s, a), b) in step.iter_mut().zip(x.iter()).zip(&v) {
                *s += (f64::from(*a) - b) * scale;
            }
        }
        for (b, s) in v.iter_mut().zip(&step) {
            *b += s / n;
        }
    }
    v.into_iter().map(|x| x as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn views(vectors: &[Vec<f32>]) -> Vec<&[f32]> {
        vectors.iter().map(Vec::as_slice).collect()
    }

    fn norm(a: &[f32], b: &[f32]) -> f64 {
        distance2(a, b).sqrt()
    }

    #[test]
    fn small_cases_by_hand() {
        let v = vec![
            vec![1.0, 10.0],
            vec![2.0, 20.0],
            vec![3.0, 30.0],
            vec![100.0, -50.0],
        ];
        let v = views(&v);
        let mean = aggregate(Rule::Mean, &v, 0, None).unwrap().vector;
        assert_eq!(mean, vec![26.5, 2.5]);
        let median = aggregate(Rule::Median, &v, 1, None).unwrap().vector;
        assert_eq!(median, vec![2.5, 15.0]);
        let trimmed = aggregate(Rule::TrimmedMean, &v, 1, None).unwrap().vector;
        assert_eq!(trimmed, vec![2.5, 15.0]);
        // Five contributors tolerate one for Krum (5 > 2·1 + 2); the outlier is never chosen.
        let five = vec![
            vec![1.0, 1.0],
            vec![1.1, 0.9],
            vec![0.9, 1.1],
            vec![1.0, 1.2],
            vec![50.0, 50.0],
        ];
        let five = views(&five);
        let krum = aggregate(Rule::Krum, &five, 1, None).unwrap();
        assert_eq!(krum.report.selected.len(), 1);
        assert_ne!(krum.report.selected[0], 4);
        let multi = aggregate(Rule::MultiKrum, &five, 1, None).unwrap();
        assert_eq!(multi.report.selected, vec![0, 1, 2, 3]);
        assert!((multi.vector[0] - 1.0).abs() < 1e-6, "{:?}", multi.vector);
    }

    #[test]
    fn a_rule_that_cannot_tolerate_the_bound_refuses_and_a_degenerate_one_says_so() {
        let v = vec![vec![1.0f32], vec![2.0], vec![3.0]];
        let v = views(&v);
        let err = aggregate(Rule::Mean, &v, 1, None).unwrap_err();
        assert!(err.message.contains("mean tolerates no Byzantine"), "{err}");
        let err = aggregate(Rule::Krum, &v, 1, None).unwrap_err();
        assert!(err.message.contains("needs n > 2f + 2"), "{err}");
        assert!(err.message.contains("at most 0 here"), "{err}");
        let err = aggregate(Rule::Median, &v, 2, None).unwrap_err();
        assert!(err.message.contains("needs f < n/2"), "{err}");
        let trimmed = aggregate(Rule::TrimmedMean, &v, 0, None).unwrap();
        assert_eq!(
            trimmed.report.note.as_deref(),
            Some("trims nothing (f = 0): the mean")
        );
        assert_eq!(trimmed.vector, vec![2.0]);
    }

    #[test]
    fn bad_input_is_named() {
        let err = aggregate(Rule::Mean, &[], 0, None).unwrap_err();
        assert!(err.message.contains("no contributions"), "{err}");
        let err = aggregate(Rule::Mean, &[&[1.0, 2.0], &[1.0]], 0, None).unwrap_err();
        assert!(err.message.contains("contribution 1 has 1 values"), "{err}");
        let err = aggregate(Rule::Median, &[&[1.0], &[f32::NAN], &[2.0]], 0, None).unwrap_err();
        assert!(
            err.message
                .contains("contribution 1 is not finite at index 0"),
            "{err}"
        );
        let err = aggregate(
            Rule::CenteredClipping,
            &[&[1.0], &[2.0]],
            0,
            Some(&[1.0, 2.0]),
        )
        .unwrap_err();
        assert!(err.message.contains("reference"), "{err}");
        assert_eq!(Rule::parse("krum").unwrap(), Rule::Krum);
        assert!(
            Rule::parse("average")
                .unwrap_err()
                .message
                .contains("not an aggregation rule")
        );
    }

    fn contributions() -> impl Strategy<Value = Vec<Vec<f32>>> {
        (5usize..10, 1usize..12).prop_flat_map(|(n, d)| {
            proptest::collection::vec(proptest::collection::vec(-10f32..10.0, d), n)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every rule: the same answer whatever the contributors' order, and the common
        /// value when they all agree.
        #[test]
        fn order_does_not_matter_and_agreement_is_kept(v in contributions(), shift in 0usize..10) {
            let n = v.len();
            let mut rotated = v.clone();
            rotated.rotate_left(shift % n);
            for rule in RULES {
                let f = rule.tolerates(n).min(1);
                let a = aggregate(rule, &views(&v), f, None).unwrap().vector;
                let b = aggregate(rule, &views(&rotated), f, None).unwrap().vector;
                let scale = a.iter().map(|x| x.abs()).fold(1.0f32, f32::max);
                for (x, y) in a.iter().zip(&b) {
                    prop_assert!((x - y).abs() <= 1e-4 * scale, "{rule:?}: {a:?} vs {b:?}");
                }
                let same = vec![v[0].clone(); n];
                let agreed = aggregate(rule, &views(&same), f, None).unwrap().vector;
                for (x, y) in agreed.iter().zip(&v[0]) {
                    prop_assert!((x - y).abs() <= 1e-4, "{rule:?}: {agreed:?} vs {:?}", v[0]);
                }
            }
        }

        /// With f contributors replaced by huge vectors, every robust rule stays within a few
        /// times the honest contributions' spread of their mean (√d of it per coordinate for
        /// the coordinate-wise rules); the mean goes where the attackers send it.
        #[test]
        fn robust_rules_resist_outliers_the_mean_does_not(v in contributions(), sign in prop::bool::ANY) {
            let n = v.len();
            let f = Rule::Krum.tolerates(n);
            prop_assume!(f >= 1);
            let honest: Vec<&[f32]> = views(&v[..n - f]);
            let honest_mean = mean_of(&honest, v[0].len());
            let spread = honest.iter().map(|h| norm(h, &honest_mean)).fold(0.0, f64::max);
            let big = if sign { 1e6f32 } else { -1e6 };
            let mut attacked = v.clone();
            for a in attacked.iter_mut().skip(n - f) {
                a.iter_mut().for_each(|x| *x = big);
            }
            for rule in RULES.into_iter().filter(|r| *r != Rule::Mean) {
                let out = aggregate(rule, &views(&attacked), f, None).unwrap().vector;
                let off = norm(&out, &honest_mean);
                let bound = 4.0 * (v[0].len() as f64).sqrt() * spread + 1e-3;
                prop_assert!(off <= bound, "{rule:?}: {off} from the honest mean (spread {spread})");
            }
            let mean = aggregate(Rule::Mean, &views(&attacked), 0, None).unwrap().vector;
            prop_assert!(norm(&mean, &honest_mean) > 1e4);
        }

        /// Shifting every contribution by c shifts the result by c.
        #[test]
        fn translation_moves_the_result_with_it(v in contributions(), c in -5f32..5.0) {
            let n = v.len();
            let shifted: Vec<Vec<f32>> = v.iter().map(|x| x.iter().map(|y| y + c).collect()).collect();
            for rule in RULES {
                let f = rule.tolerates(n).min(1);
                let a = aggregate(rule, &views(&v), f, None).unwrap().vector;
                let b = aggregate(rule, &views(&shifted), f, None).unwrap().vector;
                for (x, y) in a.iter().zip(&b) {
                    prop_assert!((x + c - y).abs() <= 1e-3, "{rule:?}: {x} + {c} vs {y}");
                }
            }
        }
    }
}
