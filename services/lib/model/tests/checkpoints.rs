//! Checkpoint round trips, shard-only loading and clear errors for bad checkpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeMap;

use neuroshard_model::checkpoint::{self, CONFIG_FILE, WEIGHTS_FILE};
use neuroshard_model::init::initialize;
use neuroshard_model::safetensors_io;
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{ModelConfig, Shard, ShardInput, ShardSpec};

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 61,
        hidden_size: 32,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 1,
        intermediate_size: 40,
        rope_theta: 10_000.0,
        rms_eps: 1e-6,
        max_seq_len: 32,
    }
}

fn saved(kind: Kind) -> (tempfile::TempDir, Shard) {
    let mut model = Shard::new(&config(), ShardSpec::full(3), Device::Cpu, kind).unwrap();
    initialize(&mut model, 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(dir.path(), &model, None, 0).unwrap();
    (dir, model)
}

fn input() -> Tensor {
    Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9, 2, 6]).view([1, 8])
}

#[test]
fn round_trip_gives_identical_logits_in_f32_and_bf16() {
    for kind in [Kind::Float, Kind::BFloat16] {
        let (dir, model) = saved(kind);
        let loaded =
            checkpoint::load_shard(dir.path(), ShardSpec::full(3), Device::Cpu, kind).unwrap();
        let a = model.forward(ShardInput::Tokens(&input()), None).unwrap();
        let b = loaded.forward(ShardInput::Tokens(&input()), None).unwrap();
        assert!(a.equal(&b), "{kind:?}");
        assert_eq!(checkpoint::read_config(dir.path()).unwrap(), config());
    }
}

#[test]
fn a_shard_loads_only_its_tensors() {
    let (dir, model) = saved(Kind::Float);
    // Drop every tensor the middle shard does not need: it must still load.
    let mut file = safetensors_io::SafetensorsFile::open(&dir.path().join(WEIGHTS_FILE)).unwrap();
    let names: Vec<String> = file.names().map(str::to_string).collect();
    let kept: BTreeMap<String, Tensor> = names
        .iter()
        .filter(|n| n.starts_with("model.layers.1."))
        .map(|n| (n.clone(), file.read(n).unwrap()))
        .collect();
    safetensors_io::write(&dir.path().join(WEIGHTS_FILE), &kept).unwrap();
    let middle = checkpoint::load_shard(
        dir.path(),
        ShardSpec::span(1, 2, 3).unwrap(),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let w = "model.layers.1.mlp.up_proj.weight";
    assert!(middle.var_store().variables()[w].equal(&model.var_store().variables()[w]));
    // The full model cannot load from it, and says which tensor is missing.
    let err = checkpoint::load_shard(dir.path(), ShardSpec::full(3), Device::Cpu, Kind::Float)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("tensor `lm_head.weight` is missing"),
        "{err}"
    );
}

#[test]
fn a_checkpoint_saved_in_bf16_loads_into_f32() {
    let (dir, model) = saved(Kind::BFloat16);
    let loaded =
        checkpoint::load_shard(dir.path(), ShardSpec::full(3), Device::Cpu, Kind::Float).unwrap();
    let a = model
        .forward(ShardInput::Tokens(&input()), None)
        .unwrap()
        .to_kind(Kind::Float);
    let b = loaded.forward(ShardInput::Tokens(&input()), None).unwrap();
    assert!((a - b).abs().max().double_value(&[]) < 0.1);
}

#[test]
fn mis_shaped_tensor_is_named() {
    let (dir, _) = saved(Kind::Float);
    let path = dir.path().join(WEIGHTS_FILE);
    let mut file = safetensors_io::SafetensorsFile::open(&path).unwrap();
    let names: Vec<String> = file.names().map(str::to_string).collect();
    let mut all: BTreeMap<String, Tensor> = names
        .iter()
        .map(|n| (n.clone(), file.read(n).unwrap()))
        .collect();
    all.insert(
        "model.norm.weight".into(),
        Tensor::ones([31], (Kind::Float, Device::Cpu)),
    );
    safetensors_io::write(&path, &all).unwrap();
    let err = checkpoint::load_shard(dir.path(), ShardSpec::full(3), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`model.norm.weight` has shape [31], expected [32]"),
        "{err}"
    );
}

#[test]
fn corrupt_files_give_clear_errors() {
    let (dir, _) = saved(Kind::Float);
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    // Truncated data: byte ranges no longer fit.
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = checkpoint::load_shard(dir.path(), ShardSpec::full(3), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("byte range") && err.contains("model.safetensors"),
        "{err}"
    );
    // Garbage header length.
    std::fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
    let err = checkpoint::load_shard(dir.path(), ShardSpec::full(3), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("header length"), "{err}");
    // Unsupported dtype.
    let header = br#"{"model.norm.weight":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0u8; 8]);
    std::fs::write(&path, file).unwrap();
    let err = checkpoint::load_shard(dir.path(), ShardSpec::full(3), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dtype I64"), "{err}");
    // Missing weights, then a broken config.
    std::fs::remove_file(&path).unwrap();
    let err = checkpoint::load_shard(dir.path(), ShardSpec::full(3), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither model.safetensors"), "{err}");
    std::fs::write(dir.path().join(CONFIG_FILE), "{\"model_type\": \"llama\"}").unwrap();
    let err = checkpoint::read_config(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("is missing or not an integer"),
        "{err}"
    );
}

#[test]
fn only_a_full_model_saves_a_checkpoint() {
    let part = Shard::new(
        &config(),
        ShardSpec::span(0, 1, 3).unwrap(),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(
        checkpoint::save(dir.path(), &part, None, 0)
            .unwrap_err()
            .to_string()
            .contains("full model")
    );
}
