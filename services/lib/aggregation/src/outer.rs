//! The outer step: SGD with Nesterov momentum on the aggregated pseudo-gradient Δ, applied to
//! θ_start — the global weights the round started from — never to any replica's moved
//! weights. With momentum buffer `b` (zero before the first round):
//!
//! ```text
//! b      ← μ · b + Δ
//! θ_next ← θ_start − lr · (Δ + μ · b)        (Nesterov; plain momentum: θ_start − lr · b)
//! ```
//!
//! as `torch.optim.SGD(nesterov=True, dampening=0)` does with Δ as the gradient.

use neuroshard_common::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OuterConfig {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
}

impl Default for OuterConfig {
    fn default() -> Self {
        Self {
            lr: 0.7,
            momentum: 0.9,
            nesterov: true,
        }
    }
}

impl OuterConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid_argument(format!(
                "outer.lr must be positive, got {}",
                self.lr
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::invalid_argument(format!(
                "outer.momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        Ok(())
    }
}

/// One parameter's outer momentum buffer, kept across rounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OuterState {
    pub momentum: Vec<f32>,
}

impl OuterState {
    /// θ_next from `theta_start` and the aggregated `delta`, updating the momentum buffer.
    pub fn step(
        &mut self,
        config: &OuterConfig,
        theta_start: &[f32],
        delta: &[f32],
    ) -> Result<Vec<f32>> {
        if theta_start.len() != delta.len() {
            return Err(Error::invalid_argument(format!(
                "Δ has {} values, θ_start {}",
                delta.len(),
                theta_start.len()
            )));
        }
        if self.momentum.is_empty() {
            self.momentum = vec![0.0; delta.len()];
        } else if self.momentum.len() != delta.len() {
            return Err(Error::failed_precondition(format!(
                "the momentum buffer has {} values, Δ {}",
                self.momentum.len(),
                delta.len()
            )));
        }
        let (lr, mu) = (config.lr, config.momentum);
        Ok(theta_start
            .iter()
            .zip(delta)
            .zip(self.momentum.iter_mut())
            .map(|((theta, d), b)| {
                let d = f64::from(*d);
                let buffer = mu * f64::from(*b) + d;
                *b = buffer as f32;
                let update = if config.nesterov {
                    d + mu * buffer
                } else {
                    buffer
                };
                (f64::from(*theta) - lr * update) as f32
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rounds by hand, lr 0.7, μ 0.9, θ_start 1.0, Δ 0.1 then 0.2:
    /// round 1: b = 0.1,  update = 0.1 + 0.09 = 0.19,   θ = 1.0 − 0.133 = 0.867;
    /// round 2: b = 0.29, update = 0.2 + 0.261 = 0.461, θ = 0.867 − 0.3227 = 0.5443.
    #[test]
    fn nesterov_matches_two_rounds_by_hand() {
        let config = OuterConfig::default();
        let mut state = OuterState::default();
        let theta1 = state.step(&config, &[1.0], &[0.1]).unwrap();
        assert!((theta1[0] - 0.867).abs() < 1e-6, "{theta1:?}");
        assert!((state.momentum[0] - 0.1).abs() < 1e-7);
        let theta2 = state.step(&config, &theta1, &[0.2]).unwrap();
        assert!((theta2[0] - 0.5443).abs() < 1e-6, "{theta2:?}");
        assert!((state.momentum[0] - 0.29).abs() < 1e-6);
    }

    /// The step starts from θ_start. A replica moved its copy to θ_end = θ_start − Δ; taking
    /// the step from there instead would move the weights by 1 + lr·(1 + μ) times Δ.
    #[test]
    fn the_step_is_applied_to_theta_start_not_to_the_moved_weights() {
        let config = OuterConfig {
            momentum: 0.0,
            ..OuterConfig::default()
        };
        let theta_start = [2.0f32, -1.0];
        let delta = [0.5f32, 0.25];
        let theta_end: Vec<f32> = theta_start.iter().zip(&delta).map(|(t, d)| t - d).collect();
        let next = OuterState::default()
            .step(&config, &theta_start, &delta)
            .unwrap();
        assert_eq!(next, vec![2.0 - 0.35, -1.0 - 0.175]);
        let wrong = OuterState::default()
            .step(&config, &theta_end, &delta)
            .unwrap();
        assert_ne!(next, wrong);
    }

    #[test]
    fn shapes_and_settings_are_checked() {
        let config = OuterConfig::default();
        assert!(
            OuterState::default()
                .step(&config, &[1.0], &[1.0, 2.0])
                .is_err()
        );
        let mut state = OuterState {
            momentum: vec![0.0; 3],
        };
        assert!(state.step(&config, &[1.0], &[1.0]).is_err());
        assert!(OuterConfig { lr: 0.0, ..config }.validate().is_err());
        assert!(
            OuterConfig {
                momentum: 1.0,
                ..config
            }
            .validate()
            .is_err()
        );
        config.validate().unwrap();
    }
}
