//! DiLoCo's outer loop as pure functions over flat `f32` vectors (one per contributor, all of
//! one parameter's or span's length): no I/O, no tensors, no clock. The diloco-aggregator
//! service calls these per layer; tests and simulations call them directly.
//!
//! - [`rules`]: the robust aggregation rules (mean, trimmed mean, median, Krum, Multi-Krum,
//!   geometric median, centered clipping), their parameters derived from the contributor
//!   count and the assumed Byzantine bound, and the report that says when a rule cannot
//!   tolerate that bound;
//! - [`presteps`]: nearest-neighbour mixing and bucketing, which go before any rule;
//! - [`outer`]: SGD with Nesterov momentum applied to θ_start;
//! - [`round`]: one outer round over named parameters, a rule per layer, then the step;
//! - [`attacks`]: what Byzantine contributors send (for the robustness table and tests);
//! - [`screening`]: cheap flags on a round's submissions (zero, copy, scaled, outlier);
//! - [`ownership`]: which parameters a span holds and which an aggregator owns.
//!
//! Δ travels int8 block-quantised with `neuroshard_common::tensor::quantize_int8`.

pub mod attacks;
pub mod outer;
pub mod ownership;
pub mod presteps;
pub mod round;
pub mod rules;
pub mod screening;

pub use outer::{OuterConfig, OuterState};

/// Block size of the int8 quantisation Δ travels in (one f32 scale per this many values).
pub const DELTA_BLOCK: u32 = 64;
pub use rules::{Aggregate, Rule, RuleReport, aggregate};

/// Checks that `vectors` is non-empty, rectangular and finite; returns the dimension.
pub(crate) fn check(vectors: &[&[f32]]) -> neuroshard_common::Result<usize> {
    use neuroshard_common::Error;
    let first = vectors
        .first()
        .ok_or_else(|| Error::invalid_argument("no contributions to aggregate"))?;
    let d = first.len();
    for (i, v) in vectors.iter().enumerate() {
        if v.len() != d {
            return Err(Error::invalid_argument(format!(
                "contribution {i} has {} values, contribution 0 has {d}",
                v.len()
            )));
        }
        if let Some(j) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid_argument(format!(
                "contribution {i} is not finite at index {j}"
            )));
        }
    }
    Ok(d)
}

/// Squared Euclidean distance, accumulated in f64.
pub(crate) fn distance2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum()
}

/// The coordinate-wise mean of `vectors` (f64 accumulation).
pub(crate) fn mean_of(vectors: &[&[f32]], d: usize) -> Vec<f32> {
    let mut sum = vec![0f64; d];
    for v in vectors {
        for (s, x) in sum.iter_mut().zip(v.iter()) {
            *s += f64::from(*x);
        }
    }
    let n = vectors.len().max(1) as f64;
    sum.into_iter().map(|s| (s / n) as f32).collect()
}
