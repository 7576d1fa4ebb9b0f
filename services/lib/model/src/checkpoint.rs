//! Checkpoint directories in the Hugging Face layout: `config.json` (LlamaForCausalLM),
//! `model.safetensors` (or `model.safetensors.index.json` + parts) with Llama tensor names, and
//! `tokenizer.json`. `transformers.LlamaForCausalLM.from_pretrained(dir)` loads them unchanged.
//! A shard loads only its own tensors. Never pickle.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::safetensors_io::{self, SafetensorsFile};
use crate::shard::{Shard, ShardSpec};

/// The file names live in the pure domain, so crates without libtorch (the local swarm) read
/// checkpoints by the same names.
pub use neuroshard_common::checkpoint_files::{
    CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
};

/// Reads the model shape from `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::json(&path, e))?;
    ModelConfig::from_hf_json(&value).map_err(|e| ModelError::Checkpoint {
        path,
        message: e.to_string(),
    })
}

/// Builds the shard `spec` of the checkpoint in `dir` on `device` in `kind`, reading only
/// the tensors that shard holds.
pub fn load_shard(dir: &Path, spec: ShardSpec, device: Device, kind: Kind) -> Result<Shard> {
    let config = read_config(dir)?;
    let mut shard = Shard::new(&config, spec, device, kind)?;
    load_into(&mut shard, dir)?;
    Ok(shard)
}

/// Fills every weight of `shard` from the checkpoint in `dir`, checking names and shapes.
pub fn load_into(shard: &mut Shard, dir: &Path) -> Result<()> {
    load_matching(shard, dir, |_| true)
}

/// Fills the weights of `shard` whose names pass `wanted` from the checkpoint in `dir`,
/// checking names and shapes; the others keep their values.
pub fn load_matching(shard: &mut Shard, dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<()> {
    let mut weights = Weights::open(dir)?;
    let _guard = tch::no_grad_guard();
    // Sorted, so the first problem reported is the same every time.
    let vars: BTreeMap<String, Tensor> = shard
        .var_store()
        .variables()
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .collect();
    for (name, mut var) in vars {
        let stored = weights.read(&name, &var.size())?;
        var.f_copy_(&stored.to_kind(var.kind()).to_device(var.device()))?;
    }
    Ok(())
}

/// Writes a full-model shard as a checkpoint: `config.json`, `model.safetensors`, and
/// `tokenizer.json` when given. Every file is written atomically.
pub fn save(
    dir: &Path,
    shard: &Shard,
    tokenizer_json: Option<&str>,
    eos_token_id: i64,
) -> Result<()> {
    let spec = shard.spec();
    if spec != ShardSpec::full(shard.config().num_layers) {
        return Err(ModelError::InvalidInput(format!(
            "only a full model can be saved as a checkpoint; this shard holds [{}, {})",
            spec.start, spec.end
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors: BTreeMap<String, Tensor> = shard.var_store().variables().into_iter().collect();
    safetensors_io::write(&dir.join(WEIGHTS_FILE), &tensors)?;
    let dtype = match shard.kind() {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    };
    let config = shard.config().to_hf_json(dtype, eos_token_id, eos_token_id);
    write_json(&dir.join(CONFIG_FILE), &config)?;
    if let Some(tokenizer) = tokenizer_json {
        safetensors_io::write_atomic(&dir.join(TOKENIZER_FILE), tokenizer.as_bytes())?;
    }
    Ok(())
}

/// Pretty JSON, written atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| ModelError::json(path, e))?;
    text.push('\n');
    safetensors_io::write_atomic(path, text.as_bytes())
}

#[derive(Debug, Deserialize)]
struct WeightIndex {
    weight_map: HashMap<String, String>,
}

/// The weights of a checkpoint: one file, or several named by an index.
#[derive(Debug)]
struct Weights {
    dir: PathBuf,
    /// tensor name -> file name, when an index is present.
    index: Option<HashMap<String, String>>,
    open_files: HashMap<String, SafetensorsFile>,
}

impl Weights {
    fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(WEIGHTS_INDEX_FILE);
        let index = if dir.join(WEIGHTS_FILE).exists() {
            None
        } else if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let index: WeightIndex =
                serde_json::from_str(&text).map_err(|e| ModelError::json(&index_path, e))?;
            Some(index.weight_map)
        } else {
            return Err(ModelError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} exists"),
            });
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            open_files: HashMap::new(),
        })
    }

    /// Reads `name`, which must have shape `expected`.
    fn read(&mut self, name: &str, expected: &[i64]) -> Result<Tensor> {
        let file_name = match &self.index {
            None => WEIGHTS_FILE.to_string(),
            Some(map) => map
                .get(name)
                .cloned()
                .ok_or_else(|| ModelError::MissingTensor {
                    path: self.dir.join(WEIGHTS_INDEX_FILE),
                    name: name.to_string(),
                })?,
        };
        if file_name.contains('/') || file_name.contains("..") {
            return Err(ModelError::Checkpoint {
                path: self.dir.join(WEIGHTS_INDEX_FILE),
                message: format!("weight file `{file_name}` is outside the checkpoint directory"),
            });
        }
        let file = match self.open_files.entry(file_name) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let path = self.dir.join(e.key());
                e.insert(SafetensorsFile::open(&path)?)
            }
        };
        let entry = file.entry(name).ok_or_else(|| ModelError::MissingTensor {
            path: file.path().to_path_buf(),
            name: name.to_string(),
        })?;
        if entry.shape != expected {
            return Err(ModelError::ShapeMismatch {
                path: file.path().to_path_buf(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: entry.shape.clone(),
            });
        }
        file.read(name)
    }
}
