//! `neuroshard-operator`: see the crate docs; start-up is `neuroshard_runtime::service_main`.

fn main() -> std::process::ExitCode {
    neuroshard_runtime::service_main::<neuroshard_operator::OperatorConfig, _, _, _>(
        "neuroshard-operator",
        "NeuroShard operator: NeuroShardNode resources reconciled into shard-workers",
        neuroshard_operator::run,
    )
}
