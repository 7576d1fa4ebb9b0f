# Thin entry points; the logic lives in scripts/ and in Rust.
.PHONY: up test setup build bench images chart kube-play clean

## Set up what is missing, build, train NeuroLLM once, then run the local swarm (API + dashboard).
up:
	@scripts/up.sh

## Set up what is missing, build, and run fmt check, clippy -D warnings and every test.
test:
	@scripts/test.sh

## Install the cached PyTorch environment and fetch the default corpus.
setup:
	@scripts/setup-python.sh
	@scripts/fetch-corpus.sh >/dev/null

## Build the release binaries.
build:
	@scripts/cargo.sh build --release --workspace --bins

## Build every container image with podman, offline (localhost/neuroshard/<service>:<version>).
images:
	@scripts/images.sh

## Lint, render, strictly validate and drift-check the Helm chart (charts/neuroshard).
chart:
	@python3 scripts/chart-check.py

## Run the chart's control plane and two operator-made nodes under `podman kube play`.
kube-play:
	@scripts/kube-play.sh

## Run the benchmarks recorded in BENCHMARKS.md.
bench:
	@scripts/bench.sh

clean:
	@scripts/cargo.sh clean
