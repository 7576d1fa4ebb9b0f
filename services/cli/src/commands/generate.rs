//! `neuroshard generate`: streams sampled text to stdout as each token is produced.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use neuroshard_model::checkpoint::{self, TOKENIZER_FILE};
use neuroshard_model::generate::{GenerateOptions, generate};
use neuroshard_model::sampling::SamplingParams;
use neuroshard_model::tokenizer::TextTokenizer;

use crate::RuntimeArgs;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long = "max-tokens", default_value_t = 100)]
    pub max_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// 0 = no limit
    #[arg(long = "top-k", default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let tokenizer_path = args.checkpoint.join(TOKENIZER_FILE);
    let tokenizer = TextTokenizer::from_file(&tokenizer_path)
        .with_context(|| format!("generate needs {}", tokenizer_path.display()))?;
    let config = checkpoint::read_config(&args.checkpoint)?;
    let (model, _) = args.runtime.load_full_model(&args.checkpoint, &config)?;
    let prompt = tokenizer.encode(&args.prompt)?;
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_token: Some(tokenizer.eos_id()),
    };
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", args.prompt)?;
    stdout.flush()?;
    let mut stream = tokenizer.stream();
    // Feed the prompt so the first generated piece decodes with its left context.
    for &id in &prompt {
        stream.push(id)?;
    }
    generate(&model, &prompt, &options, |id| {
        let piece = stream.push(id)?;
        write!(stdout, "{piece}")
            .and_then(|_| stdout.flush())
            .map_err(|e| neuroshard_model::ModelError::io("stdout", e))
    })?;
    writeln!(stdout)?;
    Ok(())
}
