//! AdamW whose state is ordinary tensors the caller owns: a pipeline stage reads its moments,
//! resets them, and steps only its own span, and a pipelined step equals a single-process one
//! because every stage applies the same update to the same gradients.
//!
//! The update is libtorch's `AdamW`, operation for operation (decoupled weight decay first,
//! then the bias-corrected moments), so the single-process trainer keeps its numbers. Norm
//! gains ([`crate::init::is_norm`]) are not decayed.
//!
//! Gradient clipping is global: [`clip_coefficient`] turns the sum of squared gradient norms
//! over every stage into the factor each stage scales its own gradients by.

use std::collections::BTreeMap;

use tch::{Kind, Tensor, nn};

use crate::error::{ModelError, Result};

/// AdamW's hyper-parameters (the learning rate comes with each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// Whether the parameter `name` is decayed: everything but the norm gains.
pub fn decays(name: &str) -> bool {
    !crate::init::is_norm(name)
}

/// The factor gradients are scaled by so that their global L2 norm is at most `max_norm`,
/// given the sum of squared norms over every stage (libtorch's `clip_grad_norm_` rule,
/// including its 1e-6). 1.0 when no clipping is needed.
pub fn clip_coefficient(total_squared_norm: f64, max_norm: f64) -> f64 {
    let coefficient = max_norm / (total_squared_norm.sqrt() + 1e-6);
    coefficient.min(1.0)
}

/// The first and second moments of one parameter, shaped like it (f32).
#[derive(Debug)]
pub struct Moments {
    /// exp_avg: same shape as the parameter
    pub m: Tensor,
    /// exp_avg_sq: same shape as the parameter
    pub v: Tensor,
}

/// AdamW over the trainable variables of one var store (a whole model or one stage's span).
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    /// name → the parameter (a shallow copy sharing storage with the var store)
    params: BTreeMap<String, Tensor>,
    moments: BTreeMap<String, Moments>,
    steps: u64,
}

impl AdamW {
    /// Zero moments for every variable of `vs`.
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> Self {
        let params: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let moments = zero_moments(&params);
        Self {
            config,
            params,
            moments,
            steps: 0,
        }
    }

    pub fn config(&self) -> AdamWConfig {
        self.config
    }

    /// Steps taken since the moments were last zero.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The moments of every parameter, by name.
    pub fn moments(&self) -> &BTreeMap<String, Moments> {
        &self.moments
    }

    /// Zero moments and step count, as at the start of training.
    pub fn reset(&mut self) {
        self.moments = zero_moments(&self.params);
        self.steps = 0;
    }

    /// Sum of the squared L2 norms of the gradients here (0 for parameters without one).
    pub fn squared_grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            self.params
                .values()
                .map(|p| p.grad())
                .filter(Tensor::defined)
                .map(|g| {
                    g.to_kind(Kind::Double)
                        .square()
                        .sum(Kind::Double)
                        .double_value(&[])
                })
                .sum()
        })
    }

    /// Multiplies every gradient by `factor` (the global clip coefficient), unless it is 1.
    pub fn scale_grads(&mut self, factor: f64) {
        if factor >= 1.0 {
            return;
        }
        tch::no_grad(|| {
            for p in self.params.values() {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        });
    }

    /// Zeroes every gradient (before the next step's backward passes accumulate).
    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            p.zero_grad();
        }
    }

    /// One update at learning rate `lr` from the accumulated gradients. A gradient that is
    /// not finite is refused before any parameter changes.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let c = self.config;
        tch::no_grad(|| {
            for (name, p) in &self.params {
                let g = p.grad();
                if g.defined() && g.isfinite().all().int64_value(&[]) == 0 {
                    return Err(ModelError::Training(format!(
                        "gradient of {name} holds NaN or Inf; no parameter was updated"
                    )));
                }
            }
            self.steps += 1;
            let t = self.steps as f64;
            let bias_correction1 = 1.0 - c.beta1.powf(t);
            let bias_correction2 = 1.0 - c.beta2.powf(t);
            let step_size = lr / bias_correction1;
            for (name, p) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let Some(Moments { m, v }) = self.moments.get_mut(name) else {
                    continue;
                };
                let g = g.to_kind(Kind::Float);
                if decays(name) {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = m.g_mul_scalar_(c.beta1);
                let _ = m.g_add_(&(&g * (1.0 - c.beta1)));
                let _ = v.g_mul_scalar_(c.beta2);
                let _ = v.g_add_(&(&g * &g * (1.0 - c.beta2)));
                let denom = v.sqrt() / bias_correction2.sqrt() + c.eps;
                let update = (&*m / denom) * step_size;
                let _ = p.g_sub_(&update.to_kind(p.kind()));
            }
            Ok(())
        })
    }
}

fn zero_moments(params: &BTreeMap<String, Tensor>) -> BTreeMap<String, Moments> {
    params
        .iter()
        .map(|(name, p)| {
            let zeros = || Tensor::zeros(p.size(), (Kind::Float, p.device()));
            (
                name.clone(),
                Moments {
                    m: zeros(),
                    v: zeros(),
                },
            )
        })
        .collect()
}
