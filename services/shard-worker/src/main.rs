//! `shard-worker`: see the crate docs; start-up is `neuroshard_runtime::service_main`.

fn main() -> std::process::ExitCode {
    neuroshard_runtime::service_main::<neuroshard_shard_worker::WorkerConfig, _, _, _>(
        "shard-worker",
        "NeuroShard shard worker: one node holding a span of NeuroLLM's layers",
        neuroshard_shard_worker::run,
    )
}
