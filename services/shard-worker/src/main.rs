use std::path::PathBuf;

use clap::Parser;
use neuroshard_shard_worker::WorkerConfig;

/// NeuroShard shard worker.
#[derive(Debug, Parser)]
#[command(name = "shard-worker", version)]
struct Args {
    /// TOML config file (see deploy/shard-worker.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = neuroshard_common::telemetry::init("shard-worker")?;
    let config: WorkerConfig = neuroshard_common::config::load(
        args.config.as_deref(),
        "NEUROSHARD_WORKER",
        std::env::vars(),
    )?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let result =
        neuroshard_shard_worker::run(config, listener, neuroshard_common::shutdown::signal()).await;
    telemetry.shutdown();
    result
}
