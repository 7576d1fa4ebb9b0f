use std::path::PathBuf;

use clap::Parser;
use neuroshard_layer_registry::RegistryConfig;

/// NeuroShard layer registry.
#[derive(Debug, Parser)]
#[command(name = "layer-registry", version)]
struct Args {
    /// TOML config file (see deploy/layer-registry.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = neuroshard_common::telemetry::init("layer-registry")?;
    let config: RegistryConfig = neuroshard_common::config::load(
        args.config.as_deref(),
        "NEUROSHARD_REGISTRY",
        std::env::vars(),
    )?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let result =
        neuroshard_layer_registry::run(config, listener, neuroshard_common::shutdown::signal())
            .await;
    telemetry.shutdown();
    result
}
