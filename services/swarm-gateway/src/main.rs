use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use neuroshard_swarm_gateway::GatewayConfig;
use neuroshard_swarm_gateway::engine::{EngineConfig, SwarmEngine};
use neuroshard_swarm_gateway::status::TrainingStatus;
use neuroshard_text::tokenizer::TextTokenizer;

/// NeuroShard swarm gateway: the OpenAI-compatible API and dashboard in front of the swarm.
#[derive(Debug, Parser)]
#[command(name = "swarm-gateway", version)]
struct Args {
    /// TOML config file (see deploy/swarm-gateway.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = neuroshard_common::telemetry::init("swarm-gateway")?;
    let config = GatewayConfig::load(args.config.as_deref(), std::env::vars())?;
    let eos = TextTokenizer::from_file(&config.tokenizer)?.eos_id();
    let engine = SwarmEngine::connect(EngineConfig::from_gateway(&config, Some(eos))).await?;
    if let Some(path) = &config.training_report {
        // The loss curves of the run that made these weights; the API works without them.
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|json| TrainingStatus::from_report(&json).map_err(|e| e.message))
        {
            Ok(training) => engine.set_training(Some(training)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "training report not shown")
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let result = neuroshard_swarm_gateway::serve(
        config,
        listener,
        Arc::new(engine),
        neuroshard_common::shutdown::signal(),
    )
    .await;
    telemetry.shutdown();
    Ok(result?)
}
