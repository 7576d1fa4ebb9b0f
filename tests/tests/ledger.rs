//! The ledger as a process on a real PostgreSQL, under load: 32 clients for 30 s mixing
//! training proofs, transfers, stakes and inference escrow/settle, while the ledger is killed
//! (-9) and restarted, and then PostgreSQL is. Afterwards: no holder is negative, supply =
//! minted − burned = what holders hold, every cached balance is the sum of its entries, and
//! every acknowledged operation is in the journal exactly once (sent again, it answers as the
//! same transaction, marked replayed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use neuroshard_proto::ledger::v1::{SubmitBatchRequest, SupplyRequest, batch_result};
use support::ledger::{LedgerHarness, merge, quantile, start_load};

const CLIENTS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_under_load_through_ledger_and_database_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = LedgerHarness::start(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(
        CLIENTS,
        &ledger.url(),
        &ledger.aggregator,
        &ledger.gateway,
        &stop,
    );

    tokio::time::sleep(Duration::from_secs(10)).await;
    ledger.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ledger.spawn(true);
    tokio::time::sleep(Duration::from_secs(10)).await;
    ledger.pg.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ledger.pg.start_again().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = merge(load).await;

    let applied = report
        .acknowledged
        .iter()
        .filter(|(_, o)| !o.replayed)
        .count();
    println!(
        "{} acknowledged ({applied} first answers), refused {:?}, {} retries across the crashes, escrow+settle p99 {:.1} ms",
        report.acknowledged.len(),
        report.refused,
        report.retries,
        1e3 * quantile(&mut report.escrow_settle, 0.99)
    );
    assert!(applied > 1_000, "only {applied} operations applied in 30 s");
    assert!(report.retries > 0, "the crashes were not noticed");
    assert!(
        !report.refused.contains_key("Internal"),
        "internal errors: {:?}",
        report.refused
    );

    let mut client = ledger.client();
    let supply = client.supply(SupplyRequest {}).await.unwrap().into_inner();
    println!("{supply:?}");
    assert!(supply.minted > 0 && supply.burned > 0);
    assert_eq!(
        supply.supply, supply.held,
        "minted − burned is not what holders hold"
    );
    assert_eq!(supply.mismatched_accounts, 0);
    assert!(supply.transactions as usize >= applied);

    // Every acknowledged operation, sent again, is the transaction it was acknowledged as.
    for chunk in report.acknowledged.chunks(500) {
        let results = client
            .submit_batch(SubmitBatchRequest {
                operations: chunk.iter().map(|(e, _)| e.clone()).collect(),
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        for ((_, acknowledged), result) in chunk.iter().zip(results) {
            match result.result.unwrap() {
                batch_result::Result::Outcome(again) => {
                    assert!(again.replayed, "{} applied again", acknowledged.key);
                    assert_eq!(
                        again.transaction, acknowledged.transaction,
                        "{}",
                        acknowledged.key
                    );
                    assert_eq!(again.entries, acknowledged.entries, "{}", acknowledged.key);
                }
                batch_result::Result::Refusal(r) => {
                    panic!(
                        "{} acknowledged, now refused: {}",
                        acknowledged.key, r.message
                    )
                }
            }
        }
    }
    let after = client.supply(SupplyRequest {}).await.unwrap().into_inner();
    assert_eq!(
        after, supply,
        "sending acknowledged operations again changed the ledger"
    );
}
