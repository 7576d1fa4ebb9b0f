//! A ledger process on a throwaway PostgreSQL, with the aggregator and gateway keys it trusts,
//! and the mixed load the ledger tests and benchmark drive through it: many clients, each a
//! node that proves training work (receipts signed by the trusted aggregator key), transfers,
//! stakes, tries to unstake early, and pays for inference through escrow and settle (signed
//! by the trusted gateway key). Clients retry an unanswered operation with the same envelope
//! until it is answered, as a real client would across a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms, sign};
use neuroshard_local::{ChildGuard, LEDGER_BINARY, Launcher, LedgerToml, PgServer, free_port};
use neuroshard_neuro::sign_operation;
use neuroshard_proto::aggregator::v1::Receipt;
use neuroshard_proto::common::v1::{LayerSpan, SignedEnvelope};
use neuroshard_proto::ledger::v1::ledger_client::LedgerClient;
use neuroshard_proto::ledger::v1::{
    Escrow, Outcome, Settle, Stake, SupplyRequest, SupplyState, TrainingProof, Transfer, Unstake,
    operation,
};
use neuroshard_runtime::tls::TlsFiles;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

pub const NET: &str = "neuroshard-ledger-test";

pub struct LedgerHarness {
    pub pg: PgServer,
    pub launcher: Launcher,
    pub config: toml::Table,
    pub port: u16,
    pub process: Option<ChildGuard>,
    pub aggregator: Arc<NodeKey>,
    pub gateway: Arc<NodeKey>,
}

impl LedgerHarness {
    pub fn start(dir: &std::path::Path) -> Self {
        Self::start_with(dir, |config| config)
    }

    /// A ledger whose config `more` adds to.
    pub fn start_with(dir: &std::path::Path, more: impl FnOnce(LedgerToml) -> LedgerToml) -> Self {
        let pg = PgServer::start().unwrap();
        let database = pg.create_database("ledger").unwrap();
        let (aggregator, gateway) = (NodeKey::generate(), NodeKey::generate());
        let port = free_port().unwrap();
        let config = more(
            LedgerToml::new(NET, port, &database)
                .tls(&TlsFiles::insecure_plaintext())
                .unwrap()
                .aggregators(&[aggregator.node_id()])
                .gateways(&[gateway.node_id()]),
        )
        .table()
        .clone();
        let mut harness = Self {
            pg,
            launcher: super::launcher(dir),
            config,
            port,
            process: None,
            aggregator: Arc::new(aggregator),
            gateway: Arc::new(gateway),
        };
        harness.spawn(false);
        harness
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the ledger (again, keeping its log) and waits until it listens.
    pub fn spawn(&mut self, again: bool) {
        let mut process = if again {
            self.launcher
                .respawn(LEDGER_BINARY, "ledger", &self.config, &[])
        } else {
            self.launcher
                .spawn(LEDGER_BINARY, "ledger", &self.config, &[])
        }
        .unwrap();
        self.launcher
            .wait_for_port(
                &mut process,
                self.port,
                Instant::now() + Duration::from_secs(60),
                "ledger",
            )
            .unwrap();
        self.process = Some(process);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    pub fn client(&self) -> LedgerClient<Channel> {
        LedgerClient::new(
            tonic::transport::Endpoint::from_shared(self.url())
                .unwrap()
                .connect_lazy(),
        )
    }
}

/// The ledger's audited supply, checked whole: supply = what holders hold, and every cached
/// balance the sum of its entries.
pub async fn audited_supply(client: &mut LedgerClient<Channel>) -> SupplyState {
    let supply = client
        .supply(SupplyRequest { audit: true })
        .await
        .unwrap()
        .into_inner();
    assert!(supply.audited);
    assert_eq!(supply.supply, supply.held, "{supply:?}");
    assert_eq!(supply.mismatched_accounts, 0, "{supply:?}");
    supply
}

/// A training proof as a node sends it: signed by `node` with `nonce`, bound to
/// `aggregator`'s receipt for `tokens` on layers [0, 4) of 4 in `round`, paying `payout`
/// (empty: the node itself), on `network`.
pub fn training_proof(
    network: &str,
    aggregator: &NodeKey,
    node: &NodeKey,
    round: u64,
    tokens: u64,
    payout: &str,
    nonce: u64,
) -> SignedEnvelope {
    let receipt = Receipt {
        aggregator_id: aggregator.node_id().into(),
        node_id: node.node_id().into(),
        round,
        span: Some(LayerSpan { start: 0, end: 4 }),
        tokens,
        score: 0.01,
        commitment: vec![1; 32],
        num_layers: 4,
        // Plausible for any token count a proof may claim (100k tokens/s for a minute, ×32).
        capacity_tokens_per_second: 100_000.0,
        elapsed_ms: 60_000,
    };
    let receipt = sign(
        aggregator,
        network,
        "Receipt",
        round,
        now_ms(),
        receipt.encode_to_vec(),
    )
    .unwrap();
    sign_operation(
        node,
        network,
        nonce,
        now_ms(),
        operation::Kind::TrainingProof(TrainingProof {
            receipt: Some(receipt),
            payout: payout.into(),
        }),
    )
    .unwrap()
}

/// What one load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Every acknowledged operation with the outcome it was acknowledged with.
    pub acknowledged: Vec<(SignedEnvelope, Outcome)>,
    /// Refused operations (by gRPC code name).
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Escrow + settle round trips, seconds.
    pub escrow_settle: Vec<f64>,
    /// Attempts that found the ledger unavailable and were retried.
    pub retries: u64,
}

/// Sends `envelope` until it is answered: an outcome, or a refusal that is final.
async fn send(
    client: &mut LedgerClient<Channel>,
    envelope: &SignedEnvelope,
    report: &mut LoadReport,
) -> Option<Outcome> {
    let give_up = Instant::now() + Duration::from_secs(55);
    loop {
        match client.submit(envelope.clone()).await {
            Ok(outcome) => {
                let outcome = outcome.into_inner();
                report
                    .acknowledged
                    .push((envelope.clone(), outcome.clone()));
                return Some(outcome);
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) && Instant::now() < give_up =>
            {
                report.retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                *report
                    .refused
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                return None;
            }
        }
    }
}

/// One client's loop until `stop`.
pub async fn client_loop(
    i: usize,
    url: String,
    peers: Arc<Vec<String>>,
    aggregator: Arc<NodeKey>,
    gateway: Arc<NodeKey>,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let key = NodeKey::generate();
    let nonces = NonceSource::new();
    let mut rng = StdRng::seed_from_u64(i as u64);
    let mut client = LedgerClient::new(
        tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect_lazy(),
    );
    let mut report = LoadReport::default();
    let mut round = 0u64;
    let mut requests = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let op = |kind| sign_operation(&key, NET, nonces.next(), now_ms(), kind).unwrap();
        match rng.random_range(0..10) {
            0..=2 => {
                round += 1;
                let tokens = 512 * rng.random_range(1..2_000);
                let proof =
                    training_proof(NET, &aggregator, &key, round, tokens, "", nonces.next());
                send(&mut client, &proof, &mut report).await;
            }
            3..=4 => {
                let to = peers[rng.random_range(0..peers.len())].clone();
                let amount = rng.random_range(1..2_000_000_000);
                if to != key.node_id() {
                    let t = op(operation::Kind::Transfer(Transfer { to, amount }));
                    send(&mut client, &t, &mut report).await;
                }
            }
            5 => {
                let amount = rng.random_range(1..100_000_000);
                let s = if rng.random_bool(0.7) {
                    op(operation::Kind::Stake(Stake { amount }))
                } else {
                    op(operation::Kind::Unstake(Unstake { amount }))
                };
                send(&mut client, &s, &mut report).await;
            }
            _ => {
                requests += 1;
                let id = format!("load-{i}-{requests}");
                let started = Instant::now();
                let escrow = sign_operation(
                    &gateway,
                    NET,
                    0,
                    now_ms(),
                    operation::Kind::Escrow(Escrow {
                        request_id: id.clone(),
                        payer: key.node_id().into(),
                        max_tokens: rng.random_range(1..2_000),
                        utilisation_ppm: rng.random_range(0..1_500_000),
                    }),
                )
                .unwrap();
                let Some(escrowed) = send(&mut client, &escrow, &mut report).await else {
                    continue;
                };
                let peer = |rng: &mut StdRng| peers[rng.random_range(0..peers.len())].clone();
                let max = escrowed.escrowed / escrowed.price_per_token.max(1);
                let settle = sign_operation(
                    &gateway,
                    NET,
                    0,
                    now_ms(),
                    operation::Kind::Settle(Settle {
                        request_id: id,
                        tokens: rng.random_range(0..=max as u64),
                        driver: peer(&mut rng),
                        processors: (0..rng.random_range(0..3))
                            .map(|_| peer(&mut rng))
                            .collect(),
                        validator: peer(&mut rng),
                    }),
                )
                .unwrap();
                if send(&mut client, &settle, &mut report).await.is_some() {
                    report.escrow_settle.push(started.elapsed().as_secs_f64());
                }
            }
        }
    }
    report
}

/// Runs `clients` clients against `url` until `stop` is set; merges their reports.
pub fn start_load(
    clients: usize,
    url: &str,
    aggregator: &Arc<NodeKey>,
    gateway: &Arc<NodeKey>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<LoadReport>> {
    // Peers are addresses other clients and outsiders pay to.
    let peers: Arc<Vec<String>> = Arc::new(
        (0..16)
            .map(|_| NodeKey::generate().node_id().to_string())
            .collect(),
    );
    (0..clients)
        .map(|i| {
            tokio::spawn(client_loop(
                i,
                url.to_string(),
                peers.clone(),
                aggregator.clone(),
                gateway.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

pub async fn merge(handles: Vec<tokio::task::JoinHandle<LoadReport>>) -> LoadReport {
    let mut all = LoadReport::default();
    for h in handles {
        let r = h.await.unwrap();
        all.acknowledged.extend(r.acknowledged);
        for (k, v) in r.refused {
            *all.refused.entry(k).or_default() += v;
        }
        all.escrow_settle.extend(r.escrow_settle);
        all.retries += r.retries;
    }
    all
}

/// The `q` quantile of `values` (sorted here).
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get(((values.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}
