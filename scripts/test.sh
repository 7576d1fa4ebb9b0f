#!/usr/bin/env bash
# make test: formatting, lints as errors, then every test (release profile, so the one build
# also serves `make up` and the benchmarks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-postgres.sh
# The dashboard tests drive headless Chromium; its path is only of interest to people.
scripts/setup-chromium.sh >/dev/null
echo "==> chart: lint, render, strict validation, drift (scripts/chart-check.py)"
python3 scripts/chart-check.py
echo "==> kube play preprocessing (unit tests)"
python3 -m unittest discover -s scripts/kube_play -p 'test_*.py'
echo "==> cargo fmt --check"
scripts/cargo.sh fmt --all -- --check
echo "==> cargo clippy --all-targets -D warnings"
scripts/cargo.sh clippy --release --workspace --all-targets -- -D warnings
echo "==> cargo build --bins (the cross-service tests in tests/ run every service binary)"
scripts/cargo.sh build --release --workspace --bins
echo "==> cargo test"
scripts/cargo.sh test --release --workspace
# The images of the binaries just built (cached layers: only the binaries change), then the
# chart's control plane and two operator-made nodes run from them under `podman kube play`.
echo "==> make images (the binaries built above)"
NEUROSHARD_SKIP_BUILD=1 scripts/images.sh
echo "==> make kube-play"
scripts/kube-play.sh
