//! Claiming what this node's training earned: once the aggregators publish a round, the
//! receipts they signed for this node's accepted work in it go to the ledger as training
//! proofs (signed by the node, paying its `payout` wallet). The ledger applies a proof once
//! per node, round and span, so sending one again — after a restart, or a lost answer — is
//! harmless; a round is marked claimed only when every receipt was answered.
//!
//! Uptime is claimed the same way: the registry signs, for each epoch once it is final, how
//! long this node was live in it; that attestation goes to the ledger as an uptime proof
//! (once per node and epoch; asking again is answered with the stored outcome).

use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms};
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_neuro::{Amount, sign_operation};
use neuroshard_proto::common::v1::SignedEnvelope;
use neuroshard_proto::ledger::v1::ledger_client::LedgerClient;
use neuroshard_proto::ledger::v1::{TrainingProof, UptimeProof, operation};
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{AttestRequest, UptimeEpochRequest};
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
            let proof = operation::Kind::TrainingProof(TrainingProof {
                receipt: Some(receipt),
                payout: self.payout.clone(),
            });
            self.send(proof, "training", round).await?;
        }
        Ok(())
    }

    /// Sends an uptime proof of the registry's `attestation` of epoch `epoch_start`.
    async fn claim_uptime(&self, attestation: SignedEnvelope, epoch_start: u64) -> Result<()> {
        let proof = operation::Kind::UptimeProof(UptimeProof {
            attestation: Some(attestation),
            payout: self.payout.clone(),
        });
        self.send(proof, "uptime", epoch_start).await
    }

    /// Signs and sends `proof` (`what` of `which` round or epoch, for the log); an error
    /// means the ledger did not answer and it is worth sending again.
    async fn send(&self, proof: operation::Kind, what: &'static str, which: u64) -> Result<()> {
        let proof = sign_operation(
            &self.key,
            &self.network_id,
            self.nonces.next(),
            now_ms(),
            proof,
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
                if !outcome.replayed {
                    tracing::info!(
                        what,
                        which,
                        credited = %Amount::from_nano(credited),
                        payout = %self.payout,
                        "reward claimed"
                    );
                }
                Ok(())
            }
            Err(s) if ErrorKind::from_grpc_code(s.code() as i32) == ErrorKind::Unavailable => {
                Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("the ledger: {}", s.message()),
                ))
            }
            // Refused for good (a cap, an old receipt): nothing to retry.
            Err(s) => {
                tracing::warn!(what, which, error = %s.message(), "proof refused");
                Ok(())
            }
        }
    }
}

/// The start of the latest epoch that is final at `now_ms` (ended at least
/// `final_after_ms` ago), if there is one.
fn latest_final_epoch(now_ms: i64, epoch_ms: i64, final_after_ms: i64) -> Option<u64> {
    let settled = now_ms.checked_sub(final_after_ms)?;
    let current = settled - settled.rem_euclid(epoch_ms);
    u64::try_from(current.checked_sub(epoch_ms)?).ok()
}

/// Claims this node's uptime, the latest final epoch at a time (polled often enough that
/// none is skipped), until the task is dropped. Quiet when the registry attests nothing.
pub async fn follow_uptime(
    registry: LayerRegistryClient<Channel>,
    claimer: Arc<Claimer>,
    poll: Duration,
) {
    let node_id = claimer.key.node_id().to_string();
    let mut claimed: Option<u64> = None;
    loop {
        let asked = registry
            .clone()
            .uptime_epoch(UptimeEpochRequest {})
            .await
            .map(tonic::Response::into_inner);
        if let Some(grid) = asked.ok().filter(|g| g.attests) {
            let epoch_ms = i64::try_from(grid.epoch_ms).unwrap_or(i64::MAX).max(1);
            let after = i64::try_from(grid.final_after_ms).unwrap_or(i64::MAX);
            if let Some(start) =
                latest_final_epoch(now_ms(), epoch_ms, after).filter(|s| Some(*s) != claimed)
            {
                let request = AttestRequest {
                    node_id: node_id.clone(),
                    epoch_start_unix_ms: start,
                };
                match registry.clone().attest(request).await {
                    Ok(attestation) => {
                        if claimer
                            .claim_uptime(attestation.into_inner(), start)
                            .await
                            .is_ok()
                        {
                            claimed = Some(start);
                        }
                    }
                    // Not final yet, no heartbeat in it, or no signing key: ask again later.
                    Err(s) => {
                        tracing::debug!(epoch = start, error = %s.message(), "no uptime attestation yet")
                    }
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// Claims every published round as it comes, until the task is dropped.
pub async fn follow(aggregators: Arc<Aggregators>, claimer: Arc<Claimer>, poll: Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_final_epoch_is_the_one_whose_end_is_final_after_ago() {
        // Epochs of 10 s, final 3 s after they end.
        assert_eq!(latest_final_epoch(23_000, 10_000, 3_000), Some(10_000));
        assert_eq!(latest_final_epoch(22_999, 10_000, 3_000), Some(0));
        assert_eq!(latest_final_epoch(12_999, 10_000, 3_000), None);
    }
}
