//! The paths other crates (the CLI's local swarm, its engine tests) import from the gateway:
//! moving a module must keep them valid, so this file names each one and fails to compile
//! when one goes away.

#[allow(unused_imports)]
use neuroshard_swarm_gateway::config::ApiKey;
#[allow(unused_imports)]
use neuroshard_swarm_gateway::engine::{EngineConfig, SwarmEngine};
#[allow(unused_imports)]
use neuroshard_swarm_gateway::generator::{FinishReason, GenerationJob, Generator, Step};
#[allow(unused_imports)]
use neuroshard_swarm_gateway::status::TrainingStatus;
#[allow(unused_imports)]
use neuroshard_swarm_gateway::{AppState, GatewayConfig, app, run, serve};

#[test]
fn the_public_paths_resolve() {
    let config = EngineConfig::new("http://127.0.0.1:1", "model");
    assert_eq!(config.model_name, "model");
}
