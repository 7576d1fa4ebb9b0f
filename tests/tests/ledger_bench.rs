//! Benchmark (ignored; `make bench`): the ledger process on PostgreSQL on this machine.
//!
//! - signature verifications per second on one core (in process: the baseline);
//! - verified-and-credited training proofs per second through `SubmitBatch` (each proof's two
//!   signatures checked and each journaled on its own), from pre-signed proofs of 1,000 nodes;
//! - p99 of escrow + settle under the mixed load of the ledger test (32 clients), no crashes.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-tests --test ledger_bench -- --ignored --nocapture

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::verify;
use neuroshard_neuro::OPERATION;
use neuroshard_proto::ledger::v1::{SubmitBatchRequest, batch_result};
use support::ledger::{LedgerHarness, NET, merge, quantile, start_load, training_proof};

const NODES: usize = 1_000;
const PROOFS: usize = 40_000;
const BATCH: usize = 500;
const SENDERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: make bench"]
async fn ledger_throughput_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = LedgerHarness::start(dir.path());

    // Proofs, signed before the clock starts (signing is the nodes' cost, not the ledger's).
    let nodes: Vec<NodeKey> = (0..NODES).map(|_| NodeKey::generate()).collect();
    let proofs: Vec<_> = (0..PROOFS)
        .map(|i| {
            let node = &nodes[i % NODES];
            let round = (i / NODES) as u64 + 1;
            training_proof(NET, &ledger.aggregator, node, round, 512 * 100, "", round)
        })
        .collect();

    // Signature verifications per second, one core.
    let started = Instant::now();
    let sample = &proofs[..4_000];
    for envelope in sample {
        verify(envelope, NET, OPERATION).unwrap();
    }
    let verifies_per_s = sample.len() as f64 / started.elapsed().as_secs_f64();

    // Proofs through SubmitBatch, SENDERS batches in flight.
    let started = Instant::now();
    let chunks: Vec<Vec<_>> = proofs.chunks(BATCH).map(<[_]>::to_vec).collect();
    let queue = Arc::new(std::sync::Mutex::new(chunks));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (queue, mut client) = (
            queue.clone(),
            ledger.client().max_decoding_message_size(64 << 20),
        );
        senders.push(tokio::spawn(async move {
            let mut credited = 0usize;
            loop {
                let Some(batch) = queue.lock().unwrap().pop() else {
                    return credited;
                };
                let results = client
                    .submit_batch(SubmitBatchRequest { operations: batch })
                    .await
                    .unwrap()
                    .into_inner()
                    .results;
                for r in results {
                    match r.result.unwrap() {
                        batch_result::Result::Outcome(o) => {
                            assert!(!o.entries.is_empty());
                            credited += 1;
                        }
                        batch_result::Result::Refusal(r) => panic!("refused: {}", r.message),
                    }
                }
            }
        }));
    }
    let mut credited = 0;
    for s in senders {
        credited += s.await.unwrap();
    }
    let proofs_per_s = credited as f64 / started.elapsed().as_secs_f64();
    assert_eq!(credited, PROOFS);

    // Escrow + settle latency under the mixed load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(
        32,
        &ledger.url(),
        &ledger.aggregator,
        &ledger.gateway,
        &stop,
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = merge(load).await;
    let ops = report.acknowledged.len();
    let p50 = quantile(&mut report.escrow_settle, 0.5);
    let p99 = quantile(&mut report.escrow_settle, 0.99);
    support::ledger::audited_supply(&mut ledger.client()).await;
    println!(
        "{{\"bench\":\"ledger\",\"signature_verifications_per_s_one_core\":{verifies_per_s:.0},\"proofs_per_s_batched\":{proofs_per_s:.0},\"proofs_per_s_vs_verifications\":{:.3},\"mixed_load_ops_per_s\":{:.0},\"escrow_settle_p50_ms\":{:.1},\"escrow_settle_p99_ms\":{:.1},\"escrow_settle_pairs\":{}}}",
        proofs_per_s / verifies_per_s,
        ops as f64 / 20.0,
        p50 * 1e3,
        p99 * 1e3,
        report.escrow_settle.len(),
    );
}
