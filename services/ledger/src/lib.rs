//! The NEURO ledger: pays nodes for verified work and charges users for inference, on a
//! double-entry journal in PostgreSQL that never loses or invents a unit.
//!
//! Pure (no I/O, tested directly):
//! - [`amount`] (from `neuroshard-neuro`): checked integer nano-NEURO;
//! - [`account`]: the journal's accounts (holders, `mint`, `burn`) and address checks;
//! - [`economics`]: DESIGN §7's numbers and their integer arithmetic (rewards, multipliers,
//!   caps, fees, price, split, slash);
//! - [`verify`]: a signed envelope to a checked request (signatures, bindings to receipts,
//!   evidence and gateway keys, the idempotency key);
//! - [`ops`]: an operation and the state it reads to a plan of entries, or a refusal;
//! - [`journal`]: idempotent retries, nonces, outcomes — the steps around a plan;
//! - [`state`]: the state operations read and change, and the one step of a request;
//! - [`memory`]: the ledger on maps with its invariants, for the seeded simulation.
//!
//! I/O and wiring: [`store`] (PostgreSQL), [`service`] (gRPC), [`config`], and [`run`].

pub mod account;
pub mod config;
pub mod economics;
pub mod journal;
pub mod memory;
pub mod ops;
pub mod service;
pub mod state;
pub mod store;
pub mod verify;

use std::future::Future;
use std::sync::Arc;

use neuroshard_common::Error;
use neuroshard_proto::ledger::v1::ledger_server::LedgerServer;

pub use config::LedgerConfig;
/// Checked integer nano-NEURO (shared with wallets, the gateway and nodes).
pub use neuroshard_neuro::amount;

use crate::store::Store;

/// Serves the ledger on `listener` until `shutdown` resolves.
pub async fn run(
    config: LedgerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let _metrics = neuroshard_runtime::telemetry::metrics::serve(config.metrics_listen).await?;
    let health_listener = neuroshard_runtime::grpc::bind_health(config.health_listen).await?;
    neuroshard_runtime::telemetry::names::describe(
        neuroshard_runtime::telemetry::names::ledger::TABLE,
    );
    if config.tls.insecure_plaintext {
        tracing::warn!(
            "gRPC is plaintext (tls.insecure_plaintext = true): operations stay signed, but balances and histories are readable by anyone who reaches the port"
        );
    }
    if config.aggregators.is_empty() {
        tracing::warn!("no aggregators are trusted: training proofs and slashes are refused");
    }
    if config.gateways.is_empty() {
        tracing::warn!("no gateways are trusted: inference escrows are refused");
    }
    let store = Store::connect(
        &config.database_url,
        &config.database_tls,
        config.economics.clone(),
    )
    .await?;
    let listen = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("listener: {e}")))?;
    tracing::info!(%listen, network = %config.network_id, "ledger serving");
    let sweeper = tokio::spawn(refund_expired_escrows(
        store.clone(),
        config.economics.escrow_ttl_ms,
    ));
    let service = service::LedgerService {
        store,
        verifier: Arc::new(config.verifier()),
        max_batch: config.max_batch,
    };
    let result = neuroshard_runtime::grpc::serve(
        listener,
        config.tls.server()?,
        neuroshard_runtime::grpc::GrpcServices::default()
            .with(
                LedgerServer::new(service)
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes),
            )
            .with_health_listener(health_listener),
        shutdown,
    )
    .await;
    sweeper.abort();
    tracing::info!("ledger stopped");
    result
}

/// Refunds, every tenth of `ttl_ms` (at most a minute), the escrows their gateway left
/// unsettled for `ttl_ms`: a gateway that died mid-request must not lock the user's NEURO.
/// Each refund is an operation like any other (`expire/<request id>`, applied once), so
/// several ledger replicas sweeping at once refund each escrow once.
async fn refund_expired_escrows(store: Store, ttl_ms: i64) {
    let every = std::time::Duration::from_millis((ttl_ms / 10).clamp(100, 60_000) as u64);
    loop {
        tokio::time::sleep(every).await;
        let now = neuroshard_common::signing::now_ms();
        let due = match store.open_escrows_before(now - ttl_ms, 500).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "reading expired escrows failed");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        let requests: Vec<_> = due.iter().map(|id| Ok(verify::expiry(id, now))).collect();
        match store.submit_batch(&requests, now).await {
            Ok(results) => {
                let refunded = results.iter().filter(|r| r.is_ok()).count();
                tracing::info!(refunded, due = due.len(), "unsettled escrows refunded");
            }
            Err(e) => tracing::warn!(error = %e, "refunding expired escrows failed"),
        }
    }
}
