//! `diloco-aggregator`: see the crate docs; start-up is `neuroshard_runtime::service_main`.

fn main() -> std::process::ExitCode {
    neuroshard_runtime::service_main::<neuroshard_diloco_aggregator::AggregatorConfig, _, _, _>(
        "diloco-aggregator",
        "NeuroShard DiLoCo aggregator: rounds, robust aggregation, the outer step, verified work",
        neuroshard_diloco_aggregator::run,
    )
}
