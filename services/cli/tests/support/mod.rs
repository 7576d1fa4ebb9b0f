//! Shared set-up of the CLI's end-to-end tests: a seeded model saved as a checkpoint with a
//! tokenizer (what the swarm's processes load), and where the workspace binaries are.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use neuroshard_common::ModelConfig;
use neuroshard_model::generate::{GenerateOptions, generate};
use neuroshard_model::tch::{Device, Kind};
use neuroshard_model::{Shard, ShardSpec, checkpoint, init};
use neuroshard_tests::workspace_binary;
use neuroshard_text::sampling::SamplingParams;
use neuroshard_text::tokenizer::TextTokenizer;

/// A small corpus of play-like words for a tokenizer with real merges.
pub fn corpus() -> Vec<String> {
    let words = [
        "the", "king", "queen", "crown", "sword", "night", "day", "speak", "love", "honour",
        "hath", "thou", "art", "noble", "lord", "lady", "fair", "death", "life", "time",
    ];
    (0..400)
        .map(|i| {
            (0..12)
                .map(|j| words[(i * 7 + j * 13 + i * j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The small model shape with `vocab` tokens, initialised from `seed`, saved with a tokenizer
/// in `dir/checkpoint`. Returns the directory, the in-process model and the tokenizer.
pub fn seeded_checkpoint(dir: &Path, vocab: i64, seed: u64) -> (PathBuf, Shard, TextTokenizer) {
    checkpoint_for(dir, &ModelConfig::small(vocab), seed, |_, _| {})
}

/// A model of `config`, initialised from `seed`, changed by `adjust` (which sees the
/// tokenizer), saved with a tokenizer of `config.vocab_size` tokens in `dir/checkpoint`.
pub fn checkpoint_for(
    dir: &Path,
    config: &ModelConfig,
    seed: u64,
    adjust: impl FnOnce(&mut Shard, &TextTokenizer),
) -> (PathBuf, Shard, TextTokenizer) {
    let tokenizer = TextTokenizer::train(corpus().into_iter(), config.vocab_size as usize).unwrap();
    let mut model = Shard::new(
        config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut model, seed).unwrap();
    adjust(&mut model, &tokenizer);
    let ckpt = dir.join("checkpoint");
    checkpoint::save(
        &ckpt,
        &model,
        Some(&tokenizer.to_json().unwrap()),
        i64::from(tokenizer.eos_id()),
    )
    .unwrap();
    (ckpt, model, tokenizer)
}

/// The directory holding `neuroshard`, `layer-registry`, `shard-worker` and `swarm-gateway`.
pub fn bin_dir() -> PathBuf {
    workspace_binary("swarm-gateway")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Sends signal `name` (`STOP`, `CONT`, …) to process `pid`, as `kill -NAME pid` would.
pub fn signal(pid: u32, name: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// The text `model` generates greedily for `prompt` in process, decoded as the gateway decodes
/// while it streams: bytes that never complete a character (an untrained model emits many)
/// are held back, not replaced.
pub fn greedy_text(
    model: &Shard,
    tokenizer: &TextTokenizer,
    prompt: &str,
    max_tokens: usize,
) -> String {
    let ids = tokenizer.encode(prompt).unwrap();
    let out = generate(
        model,
        &ids,
        &GenerateOptions {
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            stop_token: Some(tokenizer.eos_id()),
        },
        |_| Ok(()),
    )
    .unwrap();
    let mut stream = tokenizer.stream();
    out.iter().map(|&id| stream.push(id).unwrap()).collect()
}
