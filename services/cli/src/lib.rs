//! The `neuroshard` command. `Cli` is the clap definition; each command group lives in its own
//! module under `commands/` and only parses, calls `neuroshard-model`, and prints.

use std::path::PathBuf;

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
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(cmd) => commands::model::run(cmd),
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Train(args) => commands::train::run(args),
        Command::Generate(args) => commands::generate::run(args),
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

/// Where a checkpoint directory is given.
pub type CheckpointDir = PathBuf;
