//! RMSNorm as Llama defines it: normalise in f32, cast back, then scale.

use tch::{Kind, Tensor, nn};

/// Optimizer parameter group of the norm gains, which get no weight decay in libtorch's
/// optimizers (NeuroShard's own [`crate::adamw`] goes by [`crate::init::is_norm`]).
pub const NO_DECAY_GROUP: usize = 1;

/// `y = weight * (x / sqrt(mean(x², last dim) + eps))`, statistics taken in f32 so bf16
/// activations keep their precision; matches `LlamaRMSNorm`.
#[derive(Debug)]
pub struct RmsNorm {
    /// [hidden]
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Creates `<path>.weight` of shape [hidden], initialised to ones.
    pub fn new(path: nn::Path, hidden: i64, eps: f64) -> Self {
        let weight = path.set_group(NO_DECAY_GROUP).ones("weight", &[hidden]);
        Self { weight, eps }
    }

    /// x: [.., hidden] -> [.., hidden], same dtype as x.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dtype = x.kind();
        if dtype == Kind::Float {
            // Already f32: libtorch's fused kernel computes the same thing in one pass
            // (and one backward), instead of square/mean/rsqrt/mul as separate ops.
            let hidden = self.weight.size()[0];
            return x.rms_norm([hidden], Some(&self.weight), self.eps);
        }
        let x32 = x.to_kind(Kind::Float);
        let inv_rms = (x32.square().mean_dim(-1, true, Kind::Float) + self.eps).rsqrt();
        (x32 * inv_rms).to_kind(dtype) * &self.weight
    }
}
