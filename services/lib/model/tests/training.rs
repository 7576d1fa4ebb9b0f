//! Training end to end on a tiny dataset: loss falls, held-out loss beats the unigram
//! baseline, and the checkpoint written generates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use neuroshard_model::checkpoint;
use neuroshard_model::data::{BuildOptions, build_dataset};
use neuroshard_model::generate::{GenerateOptions, generate};
use neuroshard_model::sampling::SamplingParams;
use neuroshard_model::tch::{Device, Kind};
use neuroshard_model::training::{TrainEvent, TrainOptions, train};
use neuroshard_model::{ModelConfig, ShardSpec};

#[test]
fn training_learns_a_repetitive_corpus_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(400);
    std::fs::write(dir.path().join("corpus.txt"), text).unwrap();
    let data = dir.path().join("data");
    let options = BuildOptions {
        vocab_size: 300,
        shard_tokens: 1000,
        validation_fraction: 0.1,
        ..BuildOptions::default()
    };
    let manifest = build_dataset(&[dir.path().join("corpus.txt")], &data, &options).unwrap();
    let config = ModelConfig {
        hidden_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 128,
        max_seq_len: 64,
        ..ModelConfig::small(i64::from(manifest.vocab_size))
    };
    let train_options = TrainOptions {
        steps: 60,
        batch_size: 8,
        seq_len: 32,
        lr: 3e-3,
        warmup_steps: 5,
        eval_every: 30,
        eval_windows: 8,
        checkpoint_every: 30,
        ..TrainOptions::default()
    };
    let out = dir.path().join("ckpt");
    let mut losses = Vec::new();
    let report = train(
        &data,
        &out,
        &config,
        None,
        &train_options,
        Device::Cpu,
        |e| {
            if let TrainEvent::Step { loss, .. } = e {
                losses.push(*loss);
            }
        },
    )
    .unwrap();
    assert_eq!(losses.len(), 60);
    assert!(
        losses[59] < losses[0] * 0.5,
        "{} -> {}",
        losses[0],
        losses[59]
    );
    assert!(
        report.final_validation_loss < report.unigram_entropy * 0.5,
        "{report:?}"
    );
    assert!(out.join("training.json").exists());

    // The checkpoint reloads and greedy generation continues the pattern.
    let model = checkpoint::load_shard(&out, ShardSpec::full(2), Device::Cpu, Kind::Float).unwrap();
    let tokenizer =
        neuroshard_model::tokenizer::TextTokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    let prompt = tokenizer.encode("the quick brown fox").unwrap();
    let options = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop_token: None,
    };
    let mut streamed = Vec::new();
    let ids = generate(&model, &prompt, &options, |id| {
        streamed.push(id);
        Ok(())
    })
    .unwrap();
    assert_eq!(ids, streamed);
    let text = tokenizer.decode(&ids).unwrap();
    assert!(text.contains("jumps over"), "{text:?}");
}

#[test]
fn bad_training_options_are_refused() {
    let bad = TrainOptions {
        lr: f64::NAN,
        ..TrainOptions::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("lr"));
    let bad = TrainOptions {
        steps: 0,
        ..TrainOptions::default()
    };
    assert!(bad.validate().is_err());
}
