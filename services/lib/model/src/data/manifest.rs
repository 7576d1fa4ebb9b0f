//! `manifest.json`: the dataset's name, the tokenizer it was cut with, and its shards, each
//! pinned by SHA-256. Shards are little-endian u32 token ids. A shard is checked against its
//! hash before anything trains on it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const TOKEN_FORMAT: &str = "u32le";

/// Training or held-out data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
}

/// One pre-tokenised shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub id: String,
    pub split: Split,
    pub sha256: String,
    pub tokens: u64,
    /// File name relative to the manifest's directory.
    pub location: String,
}

/// The dataset description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub tokenizer_sha256: String,
    pub vocab_size: u32,
    pub eos_token_id: u32,
    pub token_format: String,
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let manifest: Self = serde_json::from_str(&text).map_err(|e| ModelError::json(&path, e))?;
        if manifest.token_format != TOKEN_FORMAT {
            return Err(ModelError::Data(format!(
                "{}: token_format `{}` is not `{TOKEN_FORMAT}`",
                path.display(),
                manifest.token_format
            )));
        }
        for shard in &manifest.shards {
            if shard.location.contains('/') || shard.location.contains("..") {
                return Err(ModelError::Data(format!(
                    "{}: shard `{}` location `{}` is outside the dataset directory",
                    path.display(),
                    shard.id,
                    shard.location
                )));
            }
        }
        Ok(manifest)
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::checkpoint::write_json(&dir.join(MANIFEST_FILE), self)
    }

    /// SHA-256 of the canonical JSON of this manifest: what seeds data selection.
    pub fn digest(&self) -> Result<[u8; 32]> {
        let bytes = serde_json::to_vec(self).map_err(|e| ModelError::json(MANIFEST_FILE, e))?;
        Ok(Sha256::digest(bytes).into())
    }

    pub fn shards_of(&self, split: Split) -> impl Iterator<Item = &ShardEntry> {
        self.shards.iter().filter(move |s| s.split == split)
    }

    pub fn tokens_of(&self, split: Split) -> u64 {
        self.shards_of(split).map(|s| s.tokens).sum()
    }
}

/// Loads and checks token shards of a dataset directory.
#[derive(Debug)]
pub struct TokenShards {
    dir: PathBuf,
    pub manifest: Manifest,
}

impl TokenShards {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: Manifest::read(dir)?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads one shard, refusing it unless its hash, length and token ids match the manifest.
    pub fn load(&self, entry: &ShardEntry) -> Result<Vec<u32>> {
        let path = self.dir.join(&entry.location);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != entry.sha256 {
            return Err(ModelError::Data(format!(
                "shard `{}` ({}): sha256 {actual} does not match the manifest's {}",
                entry.id,
                path.display(),
                entry.sha256
            )));
        }
        if bytes.len() as u64 != entry.tokens * 4 {
            return Err(ModelError::Data(format!(
                "shard `{}`: {} bytes, manifest says {} tokens",
                entry.id,
                bytes.len(),
                entry.tokens
            )));
        }
        let tokens: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(bad) = tokens.iter().find(|&&t| t >= self.manifest.vocab_size) {
            return Err(ModelError::Data(format!(
                "shard `{}`: token id {bad} is outside the vocabulary of {}",
                entry.id, self.manifest.vocab_size
            )));
        }
        Ok(tokens)
    }

    /// All tokens of a split, shards concatenated in manifest order.
    pub fn load_split(&self, split: Split) -> Result<Vec<u32>> {
        let mut all = Vec::with_capacity(self.manifest.tokens_of(split) as usize);
        for entry in self.manifest.shards_of(split) {
            all.extend(self.load(entry)?);
        }
        Ok(all)
    }

    /// Checks every shard, and the tokenizer next to the manifest when there is one.
    pub fn verify(&self) -> Result<()> {
        let tokenizer_path = self.dir.join(crate::checkpoint::TOKENIZER_FILE);
        if tokenizer_path.exists() {
            let tokenizer = crate::tokenizer::TextTokenizer::from_file(&tokenizer_path)?;
            let sha = tokenizer.sha256()?;
            if sha != self.manifest.tokenizer_sha256 {
                return Err(ModelError::Data(format!(
                    "tokenizer.json has sha256 {sha}, the manifest pins {}",
                    self.manifest.tokenizer_sha256
                )));
            }
        }
        if self.manifest.shards_of(Split::Train).next().is_none() {
            return Err(ModelError::Data(
                "the manifest lists no training shards".into(),
            ));
        }
        for entry in &self.manifest.shards {
            self.load(entry)?;
        }
        Ok(())
    }
}
