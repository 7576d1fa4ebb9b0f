//! Acceptance on the default corpus (slow: about two minutes on two cores). Training from
//! scratch brings held-out loss clearly below the corpus's unigram entropy, and the model then
//! writes real words.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

fn neuroshard(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_neuroshard"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "neuroshard {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic() && c != '\'')
        .filter(|w| w.len() > 1)
        .map(str::to_lowercase)
}

#[test]
fn shakespeare_training_beats_unigram_and_writes_words() {
    let corpus = PathBuf::from(std::env::var("NEUROSHARD_CORPUS").expect(
        "NEUROSHARD_CORPUS is not set: run through `make test`, which fetches the default corpus",
    ));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ckpt = dir.path().join("ckpt");
    let (d, c) = (data.to_str().unwrap(), ckpt.to_str().unwrap());
    neuroshard(&[
        "data",
        "build",
        "--input",
        corpus.to_str().unwrap(),
        "--out",
        d,
    ]);
    neuroshard(&[
        "train",
        "--data",
        d,
        "--out",
        c,
        "--steps",
        "300",
        "--eval-every",
        "100",
        "--device",
        "cpu",
    ]);

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("training.json")).unwrap())
            .unwrap();
    let held_out = report["final_validation_loss"].as_f64().unwrap();
    let unigram = report["unigram_entropy"].as_f64().unwrap();
    eprintln!("held-out loss {held_out:.4} nats, unigram entropy {unigram:.4} nats");
    assert!(
        held_out < unigram - 1.0,
        "held-out {held_out} is not clearly below unigram {unigram}"
    );

    let mut known = HashSet::new();
    for entry in std::fs::read_dir(&corpus).unwrap() {
        known.extend(words(
            &std::fs::read_to_string(entry.unwrap().path()).unwrap(),
        ));
    }
    let text = neuroshard(&[
        "generate",
        "--checkpoint",
        c,
        "--prompt",
        "KING. ",
        "--max-tokens",
        "80",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]);
    let generated: Vec<String> = words(text.trim_start_matches("KING. ")).collect();
    let real = generated.iter().filter(|w| known.contains(*w)).count();
    eprintln!(
        "{real}/{} generated words occur in the corpus:\n{text}",
        generated.len()
    );
    assert!(generated.len() >= 20, "{text:?}");
    assert!(
        real * 10 >= generated.len() * 7,
        "{real}/{} real words in {text:?}",
        generated.len()
    );
}
