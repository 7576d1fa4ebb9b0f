#!/usr/bin/env bash
# make test: formatting, lints as errors, then every test (release profile, so the one build
# also serves `make up` and the benchmarks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-postgres.sh
echo "==> cargo fmt --check"
scripts/cargo.sh fmt --all -- --check
echo "==> cargo clippy --all-targets -D warnings"
scripts/cargo.sh clippy --release --workspace --all-targets -- -D warnings
echo "==> cargo test"
scripts/cargo.sh test --release --workspace
