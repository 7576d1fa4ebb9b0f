//! The `neuroshard` command. `Cli` is the clap definition; each command group lives in its own
//! module under `commands/` and only parses, calls `neuroshard-model`, and prints.

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
    /// Benchmarks that print JSON (see BENCHMARKS.md for the scripts that compare them).
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(cmd) => commands::model::run(cmd),
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Train(args) => commands::train::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
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
