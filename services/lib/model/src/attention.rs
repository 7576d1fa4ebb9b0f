//! Grouped-query self-attention with RoPE: `num_heads` query heads share `num_kv_heads`
//! key/value heads, which shrinks the KV cache by `num_heads / num_kv_heads`.

use tch::{Device, Kind, Tensor, nn};

use crate::config::ModelConfig;
use crate::kv_cache::LayerKv;
use crate::rope::Rope;

/// Projections named as in Llama: `q_proj`, `k_proj`, `v_proj`, `o_proj`, no biases.
#[derive(Debug)]
pub struct Attention {
    /// [num_heads * head_dim, hidden]
    pub q_proj: Tensor,
    /// [num_kv_heads * head_dim, hidden]
    pub k_proj: Tensor,
    /// [num_kv_heads * head_dim, hidden]
    pub v_proj: Tensor,
    /// [hidden, num_heads * head_dim]
    pub o_proj: Tensor,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// Creates the four projection weights under `path` (zero-filled; see `init`).
    pub fn new(path: nn::Path, config: &ModelConfig) -> Self {
        let head_dim = config.head_dim();
        let hidden = config.hidden_size;
        let q_out = config.num_heads * head_dim;
        let kv_out = config.num_kv_heads * head_dim;
        Self {
            q_proj: (&path / "q_proj").zeros("weight", &[q_out, hidden]),
            k_proj: (&path / "k_proj").zeros("weight", &[kv_out, hidden]),
            v_proj: (&path / "v_proj").zeros("weight", &[kv_out, hidden]),
            o_proj: (&path / "o_proj").zeros("weight", &[hidden, q_out]),
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim,
        }
    }

    /// x: [batch, seq, hidden] at positions `[offset, offset + seq)` -> [batch, seq, hidden].
    /// With a cache, this step's keys and values are appended and attention covers the prefix.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: i64,
        cache: Option<&mut LayerKv>,
    ) -> Tensor {
        let (batch, seq) = (x.size()[0], x.size()[1]);
        let heads = |proj: &Tensor, n: i64| {
            // [batch, seq, n * head_dim] -> [batch, n, seq, head_dim]
            x.linear::<&Tensor>(proj, None)
                .view([batch, seq, n, self.head_dim])
                .transpose(1, 2)
        };
        let q = rope.apply(&heads(&self.q_proj, self.num_heads), offset);
        let k = rope.apply(&heads(&self.k_proj, self.num_kv_heads), offset);
        let v = heads(&self.v_proj, self.num_kv_heads);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let total = k.size()[2];
        let out = if offset == 0 && total == seq {
            // Whole sequence at once: the fused causal kernel.
            sdpa(&q, &k, &v, None, true)
        } else if seq == 1 {
            // One new position attends to everything cached.
            sdpa(&q, &k, &v, None, false)
        } else {
            // A chunk after a cached prefix: causal mask aligned to the bottom right.
            let mask = causal_mask_after_prefix(seq, total, x.device());
            sdpa(&q, &k, &v, Some(&mask), false)
        };
        // [batch, heads, seq, head_dim] -> [batch, seq, hidden]
        out.transpose(1, 2)
            .contiguous()
            .view([batch, seq, self.num_heads * self.head_dim])
            .linear::<&Tensor>(&self.o_proj, None)
    }
}

fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, causal: bool) -> Tensor {
    // enable_gqa lets the kernel broadcast kv heads over query groups without copies.
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, None, true)
}

/// [seq, total] bool: query i (absolute position total - seq + i) sees keys j <= that position.
fn causal_mask_after_prefix(seq: i64, total: i64, device: Device) -> Tensor {
    let prefix = total - seq;
    let rows = Tensor::arange(seq, (Kind::Int64, device)).unsqueeze(1) + prefix;
    let cols = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
    cols.le_tensor(&rows)
}
