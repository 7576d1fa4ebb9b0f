//! Rotary position embeddings in the Llama "rotate half" layout: the first and second halves
//! of each head are the two coordinates of each rotated pair.

use tch::{Device, Kind, Tensor};

/// Precomputed cos/sin tables for positions `[0, max_seq_len)`.
#[derive(Debug)]
pub struct Rope {
    /// [max_seq_len, head_dim] f32
    cos: Tensor,
    /// [max_seq_len, head_dim] f32
    sin: Tensor,
}

impl Rope {
    /// inv_freq[i] = theta^(-2i/head_dim) for i in [0, head_dim/2).
    pub fn new(head_dim: i64, max_seq_len: i64, theta: f64, device: Device) -> Self {
        let opts = (Kind::Float, device);
        // Exponents computed in f64 and cast: the same values `transformers` gets.
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Double)
            / head_dim as f64;
        let inv_freq = Tensor::from(theta)
            .to_device(device)
            .pow(&exponents)
            .reciprocal()
            .to_kind(Kind::Float);
        let positions = Tensor::arange(max_seq_len, opts);
        // [max_seq_len, head_dim/2]
        let freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
        // [max_seq_len, head_dim]
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Self {
            cos: emb.cos(),
            sin: emb.sin(),
        }
    }

    /// Rotates x: [batch, heads, seq, head_dim] whose first position is `offset`.
    /// The caller guarantees `offset + seq <= max_seq_len`.
    pub fn apply(&self, x: &Tensor, offset: i64) -> Tensor {
        let seq = x.size()[2];
        let dtype = x.kind();
        // [seq, head_dim], broadcast over batch and heads; cast like transformers does.
        let cos = self.cos.narrow(0, offset, seq).to_kind(dtype);
        let sin = self.sin.narrow(0, offset, seq).to_kind(dtype);
        x * cos + rotate_half(x) * sin
    }

    /// Rotates x: [batch, heads, 1, head_dim] whose row b is at position `positions[b]`
    /// (int64 [batch] on the tables' device, each below `max_seq_len`).
    pub fn apply_rows(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let (batch, head_dim) = (x.size()[0], x.size()[3]);
        let dtype = x.kind();
        // [batch, 1, 1, head_dim], broadcast over heads.
        let cos = self
            .cos
            .index_select(0, positions)
            .to_kind(dtype)
            .view([batch, 1, 1, head_dim]);
        let sin = self
            .sin
            .index_select(0, positions)
            .to_kind(dtype)
            .view([batch, 1, 1, head_dim]);
        x * cos + rotate_half(x) * sin
    }
}

/// [x1, x2] -> [-x2, x1] on the last dimension.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}
