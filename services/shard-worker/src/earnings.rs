//! Claiming what this node's training earned: once the aggregators publish a round, the
//! receipts they signed for this node's accepted work in it go to the ledger as training
//! proofs (signed by the node, paying its `payout` wallet). The ledger applies a proof once
//! per node, round and span, so sending one again — after a restart, or a lost answer — is
//! harmless; a round is marked claimed only when every receipt was answered.

use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms};
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_neuro::{Amount, sign_operation};
use neuroshard_proto::ledger::v1::ledger_client::LedgerClient;
use neuroshard_proto::ledger::v1::{TrainingProof, operation};
use neuroshard_worker_client::aggregator::Aggregators;
use tonic::transport::Channel;

/// Published rounds looked back on at start (older receipts were claimed before a restart,
/// or are too old for the ledger).
const LOOKBACK: u64 = 16;

/// Where and as whom this node claims.
#[derive(Debug)]
pub struct Claimer {
    pub ledger: LedgerClient<Channel>,
    pub key: Arc<NodeKey>,
    pub network_id: String,
    /// The wallet credited.
    pub payout: String,
    pub nonces: NonceSource,
}

impl Claimer {
    /// Sends the proofs of `round`; an error means some receipt is not answered yet.
    async fn claim(&self, aggregators: &Aggregators, round: u64) -> Result<()> {
        for receipt in aggregators.receipts(round, self.key.node_id()).await? {
            let proof = sign_operation(
                &self.key,
                &self.network_id,
                self.nonces.next(),
                now_ms(),
                operation::Kind::TrainingProof(TrainingProof {
                    receipt: Some(receipt),
                    payout: self.payout.clone(),
                }),
            )?;
            match self.ledger.clone().submit(proof).await {
                Ok(outcome) => {
                    let outcome = outcome.into_inner();
                    let credited: i64 = outcome
                        .entries
                        .iter()
                        .filter(|e| e.account != "mint")
                        .map(|e| e.amount)
                        .sum();
                    tracing::info!(
                        round,
                        credited = %Amount::from_nano(credited),
                        payout = %self.payout,
                        replayed = outcome.replayed,
                        "training reward claimed"
                    );
                }
                Err(s) if ErrorKind::from_grpc_code(s.code() as i32) == ErrorKind::Unavailable => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("the ledger: {}", s.message()),
                    ));
                }
                // Refused for good (a cap, an old receipt): nothing to retry.
                Err(s) => tracing::warn!(round, error = %s.message(), "training proof refused"),
            }
        }
        Ok(())
    }
}

/// Claims every published round as it comes, until the task is dropped.
pub async fn follow(aggregators: Arc<Aggregators>, claimer: Claimer, poll: Duration) {
    let mut claimed: Option<u64> = None;
    loop {
        match aggregators.round().await {
            Ok(round) => {
                let published = round.weights_round;
                let first = claimed.map_or(published.saturating_sub(LOOKBACK), |c| c + 1);
                for r in first.max(1)..=published {
                    match claimer.claim(&aggregators, r).await {
                        Ok(()) => claimed = Some(r),
                        Err(e) => {
                            tracing::debug!(round = r, error = %e, "claiming; will try again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading the aggregators' round"),
        }
        tokio::time::sleep(poll).await;
    }
}
