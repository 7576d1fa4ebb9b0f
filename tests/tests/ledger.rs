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
    // Minted − burned is what holders hold, and every cached balance is its entries' sum.
    let supply = support::ledger::audited_supply(&mut client).await;
    println!("{supply:?}");
    assert!(supply.minted > 0 && supply.burned > 0);
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
    let after = client
        .supply(SupplyRequest { audit: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after, supply,
        "sending acknowledged operations again changed the ledger"
    );
}

/// `neuroshard wallet` against the ledger process: a new key, a balance paid by work, a
/// transfer (5% burned), a stake that cannot be taken back early, the history, and mistakes
/// named before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallet_command_moves_and_stakes_neuro() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = LedgerHarness::start(dir.path());
    let key = dir.path().join("wallet.key");
    let url = ledger.url();
    let wallet = |args: &[&str]| {
        let out = std::process::Command::new(support::bin_dir().join("neuroshard"))
            .arg("wallet")
            .args(args)
            .args(["--key", key.to_str().unwrap()])
            .env("NEUROSHARD_LEDGER", &url)
            .env("NEUROSHARD_NETWORK", support::ledger::NET)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, address) = tokio::task::block_in_place(|| wallet(&["new"]));
    assert!(ok, "{address}");
    let address = address.lines().next().unwrap().to_string();
    let (ok, again) = tokio::task::block_in_place(|| wallet(&["new"]));
    assert!(!ok && again.contains("never overwritten"), "{again}");

    // 1,000 batches × 4 layers × 0.0005 = 2 NEURO, and the data the span from layer 0 fed
    // (2,000 samples of 256 tokens × 0.00001 = 0.02), paid to the wallet.
    let node = neuroshard_common::identity::NodeKey::generate();
    let proof = support::ledger::training_proof(
        support::ledger::NET,
        &ledger.aggregator,
        &node,
        1,
        512 * 1_000,
        &address,
        1,
    );
    ledger.client().submit(proof).await.unwrap();
    let (ok, balance) = tokio::task::block_in_place(|| wallet(&["balance"]));
    assert!(
        ok && balance.contains("balance     2.02 NEURO"),
        "{balance}"
    );

    let to = "b".repeat(40);
    let (ok, sent) =
        tokio::task::block_in_place(|| wallet(&["transfer", "--to", &to, "--amount", "1"]));
    assert!(ok, "{sent}");
    assert!(sent.contains(&format!("0.95  wallet/{to}")), "{sent}");
    assert!(sent.contains("0.05  burn"), "{sent}");
    let (ok, staked) = tokio::task::block_in_place(|| wallet(&["stake", "--amount", "0.5"]));
    assert!(ok, "{staked}");
    let (ok, early) = tokio::task::block_in_place(|| wallet(&["unstake", "--amount", "0.5"]));
    assert!(!ok && early.contains("locked until"), "{early}");
    let (ok, balance) = tokio::task::block_in_place(|| wallet(&["balance"]));
    assert!(
        ok && balance.contains("balance     0.52 NEURO")
            && balance.contains("staked      0.5 NEURO"),
        "{balance}"
    );
    let (ok, history) = tokio::task::block_in_place(|| wallet(&["history", "--limit", "2"]));
    assert!(ok, "{history}");
    assert!(
        history.contains("stake") && history.contains("transfer"),
        "{history}"
    );
    assert!(history.contains("next page: --before"), "{history}");

    for (args, says) in [
        (
            &["transfer", "--to", "nobody", "--amount", "1"][..],
            "not a wallet address",
        ),
        (
            &["transfer", "--to", &to, "--amount", "0"][..],
            "more than 0",
        ),
        (&["stake", "--amount", "1.0000000001"][..], "nine decimals"),
        (
            &["transfer", "--to", &to, "--amount", "5"][..],
            "insufficient balance",
        ),
    ] {
        let (ok, out) = tokio::task::block_in_place(|| wallet(args));
        assert!(!ok && out.contains(says), "{args:?}: {out}");
    }
}

/// Uptime end to end between processes: a registry that signs attestations, a node
/// heartbeating to it, the attestation of a final epoch paid by the ledger once (asked again,
/// the registry signs the same figures afresh and the ledger answers with the stored
/// outcome); and an escrow its gateway never settles, refunded by the ledger's own sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_uptime_is_paid_once_and_a_forgotten_escrow_is_refunded() {
    use neuroshard_common::identity::NodeKey;
    use neuroshard_common::signing::now_ms;
    use neuroshard_local::{LocalRegistry, RegistryToml};
    use neuroshard_neuro::sign_operation;
    use neuroshard_proto::ledger::v1::{Escrow, GetAccountRequest, UptimeProof, operation};
    use neuroshard_proto::registry::v1::{AttestRequest, HeartbeatRequest, UptimeAttestation};
    use neuroshard_runtime::tls::TlsFiles;
    use prost::Message;
    use support::ledger::NET;
    use support::registry::{envelope, register_request};

    const EPOCH_MS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let registry_key = dir.path().join("registry.key");
    let registry = LocalRegistry::start(
        &support::launcher(dir.path()),
        RegistryToml::new(NET)
            .tls(&TlsFiles::insecure_plaintext())
            .unwrap()
            .endpoint_probe_timeout_ms(0)
            .liveness(200, 600, 1_200)
            .attesting(&registry_key, EPOCH_MS)
            .unwrap(),
        Duration::from_secs(20),
    )
    .unwrap();
    let registry_id = NodeKey::load_or_create(&registry_key)
        .unwrap()
        .node_id()
        .to_string();
    let ledger = LedgerHarness::start_with(dir.path(), |config| {
        config
            .registries(&[&registry_id], EPOCH_MS)
            .escrow_ttl_ms(1_500)
    });
    let mut client = support::registry_client(&registry.registry.url).await;
    let node = NodeKey::generate();
    let request = register_request("http://127.0.0.1:1/uptime", 60_000_000, 1_000.0);
    client
        .register(envelope(&node, NET, "RegisterRequest", 1, &request))
        .await
        .unwrap();
    // The first whole epoch after registration; final 1.2 s (the dead threshold) after it.
    let epoch = (now_ms() as u64 / EPOCH_MS + 1) * EPOCH_MS;
    let final_at = epoch + EPOCH_MS + 1_300;
    let ask = |start: u64, node_id: &str| AttestRequest {
        node_id: node_id.to_string(),
        epoch_start_unix_ms: start,
    };
    let (mut nonce, mut asked_early) = (2, false);
    while (now_ms() as u64) < final_at {
        let beat = HeartbeatRequest {
            queue_depth: 0,
            ..Default::default()
        };
        client
            .heartbeat(envelope(&node, NET, "HeartbeatRequest", nonce, &beat))
            .await
            .unwrap();
        nonce += 1;
        if !asked_early && now_ms() as u64 > epoch + 100 {
            let early = client.attest(ask(epoch, node.node_id())).await.unwrap_err();
            assert_eq!(early.code(), tonic::Code::FailedPrecondition);
            assert!(early.message().contains("final at"), "{}", early.message());
            asked_early = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = client
        .attest(ask(epoch, node.node_id()))
        .await
        .unwrap()
        .into_inner();
    let attested = UptimeAttestation::decode(first.payload.as_slice()).unwrap();
    assert_eq!(attested.registry_id, registry_id);
    assert_eq!(attested.node_id, node.node_id());
    assert_eq!(attested.epoch_ms, EPOCH_MS);
    assert!(
        (1_600..=2_000).contains(&attested.uptime_ms) && attested.heartbeats >= 6,
        "a node heartbeating every 200 ms through the epoch: {attested:?}"
    );
    let stranger = NodeKey::generate();
    let unknown = client
        .attest(ask(epoch, stranger.node_id()))
        .await
        .unwrap_err();
    assert_eq!(
        unknown.code(),
        tonic::Code::NotFound,
        "{}",
        unknown.message()
    );

    let mut ledger_client = ledger.client();
    let proof = |attestation, nonce| {
        sign_operation(
            &node,
            NET,
            nonce,
            now_ms(),
            operation::Kind::UptimeProof(UptimeProof {
                attestation: Some(attestation),
                payout: String::new(),
            }),
        )
        .unwrap()
    };
    let balance = || {
        let mut c = ledger.client();
        let address = node.node_id().to_string();
        async move {
            c.get_account(GetAccountRequest { address })
                .await
                .unwrap()
                .into_inner()
                .balance
        }
    };
    let paid = ledger_client
        .submit(proof(first.clone(), 1))
        .await
        .unwrap()
        .into_inner();
    // 0.0001 NEURO a minute, pro rata.
    let earned = 100_000 * attested.uptime_ms as i64 / 60_000;
    assert_eq!(balance().await, earned);
    let second = client
        .attest(ask(epoch, node.node_id()))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.signature, first.signature);
    let again = ledger_client
        .submit(proof(second, 2))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed && again.transaction == paid.transaction);
    assert_eq!(balance().await, earned);

    // The gateway escrows 2 tokens of the node's wallet and never settles.
    let escrow = sign_operation(
        &ledger.gateway,
        NET,
        1,
        now_ms(),
        operation::Kind::Escrow(Escrow {
            request_id: "forgotten".into(),
            payer: node.node_id().into(),
            max_tokens: 2,
            utilisation_ppm: 0,
        }),
    )
    .unwrap();
    let escrowed = ledger_client.submit(escrow).await.unwrap().into_inner();
    assert!(escrowed.escrowed > 0);
    assert_eq!(balance().await, earned - escrowed.escrowed);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while balance().await != earned {
        assert!(
            std::time::Instant::now() < deadline,
            "the unsettled escrow was not refunded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    support::ledger::audited_supply(&mut ledger_client).await;
}

/// The local swarm's workers claim their own uptime: with 2 s epochs, each worker asks the
/// registry for the latest final epoch's attestation and sends it to the ledger, paying the
/// local wallet, without anyone doing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_workers_claim_their_attested_uptime() {
    use neuroshard_local::{LocalSwarm, SwarmOptions};
    use neuroshard_proto::ledger::v1::HistoryRequest;

    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _, _) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 23);
    let mut options = SwarmOptions::new(ckpt, dir.path().join("state"), support::bin_dir());
    options.http_port = 0;
    options.plaintext = true;
    options.ledger = true;
    options.uptime_epoch_ms = 2_000;
    options.api_key = "sk-uptime-test-key-0123456789".into();
    let swarm = tokio::task::block_in_place(|| {
        LocalSwarm::start(&options, Duration::from_secs(120), |s| println!("{s}")).unwrap()
    });
    let wallet = swarm.wallet_address.clone().unwrap();
    let mut ledger = neuroshard_proto::ledger::v1::ledger_client::LedgerClient::connect(
        swarm.ledger_url.clone().unwrap(),
    )
    .await
    .unwrap();
    // An epoch is final 2 s after it ends plus the dead threshold (4 s here); workers poll
    // every 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let uptime = loop {
        let history = ledger
            .history(HistoryRequest {
                address: wallet.clone(),
                before: 0,
                limit: 100,
            })
            .await
            .unwrap()
            .into_inner();
        let claims: Vec<_> = history
            .items
            .into_iter()
            .filter(|i| i.kind == "uptime_proof")
            .collect();
        if !claims.is_empty() {
            break claims;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no worker claimed its uptime"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // A live worker's epoch: up to 2 s at 0.0001 NEURO a minute ≈ 3,333 nano-NEURO.
    let credited: i64 = uptime[0].entries.iter().map(|e| e.amount).sum();
    assert!((1..=3_334).contains(&credited), "{uptime:?}");
    support::ledger::audited_supply(&mut ledger).await;
    drop(swarm);
}
