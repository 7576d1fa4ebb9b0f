#!/usr/bin/env bash
# make test: formatting, lints as errors, then every test (release profile, so the one build
# also serves `make up` and the benchmarks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-postgres.sh
# The dashboard tests drive headless Chromium; its path is only of interest to people.
scripts/setup-chromium.sh >/dev/null
echo "==> cargo fmt --check"
scripts/cargo.sh fmt --all -- --check
echo "==> cargo clippy --all-targets -D warnings"
scripts/cargo.sh clippy --release --workspace --all-targets -- -D warnings
echo "==> cargo build --bins (the cross-service tests in tests/ run every service binary)"
scripts/cargo.sh build --release --workspace --bins
echo "==> cargo test"
scripts/cargo.sh test --release --workspace
