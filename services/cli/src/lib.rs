//! The `neuroshard` command. `Cli` is the clap definition; each command group lives in its own
//! module under `commands/` and only parses, calls `neuroshard-model` (or, for `up`, the local
//! swarm of `neuroshard-local`), and prints.

use clap::{Parser, Subcommand};

mod commands;

/// NeuroShard: train and serve one language model across many machines.
#[derive(Debug, Parser)]
#[command(name = "neuroshard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, grow and run model checkpoints.
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
    /// Build and verify genesis datasets.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Train a model on one machine (the single-process baseline).
    Train(commands::train::TrainArgs),
    /// Generate text from a checkpoint, streaming tokens as they are sampled.
    Generate(commands::generate::GenerateArgs),
    /// Run the whole swarm locally: PostgreSQL, registry, shard workers and the gateway
    /// (training a checkpoint first when there is none). Ctrl-C stops everything.
    Up(commands::up::UpArgs),
    /// NEURO wallets: create a key, read balances and history, transfer, stake, unstake.
    #[command(subcommand)]
    Wallet(commands::wallet::WalletCommand),
    /// Benchmarks that print JSON (see BENCHMARKS.md for the scripts that compare them).
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let result = match cli.command {
        Command::Model(cmd) => commands::model::run(cmd),
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Train(args) => commands::train::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Up(args) => commands::up::run(args),
        Command::Wallet(cmd) => commands::wallet::run(cmd),
        Command::Bench(cmd) => commands::bench::run(cmd),
    };
    match result {
        // The reader went away (`neuroshard generate … | head`): a normal way to stop.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

impl Cli {
    /// The `train` command for `up`'s first run (its defaults, this data, these steps).
    fn try_parse_from_train(
        data: &std::path::Path,
        out: &std::path::Path,
        steps: u64,
    ) -> anyhow::Result<Self> {
        use clap::Parser as _;
        Ok(Self::try_parse_from([
            std::ffi::OsStr::new("neuroshard"),
            "train".as_ref(),
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
            "--steps".as_ref(),
            steps.to_string().as_ref(),
        ])?)
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Model shape flags shared by the commands that create a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelShapeArgs {
    #[arg(long, default_value_t = 4)]
    pub layers: i64,
    #[arg(long, default_value_t = 256)]
    pub hidden: i64,
    #[arg(long, default_value_t = 4)]
    pub heads: i64,
    #[arg(long = "kv-heads", default_value_t = 2)]
    pub kv_heads: i64,
    /// SwiGLU width (default: 8/3 · hidden rounded up to a multiple of 8).
    #[arg(long)]
    pub intermediate: Option<i64>,
}

impl ModelShapeArgs {
    /// The flags' defaults (the default model's shape).
    pub fn defaults() -> anyhow::Result<Self> {
        use clap::{Args as _, FromArgMatches as _};
        let command = Self::augment_args(clap::Command::new("shape"));
        Ok(Self::from_arg_matches(
            &command.try_get_matches_from(["shape"])?,
        )?)
    }

    /// The model these flags describe, with the given vocabulary and context length.
    pub fn config(&self, vocab_size: i64, max_seq_len: i64) -> neuroshard_model::ModelConfig {
        neuroshard_model::ModelConfig {
            vocab_size,
            hidden_size: self.hidden,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            intermediate_size: self
                .intermediate
                .unwrap_or_else(|| neuroshard_model::config::swiglu_intermediate(self.hidden, 8)),
            max_seq_len,
            ..neuroshard_model::ModelConfig::small(vocab_size)
        }
    }
}

/// Device and dtype flags shared by the commands that run the model.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16 or f16
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl RuntimeArgs {
    /// The whole model of `checkpoint` (whose config is `config`) on the chosen device and
    /// dtype, and that device.
    pub fn load_full_model(
        &self,
        checkpoint: &std::path::Path,
        config: &neuroshard_model::ModelConfig,
    ) -> anyhow::Result<(neuroshard_model::Shard, neuroshard_model::tch::Device)> {
        let device = neuroshard_model::device::parse_device(&self.device)?;
        let kind = neuroshard_model::device::parse_dtype(&self.dtype)?;
        let model = neuroshard_model::checkpoint::load_shard(
            checkpoint,
            neuroshard_model::ShardSpec::full(config.num_layers),
            device,
            kind,
        )?;
        Ok((model, device))
    }
}
