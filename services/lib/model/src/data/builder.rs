//! `build_dataset`: documents → tokenizer (trained, or reused) → token shards + manifest.
//! The held-out split is the last `validation_fraction` of every document, so validation
//! covers the whole corpus's style without sharing text with training.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::corpus::read_documents;
use super::manifest::{Manifest, ShardEntry, Split, TOKEN_FORMAT};
use crate::checkpoint::TOKENIZER_FILE;
use crate::error::{ModelError, Result};
use crate::tokenizer::TextTokenizer;

/// How to cut a dataset.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub name: String,
    /// Vocabulary size when a tokenizer is trained.
    pub vocab_size: usize,
    /// Use this `tokenizer.json` instead of training one.
    pub tokenizer: Option<PathBuf>,
    /// Tokens per shard file.
    pub shard_tokens: usize,
    /// Share of each document held out for validation, in [0, 0.5].
    pub validation_fraction: f64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            name: "genesis".into(),
            vocab_size: 4096,
            tokenizer: None,
            shard_tokens: 262_144,
            validation_fraction: 0.05,
        }
    }
}

/// Builds the dataset in `out` and returns its manifest. An existing `out/tokenizer.json` is
/// reused (so rebuilding keeps token ids stable) unless `options.tokenizer` names another.
pub fn build_dataset(inputs: &[PathBuf], out: &Path, options: &BuildOptions) -> Result<Manifest> {
    if !(0.0..=0.5).contains(&options.validation_fraction) {
        return Err(ModelError::Data(format!(
            "validation_fraction {} must lie in [0, 0.5]",
            options.validation_fraction
        )));
    }
    if options.shard_tokens == 0 {
        return Err(ModelError::Data("shard_tokens must be positive".into()));
    }
    let documents = read_documents(inputs)?;
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let existing = out.join(TOKENIZER_FILE);
    let tokenizer = match &options.tokenizer {
        Some(path) => TextTokenizer::from_file(path)?,
        None if existing.exists() => TextTokenizer::from_file(&existing)?,
        None => TextTokenizer::train(
            documents.iter().map(|d| d.text.as_str()),
            options.vocab_size,
        )?,
    };
    tokenizer.save(&existing)?;

    let eos = tokenizer.eos_id();
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for doc in &documents {
        let mut ids = tokenizer.encode(&doc.text)?;
        ids.push(eos);
        let held_out = (ids.len() as f64 * options.validation_fraction).round() as usize;
        let cut = ids.len() - held_out;
        validation.extend_from_slice(&ids[cut..]);
        ids.truncate(cut);
        train.extend(ids);
    }

    // Remove shards of an earlier build so the directory holds exactly what the manifest lists.
    for entry in std::fs::read_dir(out).map_err(|e| ModelError::io(out, e))? {
        let path = entry.map_err(|e| ModelError::io(out, e))?.path();
        if path.extension().is_some_and(|e| e == "bin") {
            std::fs::remove_file(&path).map_err(|e| ModelError::io(&path, e))?;
        }
    }
    let mut shards = write_shards(out, Split::Train, &train, options.shard_tokens)?;
    shards.extend(write_shards(
        out,
        Split::Validation,
        &validation,
        options.shard_tokens,
    )?);
    let manifest = Manifest {
        name: options.name.clone(),
        tokenizer_sha256: tokenizer.sha256()?,
        vocab_size: tokenizer.vocab_size() as u32,
        eos_token_id: eos,
        token_format: TOKEN_FORMAT.into(),
        shards,
    };
    manifest.write(out)?;
    Ok(manifest)
}

fn write_shards(
    out: &Path,
    split: Split,
    tokens: &[u32],
    per_shard: usize,
) -> Result<Vec<ShardEntry>> {
    let prefix = match split {
        Split::Train => "train",
        Split::Validation => "validation",
    };
    let mut entries = Vec::new();
    for (index, chunk) in tokens.chunks(per_shard).enumerate() {
        let id = format!("{prefix}-{index:05}");
        let location = format!("{id}.bin");
        let bytes: Vec<u8> = chunk.iter().flat_map(|t| t.to_le_bytes()).collect();
        crate::safetensors_io::write_atomic(&out.join(&location), &bytes)?;
        entries.push(ShardEntry {
            id,
            split,
            sha256: hex::encode(Sha256::digest(&bytes)),
            tokens: chunk.len() as u64,
            location,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::manifest::TokenShards;

    fn build(dir: &Path) -> Manifest {
        let input = dir.join("in.txt");
        let text = "Friends, Romans, countrymen, lend me your ears; ".repeat(200);
        std::fs::write(&input, text).unwrap();
        let options = BuildOptions {
            vocab_size: 300,
            shard_tokens: 500,
            ..BuildOptions::default()
        };
        build_dataset(&[input], &dir.join("data"), &options).unwrap()
    }

    #[test]
    fn builds_verifies_and_rebuilds_identically() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = build(dir.path());
        assert!(manifest.shards_of(Split::Train).count() >= 2);
        assert!(manifest.tokens_of(Split::Validation) > 0);
        let shards = TokenShards::open(&dir.path().join("data")).unwrap();
        shards.verify().unwrap();
        assert_eq!(
            build(dir.path()),
            manifest,
            "a rebuild reuses the tokenizer and cuts the same shards"
        );
    }

    #[test]
    fn verify_catches_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = build(dir.path());
        let data = dir.path().join("data");
        let shard = data.join(&manifest.shards[0].location);
        let mut bytes = std::fs::read(&shard).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&shard, bytes).unwrap();
        let err = TokenShards::open(&data)
            .unwrap()
            .verify()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train-00000") && err.contains("does not match"),
            "{err}"
        );
    }

    #[test]
    fn manifest_rejects_unknown_fields_and_escaping_locations() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let path = dir.path().join("data/manifest.json");
        let original = std::fs::read_to_string(&path).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(&original).unwrap();
        value["surprise"] = serde_json::json!(1);
        std::fs::write(&path, value.to_string()).unwrap();
        let err = Manifest::read(&dir.path().join("data"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("surprise"), "{err}");
        let mut value: serde_json::Value = serde_json::from_str(&original).unwrap();
        value["shards"][0]["location"] = serde_json::json!("../../etc/passwd");
        std::fs::write(&path, value.to_string()).unwrap();
        let err = Manifest::read(&dir.path().join("data"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the dataset directory"), "{err}");
    }
}
