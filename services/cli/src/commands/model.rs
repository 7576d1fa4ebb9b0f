//! `neuroshard model init | logits | info | grow | export | architecture`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use neuroshard_model::architecture::{ArchitecturePolicy, GB};
use neuroshard_model::checkpoint;
use neuroshard_model::device::{parse_device, parse_dtype};
use neuroshard_model::tch::{Kind, Tensor};
use neuroshard_model::tokenizer::TextTokenizer;
use neuroshard_model::{Shard, ShardInput, ShardSpec};
use serde_json::json;

use crate::{ModelShapeArgs, RuntimeArgs};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a randomly initialised checkpoint.
    Init(InitArgs),
    /// Print the logits of a token sequence as JSON, optionally through a split into shards.
    Logits(LogitsArgs),
    /// Print a checkpoint's shape and parameter count as JSON.
    Info {
        #[arg(long)]
        checkpoint: PathBuf,
    },
    /// Append identity-initialised layers to a checkpoint (outputs unchanged).
    Grow {
        #[arg(long)]
        checkpoint: PathBuf,
        /// New total number of layers.
        #[arg(long)]
        layers: i64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write a Hugging Face checkpoint of the current global model, from the aggregators
    /// or from a directory.
    Export(super::export::ExportArgs),
    /// Print the architecture a swarm of this capacity trains, as JSON.
    Architecture {
        /// Total usable memory in decimal gigabytes.
        #[arg(long)]
        memory_gb: f64,
        #[arg(long)]
        nodes: u64,
        #[arg(long, default_value_t = 32_000)]
        vocab: i64,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub shape: ModelShapeArgs,
    /// Vocabulary size; taken from --tokenizer when that is given.
    #[arg(long)]
    pub vocab: Option<i64>,
    /// tokenizer.json to ship with the checkpoint.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long = "max-seq-len", default_value_t = 256)]
    pub max_seq_len: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// f32, bf16 or f16
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Comma-separated token ids, e.g. 1,2,3
    #[arg(long, value_delimiter = ',', required = true)]
    pub tokens: Vec<i64>,
    /// Comma-separated layer spans covering the model in order, e.g. 0-2,2-4
    #[arg(long, value_delimiter = ',')]
    pub shards: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Init(args) => init(args),
        ModelCommand::Logits(args) => logits(args),
        ModelCommand::Export(args) => super::export::run(args),
        ModelCommand::Info { checkpoint: dir } => {
            let config = checkpoint::read_config(&dir)?;
            let parameters = neuroshard_model::architecture::parameter_count(&config);
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"config": config, "parameters": parameters}))?
            );
            Ok(())
        }
        ModelCommand::Grow {
            checkpoint: dir,
            layers,
            out,
            seed,
        } => {
            let config = checkpoint::read_config(&dir)?;
            let model = checkpoint::load_shard(
                &dir,
                ShardSpec::full(config.num_layers),
                neuroshard_model::tch::Device::Cpu,
                Kind::Float,
            )?;
            let grown = neuroshard_model::growth::grow_depth(&model, layers, seed)?;
            let tokenizer = read_optional_tokenizer(&dir.join(checkpoint::TOKENIZER_FILE))?;
            save(&out, &grown, tokenizer.as_ref())?;
            eprintln!(
                "grew {} -> {layers} layers into {}",
                config.num_layers,
                out.display()
            );
            Ok(())
        }
        ModelCommand::Architecture {
            memory_gb,
            nodes,
            vocab,
        } => {
            if !(memory_gb.is_finite() && memory_gb > 0.0) {
                bail!("--memory-gb must be a positive number");
            }
            let policy = ArchitecturePolicy {
                vocab_size: vocab,
                ..ArchitecturePolicy::default()
            };
            let arch = policy.architecture_for((memory_gb * GB as f64) as u64, nodes)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "config": arch.config,
                    "parameters": arch.parameters,
                    "replicated_training_bytes": arch.replicated_training_bytes,
                }))?
            );
            Ok(())
        }
    }
}

fn read_optional_tokenizer(path: &std::path::Path) -> anyhow::Result<Option<TextTokenizer>> {
    Ok(if path.exists() {
        Some(TextTokenizer::from_file(path)?)
    } else {
        None
    })
}

fn save(
    out: &std::path::Path,
    model: &Shard,
    tokenizer: Option<&TextTokenizer>,
) -> anyhow::Result<()> {
    let json = tokenizer.map(TextTokenizer::to_json).transpose()?;
    let eos = tokenizer.map_or(0, |t| i64::from(t.eos_id()));
    checkpoint::save(out, model, json.as_deref(), eos)?;
    Ok(())
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let tokenizer = args
        .tokenizer
        .as_deref()
        .map(TextTokenizer::from_file)
        .transpose()?;
    let vocab = match (&tokenizer, args.vocab) {
        (Some(t), None) => t.vocab_size() as i64,
        (Some(t), Some(v)) if v < t.vocab_size() as i64 => {
            bail!(
                "--vocab {v} is smaller than the tokenizer's {} entries",
                t.vocab_size()
            )
        }
        (_, Some(v)) => v,
        (None, None) => bail!("give --vocab N or --tokenizer tokenizer.json"),
    };
    let config = args.shape.config(vocab, args.max_seq_len);
    let kind = parse_dtype(&args.dtype)?;
    let mut model = Shard::new(
        &config,
        ShardSpec::full(config.num_layers),
        neuroshard_model::tch::Device::Cpu,
        kind,
    )?;
    neuroshard_model::init::initialize(&mut model, args.seed)?;
    save(&args.out, &model, tokenizer.as_ref())?;
    eprintln!(
        "wrote {} ({} parameters, {} layers × {} hidden)",
        args.out.display(),
        model.num_parameters(),
        config.num_layers,
        config.hidden_size
    );
    Ok(())
}

/// Parses "0-2,2-4" into spans that must cover [0, num_layers) in order.
fn parse_cover(spans: &[String], num_layers: i64) -> anyhow::Result<Vec<ShardSpec>> {
    let mut specs = Vec::new();
    let mut next = 0;
    for text in spans {
        let (a, b) = text
            .split_once('-')
            .with_context(|| format!("--shards: `{text}` is not START-END"))?;
        let start: i64 = a
            .trim()
            .parse()
            .with_context(|| format!("--shards: bad start in `{text}`"))?;
        let end: i64 = b
            .trim()
            .parse()
            .with_context(|| format!("--shards: bad end in `{text}`"))?;
        if start != next {
            bail!(
                "--shards: `{text}` starts at {start}, expected {next} (spans must cover the layers in order)"
            );
        }
        specs.push(ShardSpec::span(start, end, num_layers)?);
        next = end;
    }
    if next != num_layers {
        bail!("--shards: spans end at layer {next}, the model has {num_layers}");
    }
    Ok(specs)
}

fn logits(args: LogitsArgs) -> anyhow::Result<()> {
    let config = checkpoint::read_config(&args.checkpoint)?;
    let device = parse_device(&args.runtime.device)?;
    let kind = parse_dtype(&args.runtime.dtype)?;
    let specs = if args.shards.is_empty() {
        vec![ShardSpec::full(config.num_layers)]
    } else {
        parse_cover(&args.shards, config.num_layers)?
    };
    let shards = specs
        .into_iter()
        .map(|spec| checkpoint::load_shard(&args.checkpoint, spec, device, kind))
        .collect::<Result<Vec<_>, _>>()?;
    let _guard = neuroshard_model::tch::no_grad_guard();
    let tokens = Tensor::from_slice(&args.tokens).view([1, -1]);
    let mut x = shards[0].forward(ShardInput::Tokens(&tokens), None)?;
    for shard in &shards[1..] {
        x = shard.forward(ShardInput::Hidden(&x), None)?;
    }
    // [1, seq, vocab] -> rows of f32
    let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(
        &x.get(0)
            .to_kind(Kind::Float)
            .to_device(neuroshard_model::tch::Device::Cpu),
    )?;
    println!("{}", serde_json::to_string(&json!({ "logits": rows }))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_must_be_contiguous_and_complete() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_cover(&s(&["0-2", "2-4"]), 4).unwrap().len(), 2);
        assert!(
            parse_cover(&s(&["0-2", "3-4"]), 4)
                .unwrap_err()
                .to_string()
                .contains("expected 2")
        );
        assert!(
            parse_cover(&s(&["0-2"]), 4)
                .unwrap_err()
                .to_string()
                .contains("end at layer 2")
        );
        assert!(
            parse_cover(&s(&["0:2"]), 4)
                .unwrap_err()
                .to_string()
                .contains("START-END")
        );
    }
}
