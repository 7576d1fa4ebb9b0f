//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.

use tch::{Tensor, nn};

use crate::config::ModelConfig;

/// Llama MLP weights `gate_proj`, `up_proj`, `down_proj`, no biases.
#[derive(Debug)]
pub struct Mlp {
    /// [intermediate, hidden]
    pub gate_proj: Tensor,
    /// [intermediate, hidden]
    pub up_proj: Tensor,
    /// [hidden, intermediate]
    pub down_proj: Tensor,
}

impl Mlp {
    /// Creates the three weights under `path` (zero-filled; see `init`).
    pub fn new(path: nn::Path, config: &ModelConfig) -> Self {
        let (hidden, inter) = (config.hidden_size, config.intermediate_size);
        Self {
            gate_proj: (&path / "gate_proj").zeros("weight", &[inter, hidden]),
            up_proj: (&path / "up_proj").zeros("weight", &[inter, hidden]),
            down_proj: (&path / "down_proj").zeros("weight", &[hidden, inter]),
        }
    }

    /// x: [.., hidden] -> [.., hidden]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let gate = x.linear::<&Tensor>(&self.gate_proj, None).silu();
        let up = x.linear::<&Tensor>(&self.up_proj, None);
        (gate * up).linear::<&Tensor>(&self.down_proj, None)
    }
}
