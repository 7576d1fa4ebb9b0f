//! `neuroshard data build | verify`.

use std::path::PathBuf;

use clap::Subcommand;
use neuroshard_model::data::{BuildOptions, Split, TokenShards, build_dataset};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Tokenise text into shards with a manifest (trains or reuses a tokenizer).
    Build {
        /// .txt files, directories of them, or .jsonl files with a `text` field.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "genesis")]
        name: String,
        /// Vocabulary size of a newly trained tokenizer.
        #[arg(long, default_value_t = 4096)]
        vocab: usize,
        /// Use this tokenizer.json instead of training one.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long = "shard-tokens", default_value_t = 262_144)]
        shard_tokens: usize,
        #[arg(long = "validation-fraction", default_value_t = 0.05)]
        validation_fraction: f64,
    },
    /// Check every shard's hash, length and token ids against the manifest.
    Verify { dir: PathBuf },
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Build {
            input,
            out,
            name,
            vocab,
            tokenizer,
            shard_tokens,
            validation_fraction,
        } => {
            let options = BuildOptions {
                name,
                vocab_size: vocab,
                tokenizer,
                shard_tokens,
                validation_fraction,
            };
            let manifest = build_dataset(&input, &out, &options)?;
            println!(
                "built {}: {} shards, {} training tokens, {} validation tokens, vocabulary {}",
                out.display(),
                manifest.shards.len(),
                manifest.tokens_of(Split::Train),
                manifest.tokens_of(Split::Validation),
                manifest.vocab_size
            );
            Ok(())
        }
        DataCommand::Verify { dir } => {
            let shards = TokenShards::open(&dir)?;
            shards.verify()?;
            println!(
                "ok: {} shards of `{}` match the manifest",
                shards.manifest.shards.len(),
                shards.manifest.name
            );
            Ok(())
        }
    }
}
