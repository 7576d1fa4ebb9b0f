//! `layer-registry`: see the crate docs; start-up is `neuroshard_runtime::service_main`.

fn main() -> std::process::ExitCode {
    neuroshard_runtime::service_main::<neuroshard_layer_registry::RegistryConfig, _, _, _>(
        "layer-registry",
        "NeuroShard layer registry: membership, liveness, placement and routes",
        neuroshard_layer_registry::run,
    )
}
