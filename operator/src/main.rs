//! `neuroshard-operator`: see the crate docs; start-up is `neuroshard_runtime::service_main`.
//! `neuroshard-operator render NODE.yaml…` prints what manifests become, offline.

use clap::Parser;

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("render") {
        // Usage and errors name the subcommand.
        let rest = std::env::args().skip(2);
        let parsed = neuroshard_operator::render::RenderArgs::parse_from(
            std::iter::once("neuroshard-operator render".to_string()).chain(rest),
        );
        return match neuroshard_operator::render::main(parsed) {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("neuroshard-operator render: error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    neuroshard_runtime::service_main::<neuroshard_operator::OperatorConfig, _, _, _>(
        "neuroshard-operator",
        "NeuroShard operator: NeuroShardNode resources reconciled into shard-workers",
        neuroshard_operator::run,
    )
}
