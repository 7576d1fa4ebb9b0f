//! The ledger's store on a real PostgreSQL: the whole flow with its figures, every attack of
//! the issue refused with the journal unchanged (compared by fingerprint before and after),
//! and the database itself refusing to edit the journal, unbalance a transaction or take a
//! holder below zero.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use neuroshard_common::ErrorKind;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{now_ms, sign};
use neuroshard_ledger::economics::Economics;
use neuroshard_ledger::store::Store;
use neuroshard_ledger::verify::{OPERATION, Verifier};
use neuroshard_local::PgServer;
use neuroshard_neuro::sign_operation;
use neuroshard_proto::aggregator::v1::{Evidence, Receipt};
use neuroshard_proto::common::v1::{LayerSpan, SignedEnvelope};
use neuroshard_proto::ledger::v1::{
    Escrow, Operation, Outcome, Settle, Slash, Stake, TrainingProof, Transfer, Unstake,
    UptimeProof, operation,
};
use neuroshard_proto::registry::v1::UptimeAttestation;
use prost::Message;

const NET: &str = "neuroshard-test";

struct Fixture {
    _pg: PgServer,
    store: Store,
    verifier: Verifier,
    aggregator: NodeKey,
    gateway: NodeKey,
    registry: NodeKey,
    nonce: std::sync::atomic::AtomicU64,
}

impl Fixture {
    async fn new(economics: Economics) -> Self {
        let pg = PgServer::start().unwrap();
        let url = pg.create_database("ledger").unwrap();
        let uptime_epoch_ms = economics.uptime_epoch_ms;
        let store = Store::connect(&url, &Default::default(), economics)
            .await
            .unwrap();
        let (aggregator, gateway, registry) = (
            NodeKey::generate(),
            NodeKey::generate(),
            NodeKey::generate(),
        );
        let verifier = Verifier {
            network_id: NET.into(),
            aggregators: [aggregator.node_id().to_string()].into(),
            gateways: [gateway.node_id().to_string()].into(),
            registries: [registry.node_id().to_string()].into(),
            uptime_epoch_ms,
            window_ms: 60_000,
            receipt_max_age_ms: 86_400_000,
        };
        Self {
            _pg: pg,
            store,
            verifier,
            aggregator,
            gateway,
            registry,
            nonce: 1.into(),
        }
    }

    fn nonce(&self) -> u64 {
        self.nonce.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    fn signed(&self, key: &NodeKey, kind: operation::Kind) -> SignedEnvelope {
        sign_operation(key, NET, self.nonce(), now_ms(), kind).unwrap()
    }

    async fn submit(&self, envelope: &SignedEnvelope) -> Result<Outcome, neuroshard_common::Error> {
        let now = now_ms();
        let request = self.verifier.check(envelope, now)?;
        self.store.submit(&request, now).await
    }

    fn receipt(&self, node: &NodeKey, round: u64, span: (u32, u32), tokens: u64) -> SignedEnvelope {
        self.receipt_by(&self.aggregator, node.node_id(), round, span, tokens)
    }

    fn receipt_by(
        &self,
        aggregator: &NodeKey,
        node_id: &str,
        round: u64,
        span: (u32, u32),
        tokens: u64,
    ) -> SignedEnvelope {
        let receipt = Receipt {
            aggregator_id: aggregator.node_id().into(),
            node_id: node_id.into(),
            round,
            span: Some(LayerSpan {
                start: span.0,
                end: span.1,
            }),
            tokens,
            score: 0.1,
            commitment: vec![7; 32],
            num_layers: 4,
            // Plausible for any token count a proof may claim (100k tokens/s for a minute, ×32).
            capacity_tokens_per_second: 100_000.0,
            elapsed_ms: 60_000,
        };
        sign(
            aggregator,
            NET,
            "Receipt",
            1,
            now_ms(),
            receipt.encode_to_vec(),
        )
        .unwrap()
    }

    fn proof(&self, node: &NodeKey, receipt: SignedEnvelope, payout: &str) -> SignedEnvelope {
        self.signed(
            node,
            operation::Kind::TrainingProof(TrainingProof {
                receipt: Some(receipt),
                payout: payout.into(),
            }),
        )
    }

    /// An uptime proof by `node` of `signer`'s attestation for `node_id`'s epoch.
    fn uptime(
        &self,
        node: &NodeKey,
        signer: &NodeKey,
        attestation: UptimeAttestation,
    ) -> SignedEnvelope {
        let attestation = sign(
            signer,
            NET,
            "UptimeAttestation",
            1,
            now_ms(),
            attestation.encode_to_vec(),
        )
        .unwrap();
        self.signed(
            node,
            operation::Kind::UptimeProof(UptimeProof {
                attestation: Some(attestation),
                payout: String::new(),
            }),
        )
    }

    async fn balance(&self, address: &str) -> i64 {
        self.store.account(address).await.unwrap().balance
    }

    /// `envelope` is refused with `kind` (its message containing `says`) and nothing changes.
    async fn refused(&self, what: &str, envelope: &SignedEnvelope, kind: ErrorKind, says: &str) {
        let before = self.store.fingerprint().await.unwrap();
        let err = self.submit(envelope).await.expect_err(what);
        assert_eq!(err.kind, kind, "{what}: {}", err.message);
        assert!(
            err.message.contains(says),
            "{what}: {:?} does not say {says:?}",
            err.message
        );
        assert_eq!(
            self.store.fingerprint().await.unwrap(),
            before,
            "{what} changed the ledger"
        );
    }
}

fn neuro(n: i64) -> i64 {
    n * 1_000_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_pays_transfers_burn_stakes_lock_inference_settles_and_fraud_is_slashed() {
    // Training alone (the data reward of the span from layer 0 is checked in `ops`).
    let f = Fixture::new(Economics {
        data_reward_per_sample: 0,
        ..Economics::default()
    })
    .await;
    let (node, user, other) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    // 10,000 batches of 512 tokens on layers [0, 4) of 4 (Full, 1.0): 10,000 × 4 × 0.0005 = 20.
    let receipt = f.receipt(&node, 1, (0, 4), 512 * 10_000);
    let paid = f
        .submit(&f.proof(&node, receipt.clone(), user.node_id()))
        .await
        .unwrap();
    assert_eq!(f.balance(user.node_id()).await, neuro(20));
    // The same proof again (a retry): the stored outcome, nothing paid twice.
    let again = f
        .submit(&f.proof(&node, receipt, user.node_id()))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.transaction, paid.transaction);
    assert_eq!(f.balance(user.node_id()).await, neuro(20));

    // A transfer of 10 burns 0.5.
    f.submit(&f.signed(
        &user,
        operation::Kind::Transfer(Transfer {
            to: other.node_id().into(),
            amount: neuro(10),
        }),
    ))
    .await
    .unwrap();
    assert_eq!(f.balance(other.node_id()).await, neuro(95) / 10);
    assert_eq!(f.balance(user.node_id()).await, neuro(10));

    // The node stakes what it earns in round 2; unstaking now is refused with the unlock time.
    f.submit(&f.proof(&node, f.receipt(&node, 2, (0, 4), 512 * 5_000), ""))
        .await
        .unwrap();
    f.submit(&f.signed(&node, operation::Kind::Stake(Stake { amount: neuro(10) })))
        .await
        .unwrap();
    let staked = f.store.account(node.node_id()).await.unwrap();
    assert_eq!((staked.balance, staked.staked), (0, neuro(10)));
    assert!(staked.stake_unlock_unix_ms > now_ms() + 29 * 86_400_000);
    f.refused(
        "unstake before unlock",
        &f.signed(
            &node,
            operation::Kind::Unstake(Unstake { amount: neuro(1) }),
        ),
        ErrorKind::FailedPrecondition,
        "locked until",
    )
    .await;

    // Inference: escrow 1000 tokens at 1000 nano, use 400.
    let escrow = f
        .submit(&f.signed(
            &f.gateway,
            operation::Kind::Escrow(Escrow {
                request_id: "chatcmpl-1".into(),
                payer: user.node_id().into(),
                max_tokens: 1_000,
                utilisation_ppm: 0,
            }),
        ))
        .await
        .unwrap();
    assert_eq!(
        (escrow.price_per_token, escrow.escrowed),
        (1_000, 1_000_000)
    );
    let (driver, worker, validator) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    f.submit(&f.signed(
        &f.gateway,
        operation::Kind::Settle(Settle {
            request_id: "chatcmpl-1".into(),
            tokens: 400,
            driver: driver.node_id().into(),
            processors: vec![worker.node_id().into()],
            validator: validator.node_id().into(),
        }),
    ))
    .await
    .unwrap();
    // 400,000 charged: 20,000 burned; 380,000 split 57,000 / 266,000 / 57,000.
    assert_eq!(f.balance(user.node_id()).await, neuro(10) - 400_000);
    assert_eq!(f.balance(driver.node_id()).await, 57_000);
    assert_eq!(f.balance(worker.node_id()).await, 266_000);
    assert_eq!(f.balance(validator.node_id()).await, 57_000);

    // Fraud evidence against the node: half its stake taken, half of that to the reporter.
    let evidence = Evidence {
        aggregator_id: f.aggregator.node_id().into(),
        node_id: node.node_id().into(),
        round: 3,
        span: Some(LayerSpan { start: 0, end: 4 }),
        kind: "commitment".into(),
        reason: "the tensors do not hash to the signed commitment".into(),
        commitment: vec![1; 32],
    };
    let evidence = sign(
        &f.aggregator,
        NET,
        "Evidence",
        2,
        now_ms(),
        evidence.encode_to_vec(),
    )
    .unwrap();
    f.submit(&f.signed(
        &other,
        operation::Kind::Slash(Slash {
            evidence: Some(evidence.clone()),
        }),
    ))
    .await
    .unwrap();
    assert_eq!(
        f.store.account(node.node_id()).await.unwrap().staked,
        neuro(5)
    );
    assert_eq!(
        f.balance(other.node_id()).await,
        neuro(95) / 10 + neuro(5) / 2
    );
    // The same evidence from another reporter does not slash twice.
    f.refused(
        "the same evidence again",
        &f.signed(
            &user,
            operation::Kind::Slash(Slash {
                evidence: Some(evidence),
            }),
        ),
        ErrorKind::AlreadyExists,
        "already applied",
    )
    .await;

    let supply = f.store.supply(true).await.unwrap();
    assert!(supply.audited);
    assert_eq!(supply.minted, neuro(30));
    // Burned: 0.5 transfer, 20,000 nano inference, 2.5 slash.
    assert_eq!(supply.burned, neuro(3) + 20_000);
    assert_eq!(supply.supply, supply.held);
    assert_eq!(supply.mismatched_accounts, 0);
    let history = f.store.history(user.node_id(), 0, 2).await.unwrap();
    assert_eq!(history.items.len(), 2);
    assert_ne!(history.next_before, 0);
    let rest = f
        .store
        .history(user.node_id(), history.next_before, 10)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2, "{rest:?}");
    assert_eq!(rest.next_before, 0);
}

/// An envelope like `sign` makes, with its signature's S replaced by n − S (the high-S twin
/// that verifies under plain ECDSA).
fn high_s_twin(envelope: &SignedEnvelope) -> SignedEnvelope {
    let signature = k256::ecdsa::Signature::from_slice(&envelope.signature).unwrap();
    let (r, s) = signature.split_scalars();
    let twin = k256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
    assert!(twin.normalize_s().is_some(), "the twin is high-S");
    SignedEnvelope {
        signature: twin.to_bytes().to_vec(),
        ..envelope.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_refused_and_changes_nothing() {
    let f = Fixture::new(Economics::default()).await;
    let (node, user, thief) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    f.submit(&f.proof(
        &node,
        f.receipt(&node, 1, (0, 4), 512 * 10_000),
        user.node_id(),
    ))
    .await
    .unwrap();
    let transfer = |nonce: u64, ts: i64, amount: i64, to: &str| {
        sign_operation(
            &user,
            NET,
            nonce,
            ts,
            operation::Kind::Transfer(Transfer {
                to: to.into(),
                amount,
            }),
        )
        .unwrap()
    };
    let to = thief.node_id().to_string();

    let mut forged = transfer(100, now_ms(), neuro(1), &to);
    forged.signature[10] ^= 1;
    f.refused(
        "forged signature",
        &forged,
        ErrorKind::Unauthenticated,
        "signature",
    )
    .await;
    let mut stolen = transfer(100, now_ms(), neuro(1), &to);
    stolen.signer = thief.public_key().to_vec();
    f.refused(
        "another signer's key",
        &stolen,
        ErrorKind::Unauthenticated,
        "does not verify",
    )
    .await;
    f.refused(
        "high-S twin",
        &high_s_twin(&transfer(100, now_ms(), neuro(1), &to)),
        ErrorKind::Unauthenticated,
        "high-S",
    )
    .await;
    f.refused(
        "stale timestamp",
        &transfer(100, now_ms() - 120_000, neuro(1), &to),
        ErrorKind::FailedPrecondition,
        "timestamp",
    )
    .await;
    f.refused(
        "future timestamp",
        &transfer(100, now_ms() + 120_000, neuro(1), &to),
        ErrorKind::FailedPrecondition,
        "timestamp",
    )
    .await;
    let wrong_network = sign_operation(
        &user,
        "another-net",
        100,
        now_ms(),
        operation::Kind::Transfer(Transfer {
            to: to.clone(),
            amount: 1,
        }),
    )
    .unwrap();
    f.refused(
        "another network",
        &wrong_network,
        ErrorKind::Unauthenticated,
        "network",
    )
    .await;

    // A valid transfer at nonce 100; then the nonce replayed with another payload, an older
    // nonce, and the same envelope (a retry: stored outcome, nothing moves).
    let first = transfer(100, now_ms(), neuro(1), &to);
    f.submit(&first).await.unwrap();
    f.refused(
        "replayed nonce, another payload",
        &transfer(100, now_ms(), neuro(2), &to),
        ErrorKind::AlreadyExists,
        "different payload",
    )
    .await;
    f.refused(
        "older nonce",
        &transfer(99, now_ms(), neuro(1), &to),
        ErrorKind::FailedPrecondition,
        "nonce",
    )
    .await;
    let before = f.store.fingerprint().await.unwrap();
    assert!(f.submit(&first).await.unwrap().replayed);
    assert_eq!(f.store.fingerprint().await.unwrap(), before);

    for (what, amount, says) in [
        ("negative amount", -5, "positive"),
        ("zero amount", 0, "positive"),
    ] {
        f.refused(
            what,
            &transfer(f.nonce() + 1000, now_ms(), amount, &to),
            ErrorKind::InvalidArgument,
            says,
        )
        .await;
    }
    f.refused(
        "more than the balance (i64::MAX)",
        &transfer(2000, now_ms(), i64::MAX, &to),
        ErrorKind::FailedPrecondition,
        "insufficient balance",
    )
    .await;
    f.refused(
        "transfer to self",
        &transfer(2001, now_ms(), neuro(1), user.node_id()),
        ErrorKind::InvalidArgument,
        "own wallet",
    )
    .await;
    f.refused(
        "a bad address",
        &transfer(2002, now_ms(), neuro(1), "not-an-address"),
        ErrorKind::InvalidArgument,
        "transfer.to",
    )
    .await;

    // Proofs: no receipt, an untrusted aggregator, a receipt for another node, tampered
    // tokens, a second payout for a paid receipt.
    f.refused(
        "proof without a receipt",
        &f.signed(
            &node,
            operation::Kind::TrainingProof(TrainingProof {
                receipt: None,
                payout: String::new(),
            }),
        ),
        ErrorKind::InvalidArgument,
        "receipt",
    )
    .await;
    let impostor = NodeKey::generate();
    f.refused(
        "receipt from an untrusted aggregator",
        &f.proof(
            &node,
            f.receipt_by(&impostor, node.node_id(), 5, (0, 4), 512),
            "",
        ),
        ErrorKind::PermissionDenied,
        "not an aggregator",
    )
    .await;
    f.refused(
        "receipt for another node",
        &f.proof(&thief, f.receipt(&node, 5, (0, 4), 512), ""),
        ErrorKind::PermissionDenied,
        "not for the signer",
    )
    .await;
    let mut inflated = f.receipt(&node, 6, (0, 4), 512);
    let mut receipt = Receipt::decode(inflated.payload.as_slice()).unwrap();
    receipt.tokens *= 1_000;
    inflated.payload = receipt.encode_to_vec();
    f.refused(
        "receipt with inflated tokens",
        &f.proof(&node, inflated, ""),
        ErrorKind::Unauthenticated,
        "receipt",
    )
    .await;
    f.refused(
        "a paid receipt for another payout",
        &f.proof(
            &node,
            f.receipt(&node, 1, (0, 4), 512 * 10_000),
            thief.node_id(),
        ),
        ErrorKind::AlreadyExists,
        "different payload",
    )
    .await;
    // Unsigned or unknown fields cannot carry a reward: a field appended to a signed payload
    // is refused as non-canonical.
    let mut payload = Operation {
        kind: Some(operation::Kind::TrainingProof(TrainingProof {
            receipt: Some(f.receipt(&node, 7, (0, 4), 512)),
            payout: String::new(),
        })),
    }
    .encode_to_vec();
    payload.extend([0xf8, 0x06, 0x01]); // field 111, varint 1
    let extra = sign(&node, NET, OPERATION, f.nonce(), now_ms(), payload).unwrap();
    f.refused(
        "an unknown field",
        &extra,
        ErrorKind::InvalidArgument,
        "canonical",
    )
    .await;

    // Inference and slashing: only the trusted gateway escrows; an unfunded payer is refused
    // before any compute; evidence that proves no fraud slashes nothing.
    let escrow = Escrow {
        request_id: "r-1".into(),
        payer: thief.node_id().into(),
        max_tokens: 10,
        utilisation_ppm: 0,
    };
    f.refused(
        "escrow by a non-gateway",
        &f.signed(&thief, operation::Kind::Escrow(escrow.clone())),
        ErrorKind::PermissionDenied,
        "not a gateway",
    )
    .await;
    let unfunded = NodeKey::generate();
    f.refused(
        "escrow from an unfunded wallet",
        &f.signed(
            &f.gateway,
            operation::Kind::Escrow(Escrow {
                payer: unfunded.node_id().into(),
                ..escrow
            }),
        ),
        ErrorKind::ResourceExhausted,
        "insufficient_quota",
    )
    .await;
    f.refused(
        "settle without escrow",
        &f.signed(
            &f.gateway,
            operation::Kind::Settle(Settle {
                request_id: "r-404".into(),
                tokens: 1,
                driver: to.clone(),
                processors: vec![],
                validator: to.clone(),
            }),
        ),
        ErrorKind::NotFound,
        "no escrow",
    )
    .await;
    let late = Evidence {
        aggregator_id: f.aggregator.node_id().into(),
        node_id: node.node_id().into(),
        round: 1,
        span: None,
        kind: "late".into(),
        reason: "after the deadline".into(),
        commitment: vec![],
    };
    let late = sign(
        &f.aggregator,
        NET,
        "Evidence",
        3,
        now_ms(),
        late.encode_to_vec(),
    )
    .unwrap();
    f.refused(
        "evidence that proves no fraud",
        &f.signed(
            &thief,
            operation::Kind::Slash(Slash {
                evidence: Some(late),
            }),
        ),
        ErrorKind::FailedPrecondition,
        "does not prove fraud",
    )
    .await;
    f.refused(
        "unstake with nothing staked",
        &f.signed(&thief, operation::Kind::Unstake(Unstake { amount: 1 })),
        ErrorKind::FailedPrecondition,
        "nothing staked",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_to_edit_unbalance_or_overdraw_the_journal() {
    let pg = PgServer::start().unwrap();
    let url = pg.create_database("ledger").unwrap();
    let _store = Store::connect(&url, &Default::default(), Economics::default())
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let wallet = format!("wallet/{}", "a".repeat(40));
    client
        .batch_execute(&format!(
            "INSERT INTO transactions (id, key, kind, payload_hash, outcome, unix_ms) VALUES (1, 'k1', 'test', '', '', 0);
             INSERT INTO entries (txn, account, amount) VALUES (1, 'mint', -5), (1, '{wallet}', 5);"
        ))
        .await
        .unwrap();
    for (what, sql) in [
        ("editing an entry", "UPDATE entries SET amount = 6 WHERE txn = 1 AND account = 'mint'".to_string()),
        ("deleting an entry", "DELETE FROM entries".to_string()),
        ("deleting a transaction", "DELETE FROM transactions".to_string()),
        ("truncating", "TRUNCATE entries, transactions".to_string()),
        (
            "an unbalanced transaction",
            format!(
                "INSERT INTO transactions (id, key, kind, payload_hash, outcome, unix_ms) VALUES (2, 'k2', 'test', '', '', 0);
                 INSERT INTO entries (txn, account, amount) VALUES (2, 'mint', -5), (2, '{wallet}', 6);"
            ),
        ),
        (
            "a holder below zero",
            format!(
                "INSERT INTO transactions (id, key, kind, payload_hash, outcome, unix_ms) VALUES (3, 'k3', 'test', '', '', 0);
                 INSERT INTO entries (txn, account, amount) VALUES (3, 'burn', 6), (3, '{wallet}', -6);"
            ),
        ),
        ("a cached balance edited below zero", format!("UPDATE accounts SET balance = -1 WHERE id = '{wallet}'")),
    ] {
        let err = client
            .batch_execute(&format!("BEGIN; {sql}; COMMIT;"))
            .await
            .expect_err(what);
        client.batch_execute("ROLLBACK").await.unwrap();
        let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
        println!("{what}: {message}");
        assert!(
            ["append-only", "does not sum to zero", "check constraint"]
                .iter()
                .any(|why| message.contains(why)),
            "{what}: {message}"
        );
    }
    let row = client
        .query_one(
            &format!("SELECT balance FROM accounts WHERE id = '{wallet}'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uptime_pays_once_per_epoch_and_implausible_or_foreign_claims_are_refused() {
    let f = Fixture::new(Economics::default()).await;
    let (node, other) = (NodeKey::generate(), NodeKey::generate());
    let hour = 3_600_000u64;
    let attestation =
        |node_id: &str, start: u64, epoch_ms: u64, uptime_ms: u64| UptimeAttestation {
            registry_id: f.registry.node_id().into(),
            node_id: node_id.into(),
            epoch_start_unix_ms: start,
            epoch_ms,
            uptime_ms,
            heartbeats: 700,
        };
    // 59.5 minutes of uptime × 0.0001 NEURO a minute.
    let honest = attestation(node.node_id(), 10 * hour, hour, 3_570_000);
    let paid = f
        .submit(&f.uptime(&node, &f.registry, honest.clone()))
        .await
        .unwrap();
    assert_eq!(f.balance(node.node_id()).await, 5_950_000);
    let again = f
        .submit(&f.uptime(&node, &f.registry, honest.clone()))
        .await
        .unwrap();
    assert!(again.replayed && again.transaction == paid.transaction);
    // The same epoch with another figure is another payload under the same key.
    f.refused(
        "a second attestation of a paid epoch",
        &f.uptime(
            &node,
            &f.registry,
            attestation(node.node_id(), 10 * hour, hour, 3_600_000),
        ),
        ErrorKind::AlreadyExists,
        "different payload",
    )
    .await;
    f.refused(
        "an attestation signed by a key that is not a trusted registry",
        &f.uptime(
            &node,
            &other,
            attestation(node.node_id(), 11 * hour, hour, 60_000),
        ),
        ErrorKind::PermissionDenied,
        "not a registry this ledger trusts",
    )
    .await;
    f.refused(
        "another node's attestation",
        &f.uptime(
            &other,
            &f.registry,
            attestation(node.node_id(), 11 * hour, hour, 60_000),
        ),
        ErrorKind::PermissionDenied,
        "not for the signer",
    )
    .await;
    f.refused(
        "an epoch of another length (overlapping paid time)",
        &f.uptime(
            &node,
            &f.registry,
            attestation(node.node_id(), 20 * hour, 2 * hour, 60_000),
        ),
        ErrorKind::InvalidArgument,
        "not one of this ledger's",
    )
    .await;
    f.refused(
        "an epoch off the grid",
        &f.uptime(
            &node,
            &f.registry,
            attestation(node.node_id(), 10 * hour + 1, hour, 60_000),
        ),
        ErrorKind::InvalidArgument,
        "not one of this ledger's",
    )
    .await;
    f.refused(
        "more uptime than the epoch has",
        &f.uptime(
            &node,
            &f.registry,
            attestation(node.node_id(), 12 * hour, hour, hour + 1),
        ),
        ErrorKind::InvalidArgument,
        "ms of uptime in a",
    )
    .await;

    // Training tokens beyond what the node's registered capacity allows in the time.
    let inflated = Receipt {
        aggregator_id: f.aggregator.node_id().into(),
        node_id: node.node_id().into(),
        round: 9,
        span: Some(LayerSpan { start: 1, end: 2 }),
        tokens: 1_000_000,
        score: 0.1,
        commitment: vec![7; 32],
        num_layers: 4,
        capacity_tokens_per_second: 100.0,
        elapsed_ms: 60_000,
    };
    let signed = |r: &Receipt| {
        sign(
            &f.aggregator,
            NET,
            "Receipt",
            1,
            now_ms(),
            r.encode_to_vec(),
        )
        .unwrap()
    };
    f.refused(
        "tokens beyond capacity × time",
        &f.proof(&node, signed(&inflated), ""),
        ErrorKind::InvalidArgument,
        "implausible",
    )
    .await;
    f.refused(
        "a receipt with a non-finite capacity",
        &f.proof(
            &node,
            signed(&Receipt {
                capacity_tokens_per_second: f64::INFINITY,
                ..inflated.clone()
            }),
            "",
        ),
        ErrorKind::InvalidArgument,
        "capacity_tokens_per_second",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escrow_never_settled_is_refunded_after_its_ttl_and_cannot_be_settled_after() {
    let f = Fixture::new(Economics {
        escrow_ttl_ms: 1_000,
        ..Economics::default()
    })
    .await;
    let (node, user) = (NodeKey::generate(), NodeKey::generate());
    f.submit(&f.proof(
        &node,
        f.receipt(&node, 1, (1, 4), 512 * 1_000),
        user.node_id(),
    ))
    .await
    .unwrap();
    let funded = f.balance(user.node_id()).await;
    let escrowed = f
        .submit(&f.signed(
            &f.gateway,
            operation::Kind::Escrow(Escrow {
                request_id: "lost-request".into(),
                payer: user.node_id().into(),
                max_tokens: 1_000,
                utilisation_ppm: 0,
            }),
        ))
        .await
        .unwrap();
    assert_eq!(f.balance(user.node_id()).await, funded - escrowed.escrowed);
    // Not due yet: the sweep finds nothing, and an early refund is refused.
    let now = now_ms();
    assert!(
        f.store
            .open_escrows_before(now - 1_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let early = f
        .store
        .submit_batch(
            &[Ok(neuroshard_ledger::verify::expiry("lost-request", now))],
            now,
        )
        .await
        .unwrap();
    assert!(
        early[0]
            .as_ref()
            .unwrap_err()
            .message
            .contains("open until")
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let now = now_ms();
    let due = f.store.open_escrows_before(now - 1_000, 10).await.unwrap();
    assert_eq!(due, vec!["lost-request".to_string()]);
    let refunds: Vec<_> = due
        .iter()
        .map(|id| Ok(neuroshard_ledger::verify::expiry(id, now)))
        .collect();
    let refunded = f.store.submit_batch(&refunds, now).await.unwrap();
    assert_eq!(refunded[0].as_ref().unwrap().escrowed, escrowed.escrowed);
    assert_eq!(f.balance(user.node_id()).await, funded);
    // A second sweep (another replica) refunds nothing more.
    let again = f.store.submit_batch(&refunds, now).await.unwrap();
    assert!(again[0].as_ref().unwrap().replayed);
    assert!(
        f.store
            .open_escrows_before(now, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(f.balance(user.node_id()).await, funded);
    f.refused(
        "settling a refunded escrow",
        &f.signed(
            &f.gateway,
            operation::Kind::Settle(Settle {
                request_id: "lost-request".into(),
                tokens: 10,
                driver: node.node_id().into(),
                processors: vec![],
                validator: node.node_id().into(),
            }),
        ),
        ErrorKind::FailedPrecondition,
        "already closed",
    )
    .await;
    let supply = f.store.supply(true).await.unwrap();
    assert_eq!(supply.supply, supply.held);
    assert_eq!(supply.mismatched_accounts, 0);
}
