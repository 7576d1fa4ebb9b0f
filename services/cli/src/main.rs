use clap::Parser;

fn main() -> anyhow::Result<()> {
    neuroshard_cli::run(neuroshard_cli::Cli::parse())
}
