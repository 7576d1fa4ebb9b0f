//! `ledger`: see the crate docs; start-up is `neuroshard_runtime::service_main`.

fn main() -> std::process::ExitCode {
    neuroshard_runtime::service_main::<neuroshard_ledger::LedgerConfig, _, _, _>(
        "ledger",
        "NeuroShard ledger: NEURO accounts, Proof of Neural Work, stakes, slashing, the inference market",
        neuroshard_ledger::run,
    )
}
