#!/usr/bin/env bash
# make bench: every benchmark in BENCHMARKS.md, printed as JSON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=env.sh
source scripts/env.sh
scripts/cargo.sh build --release -p neuroshard-cli
echo "==> training step: NeuroShard vs PyTorch eager (same config, 2 threads)"
"$PY_ENV/bin/python" scripts/bench_train_step.py target/release/neuroshard --threads 2 --rounds 5
echo "==> training step, larger model: 8 layers x 512 hidden, sequence 256, batch 8"
"$PY_ENV/bin/python" scripts/bench_train_step.py target/release/neuroshard --threads 2 --rounds 5 \
  --layers 8 --hidden 512 --heads 8 --kv-heads 2 --intermediate 1376 --batch-size 8 --seq-len 256
