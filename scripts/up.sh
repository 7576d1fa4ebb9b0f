#!/usr/bin/env bash
# make up: set-up, build, the default corpus as a genesis dataset, a trained NeuroLLM (trained
# once, reused after), then the whole swarm on this machine — PostgreSQL, layer-registry, four
# shard-workers and the gateway as processes — serving the OpenAI-compatible API and the
# dashboard until Ctrl-C. Delete runs/ to start over.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=env.sh
source scripts/env.sh

steps="${NEUROSHARD_TRAIN_STEPS:-600}"
run_dir="${NEUROSHARD_RUN_DIR:-runs/shakespeare}"
port="${NEUROSHARD_HTTP_PORT:-8080}"
bin=target/release/neuroshard

scripts/setup-postgres.sh
echo "==> building"
scripts/cargo.sh build --release --workspace --bins
texts="$(scripts/fetch-corpus.sh)"

if ! "$bin" data verify "$run_dir/data" >/dev/null 2>&1; then
  echo "==> building the genesis dataset from $texts"
  "$bin" data build --input "$texts" --out "$run_dir/data" --name "shakespeare-$SHAKESPEARE_VERSION"
fi
"$bin" data verify "$run_dir/data"

key_args=()
if [ -n "${NEUROSHARD_API_KEY:-}" ]; then
  key_args=(--api-key "$NEUROSHARD_API_KEY")
fi
exec "$bin" up --data "$run_dir/data" --checkpoint "$run_dir/checkpoint" \
  --train-steps "$steps" --http-port "$port" --state-dir "$run_dir/local" "${key_args[@]}"
