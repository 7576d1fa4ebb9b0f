//! `swarm-gateway`: see the crate docs; start-up is `neuroshard_runtime::service_main`.

fn main() -> std::process::ExitCode {
    neuroshard_runtime::service_main::<neuroshard_swarm_gateway::GatewayConfig, _, _, _>(
        "swarm-gateway",
        "NeuroShard swarm gateway: the OpenAI-compatible API and dashboard in front of the swarm",
        neuroshard_swarm_gateway::run,
    )
}
