//! The `neuroshard` binary end to end: checkpoints that `transformers` loads with the same
//! logits, shard splits, datasets, generation, and clear errors for bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn neuroshard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neuroshard"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = neuroshard(args);
    assert!(
        out.status.success(),
        "neuroshard {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = neuroshard(args);
    assert!(
        !out.status.success(),
        "neuroshard {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn logits(json: &str) -> Vec<Vec<f64>> {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    serde_json::from_value(value["logits"].clone()).unwrap()
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

fn init(dir: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join("model");
    let mut args = vec![
        "model",
        "init",
        "--out",
        out.to_str().unwrap(),
        "--layers",
        "4",
        "--hidden",
        "64",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--seed",
        "3",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    out
}

/// The Python of the cached PyTorch environment (set by scripts/cargo.sh).
fn python() -> String {
    std::env::var("NEUROSHARD_PYTHON").expect(
        "NEUROSHARD_PYTHON is not set: run the tests through `make test` (scripts/cargo.sh), \
         which provides the PyTorch + transformers environment this check needs",
    )
}

/// The logits `transformers` computes for `tokens` with the checkpoint in `dir`.
fn transformers_logits(dir: &Path, tokens: &str) -> Vec<Vec<f64>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/hf_logits.py");
    let out = Command::new(python())
        .args([script, dir.to_str().unwrap(), tokens])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "transformers failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    logits(&String::from_utf8(out.stdout).unwrap())
}

#[test]
fn transformers_loads_our_checkpoint_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path(), &["--vocab", "211"]);
    let tokens = "5,17,0,210,99,3,42,42,7";
    let ours = logits(&ok(&[
        "model",
        "logits",
        "--checkpoint",
        model.to_str().unwrap(),
        "--tokens",
        tokens,
        "--device",
        "cpu",
    ]));
    let theirs = transformers_logits(&model, tokens);
    assert_eq!(ours.len(), 9);
    assert_eq!(ours[0].len(), 211);
    let diff = max_abs_diff(&ours, &theirs);
    eprintln!("max abs logit diff vs transformers (f32): {diff:e}");
    assert!(diff <= 1e-4, "max abs diff vs transformers: {diff}");
    // Not vacuous: the logits differ across positions.
    assert!(max_abs_diff(&ours[..1], &ours[1..2]) > 1e-3);
}

#[test]
fn shard_split_gives_the_full_model_logits() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path(), &["--vocab", "128"]);
    let m = model.to_str().unwrap();
    let full = logits(&ok(&[
        "model",
        "logits",
        "--checkpoint",
        m,
        "--tokens",
        "1,2,3,4",
        "--device",
        "cpu",
    ]));
    for split in ["0-2,2-4", "0-1,1-3,3-4"] {
        let split_logits = logits(&ok(&[
            "model",
            "logits",
            "--checkpoint",
            m,
            "--tokens",
            "1,2,3,4",
            "--shards",
            split,
            "--device",
            "cpu",
        ]));
        assert!(max_abs_diff(&full, &split_logits) <= 1e-5, "{split}");
    }
    let err = fails(&[
        "model",
        "logits",
        "--checkpoint",
        m,
        "--tokens",
        "1,2",
        "--shards",
        "0-2,3-4",
    ]);
    assert!(err.contains("starts at 3, expected 2"), "{err}");
    let err = fails(&["model", "logits", "--checkpoint", m, "--tokens", "1,128"]);
    assert!(err.contains("[0, 128)"), "{err}");
    let err = fails(&["model", "logits", "--checkpoint", m, "--tokens", "1,x"]);
    assert!(err.contains("invalid value 'x'"), "{err}");
}

#[test]
fn grown_checkpoint_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path(), &["--vocab", "64"]);
    let grown = dir.path().join("grown");
    ok(&[
        "model",
        "grow",
        "--checkpoint",
        model.to_str().unwrap(),
        "--layers",
        "6",
        "--out",
        grown.to_str().unwrap(),
    ]);
    let info: serde_json::Value = serde_json::from_str(&ok(&[
        "model",
        "info",
        "--checkpoint",
        grown.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(info["config"]["num_layers"], 6);
    let a = logits(&ok(&[
        "model",
        "logits",
        "--checkpoint",
        model.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--device",
        "cpu",
    ]));
    let b = logits(&ok(&[
        "model",
        "logits",
        "--checkpoint",
        grown.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--device",
        "cpu",
    ]));
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn architecture_command_reports_the_seed_shape() {
    let out: serde_json::Value = serde_json::from_str(&ok(&[
        "model",
        "architecture",
        "--memory-gb",
        "40",
        "--nodes",
        "10",
    ]))
    .unwrap();
    assert_eq!(out["config"]["num_layers"], 16);
    assert_eq!(out["config"]["hidden_size"], 1024);
    let err = fails(&["model", "architecture", "--memory-gb", "40", "--nodes", "1"]);
    assert!(err.contains("2 replicas"), "{err}");
}

#[test]
fn data_build_verify_train_generate() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(
        corpus.join("a.txt"),
        "Now is the winter of our discontent. ".repeat(300),
    )
    .unwrap();
    std::fs::write(
        corpus.join("b.jsonl"),
        "{\"text\": \"Made glorious summer by this sun of York.\"}\n".repeat(100),
    )
    .unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let built = ok(&[
        "data",
        "build",
        "--input",
        corpus.to_str().unwrap(),
        "--out",
        d,
        "--vocab",
        "300",
        "--shard-tokens",
        "2000",
    ]);
    assert!(built.contains("training tokens"), "{built}");
    assert!(ok(&["data", "verify", d]).starts_with("ok:"));

    let ckpt = dir.path().join("ckpt");
    let c = ckpt.to_str().unwrap();
    let trained = ok(&[
        "train",
        "--data",
        d,
        "--out",
        c,
        "--steps",
        "30",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--layers",
        "2",
        "--hidden",
        "64",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--intermediate",
        "128",
        "--eval-every",
        "10",
        "--device",
        "cpu",
        "--lr",
        "3e-3",
    ]);
    assert!(trained.contains("held-out loss"), "{trained}");
    let greedy = || {
        ok(&[
            "generate",
            "--checkpoint",
            c,
            "--prompt",
            "Now is the",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "--device",
            "cpu",
        ])
    };
    let text = greedy();
    assert!(
        text.starts_with("Now is the") && text.len() > "Now is the".len() + 5,
        "{text:?}"
    );
    let again = greedy();
    assert_eq!(text, again, "greedy generation is deterministic");
    let seeded = |seed: &str| {
        ok(&[
            "generate",
            "--checkpoint",
            c,
            "--prompt",
            "Now",
            "--max-tokens",
            "12",
            "--temperature",
            "1.5",
            "--seed",
            seed,
            "--device",
            "cpu",
        ])
    };
    assert_eq!(seeded("1"), seeded("1"));
    let err = fails(&[
        "generate",
        "--checkpoint",
        c,
        "--prompt",
        "Now",
        "--top-p",
        "0",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("top_p"), "{err}");

    // A reader that stops early (`| head`) ends generation quietly, not with an error.
    let mut child = Command::new(env!("CARGO_BIN_EXE_neuroshard"))
        .args([
            "generate",
            "--checkpoint",
            c,
            "--prompt",
            "Now",
            "--max-tokens",
            "60",
            "--device",
            "cpu",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Tampering with a shard is caught by name.
    let shard = data.join("train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[3] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let err = fails(&["data", "verify", d]);
    assert!(
        err.contains("train-00000") && err.contains("does not match"),
        "{err}"
    );
}

#[test]
fn init_needs_a_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&[
        "model",
        "init",
        "--out",
        dir.path().join("m").to_str().unwrap(),
    ]);
    assert!(err.contains("--vocab"), "{err}");
    let err = fails(&[
        "model",
        "init",
        "--out",
        dir.path().join("m").to_str().unwrap(),
        "--vocab",
        "100",
        "--heads",
        "3",
    ]);
    assert!(err.contains("not divisible by num_heads 3"), "{err}");
}

/// `model export --from STATE_DIR` takes the aggregator's latest round; `transformers` loads
/// the export with the same logits; a directory that is neither is refused by name.
#[test]
fn model_export_writes_the_latest_round_as_a_checkpoint_transformers_loads() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("aggregator");
    for (round, seed) in [("00000001", "1"), ("00000002", "2"), ("00000010", "9")] {
        ok(&[
            "model",
            "init",
            "--out",
            state.join("rounds").join(round).to_str().unwrap(),
            "--layers",
            "2",
            "--hidden",
            "64",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--vocab",
            "97",
            "--seed",
            seed,
        ]);
    }
    let out = dir.path().join("export");
    ok(&[
        "model",
        "export",
        "--from",
        state.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let tokens = "5,17,0,96,3";
    let logits_of = |checkpoint: &Path| {
        logits(&ok(&[
            "model",
            "logits",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--tokens",
            tokens,
            "--device",
            "cpu",
        ]))
    };
    let latest = logits_of(&state.join("rounds").join("00000010"));
    let exported = logits_of(&out);
    assert_eq!(
        max_abs_diff(&latest, &exported),
        0.0,
        "round 10 is the latest, not round 2"
    );
    let theirs = transformers_logits(&out, tokens);
    assert!(max_abs_diff(&exported, &theirs) <= 1e-4);

    let err = fails(&[
        "model",
        "export",
        "--from",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("neither a checkpoint"), "{err}");
    let err = fails(&[
        "model",
        "export",
        "--from",
        "http://127.0.0.1:1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
