//! One pre-norm decoder block: `x + attn(norm(x))`, then `h + mlp(norm(h))`.

use tch::{Tensor, nn};

use crate::attention::Attention;
use crate::config::ModelConfig;
use crate::kv_cache::LayerKv;
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::rope::Rope;

/// `model.layers.{i}`: `input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`.
#[derive(Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    /// Creates the block's tensors under `path` (= `model.layers.{i}`).
    pub fn new(path: nn::Path, config: &ModelConfig) -> Self {
        Self {
            input_layernorm: RmsNorm::new(
                &path / "input_layernorm",
                config.hidden_size,
                config.rms_eps,
            ),
            self_attn: Attention::new(&path / "self_attn", config),
            post_attention_layernorm: RmsNorm::new(
                &path / "post_attention_layernorm",
                config.hidden_size,
                config.rms_eps,
            ),
            mlp: Mlp::new(&path / "mlp", config),
        }
    }

    /// x: [batch, seq, hidden] -> [batch, seq, hidden]
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: i64,
        cache: Option<&mut LayerKv>,
    ) -> Tensor {
        let h = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), rope, offset, cache);
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }

    /// A decode batch: x [batch, 1, hidden], one independent sequence per row (see
    /// [`Attention::forward_rows`]) -> [batch, 1, hidden].
    pub fn forward_rows(
        &self,
        x: &Tensor,
        rope: &Rope,
        positions: &Tensor,
        caches: &mut [&mut LayerKv],
    ) -> Tensor {
        let h = x + self.self_attn.forward_rows(
            &self.input_layernorm.forward(x),
            rope,
            positions,
            caches,
        );
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }
}
