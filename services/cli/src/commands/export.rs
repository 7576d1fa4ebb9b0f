//! `neuroshard model export`: a Hugging Face checkpoint of the current global model, from the
//! diloco-aggregators over gRPC or from a directory on disk (an aggregator's `state_dir`, or
//! one round's checkpoint in it).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::tensor::{Limits, decode_f32};
use neuroshard_model::checkpoint;
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::tokenizer::TextTokenizer;
use neuroshard_model::{Shard, ShardSpec};
use neuroshard_worker_client::aggregator::Aggregators;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Aggregator URLs (comma-separated when several own parts of the model), an
    /// aggregator's state_dir (its latest round is exported), or one round's checkpoint.
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub out: PathBuf,
    /// tokenizer.json to put beside the weights (default: the source's, when it has one).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Client certificate and key for the aggregators' mutual TLS, and the CA to trust.
    #[command(flatten)]
    pub tls: super::TlsArgs,
}

/// The checkpoint directory `from` names: itself, or the latest round under `rounds/`.
fn checkpoint_dir(from: &Path) -> anyhow::Result<PathBuf> {
    if from.join("config.json").exists() {
        return Ok(from.to_path_buf());
    }
    let rounds = from.join("rounds");
    let latest = std::fs::read_dir(&rounds)
        .with_context(|| {
            format!(
                "{} is neither a checkpoint (no config.json) nor an aggregator's state_dir (no rounds/)",
                from.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").exists())
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok().map(|n| (n, e.path())))
        .max_by_key(|(n, _)| *n)
        .with_context(|| format!("{} holds no round checkpoint", rounds.display()))?;
    eprintln!("exporting round {} from {}", latest.0, latest.1.display());
    Ok(latest.1)
}

fn from_dir(dir: &Path) -> anyhow::Result<(Shard, Option<PathBuf>)> {
    let dir = checkpoint_dir(dir)?;
    let config = checkpoint::read_config(&dir)?;
    let shard = checkpoint::load_shard(
        &dir,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )?;
    let tokenizer = Some(dir.join("tokenizer.json")).filter(|p| p.exists());
    Ok((shard, tokenizer))
}

fn from_aggregators(args: &ExportArgs) -> anyhow::Result<Shard> {
    let endpoints: Vec<String> = args.from.split(',').map(|s| s.trim().to_string()).collect();
    let tls = args
        .tls
        .files(&endpoints.iter().map(String::as_str).collect::<Vec<_>>());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let aggregators = Aggregators::new(endpoints, tls, 1 << 30);
        let round = aggregators.round().await?;
        let arch = round
            .architecture
            .as_ref()
            .context("the aggregator did not say the model's architecture")?;
        let arch = ArchitectureState::from_proto(arch)?;
        let layers = u32::try_from(arch.config.num_layers)?;
        let limits = Limits {
            max_bytes: 1 << 34,
            ..Limits::default()
        };
        let tensors = aggregators
            .fetch(round.weights_round, (0, layers), limits)
            .await?;
        eprintln!(
            "exporting round {} ({} tensors)",
            round.weights_round,
            tensors.len()
        );
        let shard = Shard::new(
            &arch.config,
            ShardSpec::full(arch.config.num_layers),
            Device::Cpu,
            Kind::Float,
        )?;
        let _guard = neuroshard_model::tch::no_grad_guard();
        for (name, mut var) in shard.var_store().variables() {
            let wire = tensors.get(&name).with_context(|| {
                format!("the aggregators sent no {name}: do they own the whole model between them?")
            })?;
            let values = decode_f32(wire, &name, &limits)?;
            if values.len() as i64 != var.numel() as i64 {
                bail!(
                    "{name}: {} values, the model's tensor has {}",
                    values.len(),
                    var.numel()
                );
            }
            var.f_copy_(&Tensor::from_slice(&values).view(var.size().as_slice()))?;
        }
        Ok(shard)
    })
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let remote = args.from.starts_with("http://") || args.from.starts_with("https://");
    let (shard, source_tokenizer) = if remote {
        (from_aggregators(&args)?, None)
    } else {
        from_dir(Path::new(&args.from))?
    };
    let tokenizer = args
        .tokenizer
        .clone()
        .or(source_tokenizer)
        .map(|p| TextTokenizer::from_file(&p).with_context(|| format!("tokenizer {}", p.display())))
        .transpose()?;
    let json = tokenizer.as_ref().map(TextTokenizer::to_json).transpose()?;
    let eos = tokenizer.as_ref().map_or(0, |t| i64::from(t.eos_id()));
    checkpoint::save(&args.out, &shard, json.as_deref(), eos)?;
    println!("{}", args.out.display());
    Ok(())
}
