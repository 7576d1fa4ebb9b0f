//! The `Ledger` gRPC service: a thin adapter. Each envelope is verified ([`crate::verify`],
//! pure and CPU-bound, so batches verify off the async threads) and then journaled by the
//! [`crate::store`]; queries read the store. Refusals keep the error taxonomy's codes.

use std::sync::Arc;
use std::time::Instant;

use neuroshard_common::Error;
use neuroshard_common::signing::now_ms;
use neuroshard_proto::common::v1::SignedEnvelope;
use neuroshard_proto::ledger::v1::ledger_server::Ledger as LedgerRpc;
use neuroshard_proto::ledger::v1::{
    AccountState, BatchResult, GetAccountRequest, HistoryRequest, HistoryResponse, MarketRequest,
    MarketState, Outcome, Refusal, SubmitBatchRequest, SubmitBatchResponse, SupplyRequest,
    SupplyState, batch_result,
};
use neuroshard_runtime::telemetry::names::ledger as names;
use tonic::{Request, Response, Status};

use crate::account::check_address;
use crate::store::Store;
use crate::verify::Verifier;

#[derive(Debug, Clone)]
pub struct LedgerService {
    pub store: Store,
    pub verifier: Arc<Verifier>,
    pub max_batch: usize,
}

/// Counts an answered operation; minted and burned NEURO count once, when first applied.
fn observe(kind: &'static str, result: &Result<Outcome, Error>) {
    match result {
        Ok(outcome) => {
            let label = if outcome.replayed {
                "replayed"
            } else {
                "applied"
            };
            metrics::counter!(names::OPERATIONS, "kind" => kind, "outcome" => label).increment(1);
            if !outcome.replayed {
                for e in &outcome.entries {
                    match e.account.as_str() {
                        "mint" => {
                            metrics::counter!(names::MINTED).increment(e.amount.unsigned_abs())
                        }
                        "burn" => {
                            metrics::counter!(names::BURNED).increment(e.amount.unsigned_abs())
                        }
                        _ => {}
                    }
                }
            }
        }
        Err(e) => {
            // The refusal's gRPC code, named as the server's own call metrics name it.
            let code = format!("{:?}", tonic::Code::from(e.kind.grpc_code()));
            metrics::counter!(names::OPERATIONS, "kind" => kind, "outcome" => code).increment(1);
        }
    }
}

impl LedgerService {
    async fn one(&self, envelope: SignedEnvelope) -> Result<Outcome, Error> {
        let now = now_ms();
        let request = self.verifier.check(&envelope, now);
        let kind = request.as_ref().map_or("unverified", |r| r.op.kind());
        let result = match request {
            Ok(request) => self.store.submit(&request, now).await,
            Err(e) => Err(e),
        };
        observe(kind, &result);
        result
    }
}

#[tonic::async_trait]
impl LedgerRpc for LedgerService {
    async fn submit(&self, request: Request<SignedEnvelope>) -> Result<Response<Outcome>, Status> {
        let started = Instant::now();
        let result = self.one(request.into_inner()).await;
        metrics::histogram!(names::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(Response::new(result?))
    }

    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        let started = Instant::now();
        let envelopes = request.into_inner().operations;
        if envelopes.len() > self.max_batch {
            return Err(Error::invalid_argument(format!(
                "operations: {} in one batch, at most {}",
                envelopes.len(),
                self.max_batch
            ))
            .into());
        }
        let now = now_ms();
        let verifier = self.verifier.clone();
        let requests = tokio::task::spawn_blocking(move || {
            envelopes
                .iter()
                .map(|e| verifier.check(e, now))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Error::internal(format!("verifying the batch: {e}")))?;
        let outcomes = self.store.submit_batch(&requests, now).await?;
        let results = requests
            .iter()
            .zip(outcomes)
            .map(|(request, result)| {
                let kind = request.as_ref().map_or("unverified", |r| r.op.kind());
                observe(kind, &result);
                BatchResult {
                    result: Some(match result {
                        Ok(outcome) => batch_result::Result::Outcome(outcome),
                        Err(e) => batch_result::Result::Refusal(Refusal {
                            code: e.kind.grpc_code(),
                            message: e.message,
                        }),
                    }),
                }
            })
            .collect();
        metrics::histogram!(names::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(Response::new(SubmitBatchResponse { results }))
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<AccountState>, Status> {
        let address = request.into_inner().address;
        check_address("address", &address)?;
        Ok(Response::new(self.store.account(&address).await?))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let r = request.into_inner();
        check_address("address", &r.address)?;
        Ok(Response::new(
            self.store.history(&r.address, r.before, r.limit).await?,
        ))
    }

    async fn supply(
        &self,
        request: Request<SupplyRequest>,
    ) -> Result<Response<SupplyState>, Status> {
        Ok(Response::new(
            self.store.supply(request.into_inner().audit).await?,
        ))
    }

    async fn market(&self, _: Request<MarketRequest>) -> Result<Response<MarketState>, Status> {
        Ok(Response::new(self.store.market().await?))
    }
}
