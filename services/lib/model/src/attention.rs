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
        self.project_out(&out, batch, seq)
    }

    /// One new position for each of several independent sequences (a decode batch):
    /// x: [batch, 1, hidden], row b at position `positions[b]` (int64 [batch], on x's device)
    /// with its own cache `caches[b]` holding exactly that many positions. Each row's key and
    /// value are appended to its cache; rows attend only to their own cache, padded to the
    /// longest and masked, so the result equals running the rows one by one.
    pub fn forward_rows(
        &self,
        x: &Tensor,
        rope: &Rope,
        positions: &Tensor,
        caches: &mut [&mut LayerKv],
    ) -> Tensor {
        let batch = x.size()[0];
        let heads = |proj: &Tensor, n: i64| {
            x.linear::<&Tensor>(proj, None)
                .view([batch, 1, n, self.head_dim])
                .transpose(1, 2)
        };
        let q = rope.apply_rows(&heads(&self.q_proj, self.num_heads), positions);
        let k = rope.apply_rows(&heads(&self.k_proj, self.num_kv_heads), positions);
        let v = heads(&self.v_proj, self.num_kv_heads);
        let full: Vec<(Tensor, Tensor)> = caches
            .iter_mut()
            .enumerate()
            .map(|(b, cache)| cache.append(k.narrow(0, b as i64, 1), v.narrow(0, b as i64, 1)))
            .collect();
        let lengths: Vec<i64> = full.iter().map(|(k, _)| k.size()[2]).collect();
        let longest = lengths.iter().copied().max().unwrap_or(1);
        // Pad every row's keys and values at the end of the position axis to `longest`.
        let padded = |t: &Tensor| t.constant_pad_nd([0, 0, 0, longest - t.size()[2]]);
        let keys: Vec<Tensor> = full.iter().map(|(k, _)| padded(k)).collect();
        let values: Vec<Tensor> = full.iter().map(|(_, v)| padded(v)).collect();
        let (keys, values) = (Tensor::cat(&keys, 0), Tensor::cat(&values, 0));
        // [batch, 1, 1, longest] bool: row b sees its first lengths[b] positions.
        let visible = Tensor::arange(longest, (Kind::Int64, x.device()))
            .unsqueeze(0)
            .lt_tensor(
                &Tensor::from_slice(&lengths)
                    .to_device(x.device())
                    .unsqueeze(1),
            )
            .view([batch, 1, 1, longest]);
        let out = sdpa(&q, &keys, &values, Some(&visible), false);
        self.project_out(&out, batch, 1)
    }

    /// [batch, heads, seq, head_dim] -> [batch, seq, hidden] through `o_proj`.
    fn project_out(&self, out: &Tensor, batch: i64, seq: i64) -> Tensor {
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
