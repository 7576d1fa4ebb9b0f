//! `ModelConfig`: the shape of a NeuroLLM, and its mapping to a Hugging Face `LlamaForCausalLM`
//! `config.json` so exported checkpoints load in `transformers` unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Shape of a NeuroLLM. Field names follow the design document; `to_hf_json` maps them to
/// the Llama names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rms_eps")]
    pub rms_eps: f64,
    pub max_seq_len: i64,
}

/// The usual SwiGLU width for `hidden`: 8/3 · hidden (same parameter count as a 4 · hidden
/// two-matrix MLP), rounded up to a multiple of `multiple_of` for efficient matmuls.
pub fn swiglu_intermediate(hidden: i64, multiple_of: i64) -> i64 {
    let raw = (8 * hidden + 2) / 3;
    (raw + multiple_of - 1) / multiple_of * multiple_of
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_rms_eps() -> f64 {
    1e-6
}

impl ModelConfig {
    /// A small model that trains in minutes on two CPU cores: the local default.
    pub fn small(vocab_size: i64) -> Self {
        Self {
            vocab_size,
            hidden_size: 256,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: swiglu_intermediate(256, 8),
            rope_theta: default_rope_theta(),
            rms_eps: default_rms_eps(),
            max_seq_len: 256,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads
    }

    /// Checks every invariant the layers rely on; call before building anything from a config
    /// that came from outside.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return Err(Error::invalid_argument(format!(
                    "{name} must be positive, got {value}"
                )));
            }
        }
        if self.hidden_size % self.num_heads != 0 {
            return Err(Error::invalid_argument(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            )));
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(Error::invalid_argument(format!(
                "num_heads {} is not divisible by num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.head_dim() % 2 != 0 {
            return Err(Error::invalid_argument(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::invalid_argument(format!(
                "rope_theta must be a positive number, got {}",
                self.rope_theta
            )));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(Error::invalid_argument(format!(
                "rms_eps must be a positive number, got {}",
                self.rms_eps
            )));
        }
        Ok(())
    }

    /// Hugging Face `config.json` for `LlamaForCausalLM` with this shape.
    pub fn to_hf_json(&self, torch_dtype: &str, bos_token_id: i64, eos_token_id: i64) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim(),
            "intermediate_size": self.intermediate_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_seq_len,
            "tie_word_embeddings": false,
            "attention_bias": false,
            "mlp_bias": false,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
            "use_cache": true,
        })
    }

    /// Reads the shape back from a Hugging Face Llama `config.json`.
    pub fn from_hf_json(value: &Value) -> Result<Self> {
        let int = |key: &str| -> Result<i64> {
            value.get(key).and_then(Value::as_i64).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "config.json: `{key}` is missing or not an integer"
                ))
            })
        };
        let float = |key: &str, default: f64| -> Result<f64> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| {
                    Error::invalid_argument(format!("config.json: `{key}` is not a number"))
                }),
            }
        };
        if let Some(model_type) = value.get("model_type").and_then(Value::as_str)
            && model_type != "llama"
        {
            return Err(Error::invalid_argument(format!(
                "config.json: model_type `{model_type}` is not `llama`"
            )));
        }
        if value.get("tie_word_embeddings").and_then(Value::as_bool) == Some(true) {
            return Err(Error::invalid_argument(
                "config.json: tied embeddings are not supported (embedding and head live on different nodes)",
            ));
        }
        let num_heads = int("num_attention_heads")?;
        let rope_theta = match value
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
        {
            Some(v) => v.as_f64().ok_or_else(|| {
                Error::invalid_argument("config.json: rope_parameters.rope_theta is not a number")
            })?,
            None => float("rope_theta", default_rope_theta())?,
        };
        let config = Self {
            vocab_size: int("vocab_size")?,
            hidden_size: int("hidden_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads,
            num_kv_heads: value
                .get("num_key_value_heads")
                .and_then(Value::as_i64)
                .unwrap_or(num_heads),
            intermediate_size: int("intermediate_size")?,
            rope_theta,
            rms_eps: float("rms_norm_eps", default_rms_eps())?,
            max_seq_len: int("max_position_embeddings")?,
        };
        if let Some(head_dim) = value.get("head_dim").and_then(Value::as_i64)
            && head_dim != config.head_dim()
        {
            return Err(Error::invalid_argument(format!(
                "config.json: head_dim {head_dim} differs from hidden_size / num_attention_heads = {}",
                config.head_dim()
            )));
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_json_round_trips() {
        let config = ModelConfig::small(512);
        let back = ModelConfig::from_hf_json(&config.to_hf_json("float32", 0, 0)).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut config = ModelConfig::small(512);
        config.num_kv_heads = 3;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("num_kv_heads 3"), "{err}");
        config.num_kv_heads = 2;
        config.hidden_size = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("hidden_size")
        );
    }

    #[test]
    fn rejects_tied_embeddings_and_other_model_types() {
        let mut value = ModelConfig::small(512).to_hf_json("float32", 0, 0);
        value["tie_word_embeddings"] = json!(true);
        assert!(
            ModelConfig::from_hf_json(&value)
                .unwrap_err()
                .to_string()
                .contains("tied")
        );
        let mut value = ModelConfig::small(512).to_hf_json("float32", 0, 0);
        value["model_type"] = json!("gpt2");
        assert!(
            ModelConfig::from_hf_json(&value)
                .unwrap_err()
                .to_string()
                .contains("gpt2")
        );
    }
}
