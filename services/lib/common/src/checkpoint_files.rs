//! The layout of a checkpoint directory (a Hugging Face `LlamaForCausalLM` directory plus our
//! training report) and reading its shape, without libtorch: `neuroshard-model` writes these
//! files, and the local swarm, which runs services and never tensors, reads them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model_config::ModelConfig;

/// The model's shape, as `transformers` reads it.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Present instead of [`WEIGHTS_FILE`] when the weights are split into several files.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The report of the training run that produced the weights (loss curves), when there was one.
pub const TRAINING_REPORT_FILE: &str = "training.json";

/// Reads the model shape from `dir/config.json`.
pub fn read_model_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::invalid_argument(format!("{}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid_argument(format!("{}: {e}", path.display())))?;
    ModelConfig::from_hf_json(&value)
        .map_err(|e| Error::invalid_argument(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shape_back_and_names_the_file_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let config = ModelConfig::small(384);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            config.to_hf_json("float32", 0, 1).to_string(),
        )
        .unwrap();
        assert_eq!(read_model_config(dir.path()).unwrap(), config);
        let missing = tempfile::tempdir().unwrap();
        let err = read_model_config(missing.path()).unwrap_err().to_string();
        assert!(err.contains(CONFIG_FILE), "{err}");
    }
}
