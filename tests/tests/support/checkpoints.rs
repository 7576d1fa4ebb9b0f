//! Seeded models saved as checkpoints (what the swarm's processes load), and what they
//! generate in process, to compare the swarm's output with.

use std::path::{Path, PathBuf};

use neuroshard_common::ModelConfig;
use neuroshard_model::generate::{GenerateOptions, generate};
use neuroshard_model::tch::{Device, Kind};
use neuroshard_model::{Shard, ShardSpec, checkpoint, init};
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

/// A genesis dataset of [`corpus`] in `dir/data` (tokenizer of `vocab` ids, shards of 1,000
/// tokens), as `neuroshard data build` makes one.
pub fn corpus_dataset(dir: &Path, vocab: usize) -> PathBuf {
    let text = dir.join("corpus.txt");
    std::fs::write(&text, corpus().join("\n")).unwrap();
    let out = dir.join("data");
    neuroshard_model::data::build_dataset(
        &[text],
        &out,
        &neuroshard_model::data::BuildOptions {
            name: "test-corpus".into(),
            vocab_size: vocab,
            shard_tokens: 1_000,
            ..neuroshard_model::data::BuildOptions::default()
        },
    )
    .unwrap();
    out
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
    let mut model = seeded_model(config, seed);
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

/// The whole model of `config`, initialised from `seed` (as every node initialises its span).
pub fn seeded_model(config: &ModelConfig, seed: u64) -> Shard {
    let mut model = Shard::new(
        config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut model, seed).unwrap();
    model
}

/// The small model (4 × 256, vocabulary 4096) initialised from `seed`, saved without a
/// tokenizer (workers need none) in `dir/ckpt`; returns the model and the checkpoint.
pub fn small_checkpoint(dir: &Path, seed: u64) -> (Shard, PathBuf) {
    let model = seeded_model(&ModelConfig::small(4096), seed);
    let ckpt = dir.join("ckpt");
    checkpoint::save(&ckpt, &model, None, 0).unwrap();
    (model, ckpt)
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
