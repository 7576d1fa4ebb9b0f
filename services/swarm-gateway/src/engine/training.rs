//! The swarm's training progress for the status document: every second, each live node that
//! starts a pipeline (holds layer 0) is asked what its Driver reports (`Progress` on its
//! StageTrainer service), and the answers replace the last ones. A node that does not answer
//! within the poll's deadline drops out until it does. The aggregator, when configured, is
//! asked for its latest closed rounds at the same pace, after the Drivers: a round a Driver
//! already serves has closed, so the rounds asked for afterwards list it (asked before, a
//! round closing in between was served but not yet listed). An aggregator that does not
//! answer leaves the rounds it listed last: closed rounds do not change.

use std::sync::Arc;
use std::time::Duration;

use neuroshard_proto::registry::v1::NodeState;
use neuroshard_proto::trainer::v1::stage_trainer_client::StageTrainerClient;
use neuroshard_proto::trainer::v1::{PipelineProgress, ProgressRequest};

use super::state::EngineState;
use crate::status::{PipelineStatus, RoundStatus};
use neuroshard_proto::aggregator::v1::ListRoundsRequest;
use neuroshard_proto::aggregator::v1::aggregator_client::AggregatorClient;

const POLL: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_millis(800);

/// What the Drivers reported last: pipelines by id, and the newest round any node serves;
/// and the aggregator's closed rounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingProgress {
    pub pipelines: Vec<PipelineStatus>,
    pub served_round: u64,
    pub rounds: Vec<RoundStatus>,
}

/// Rounds the status document lists.
const ROUNDS_SHOWN: u32 = 50;

/// The aggregator's latest closed rounds, oldest first (`None` when it does not answer).
async fn aggregator_rounds(engine: &EngineState, endpoint: &str) -> Option<Vec<RoundStatus>> {
    let answer = tokio::time::timeout(DEADLINE, async {
        let channel = engine
            .hops
            .channel(endpoint, DEADLINE)
            .await
            .map_err(|e| format!("{e:?}"))?;
        AggregatorClient::new(channel)
            .list_rounds(ListRoundsRequest {
                limit: ROUNDS_SHOWN,
            })
            .await
            .map_err(|s| s.message().to_string())
    })
    .await;
    match answer {
        Ok(Ok(response)) => Some(
            response
                .into_inner()
                .rounds
                .into_iter()
                .map(|r| RoundStatus {
                    round: r.round,
                    held_out: r.held_out.is_finite().then_some(r.held_out),
                    bytes: r.bytes,
                    rule: r.rule,
                    accepted: r.accepted,
                    flagged: r.flagged,
                })
                .collect(),
        ),
        Ok(Err(e)) => {
            tracing::debug!(%endpoint, error = %e, "aggregator rounds");
            None
        }
        Err(_) => {
            tracing::debug!(%endpoint, "aggregator rounds: no answer in time");
            None
        }
    }
}

/// A Driver's report as the status document shows it.
pub fn pipeline_status(p: PipelineProgress) -> PipelineStatus {
    PipelineStatus {
        id: p.id,
        nodes: p.node_ids,
        round: p.round,
        step: p.step,
        loss: p.loss.is_finite().then_some(p.loss),
        tokens: p.tokens,
        state: p.state,
        error: (!p.error.is_empty()).then_some(p.error),
        losses: p
            .losses
            .into_iter()
            .filter(|l| l.loss.is_finite())
            .map(|l| [l.step as f64, l.loss])
            .collect(),
    }
}

/// Polls until the task is dropped; every Driver at once, so a hung one delays nothing.
pub(super) async fn poll_loop(engine: Arc<EngineState>) {
    loop {
        let view = engine.view();
        let mut asks = tokio::task::JoinSet::new();
        for node in view
            .nodes
            .iter()
            .filter(|n| n.start == 0 && n.end > 0 && n.state == NodeState::Live)
        {
            let (engine, endpoint) = (engine.clone(), node.endpoint.clone());
            asks.spawn(async move {
                let answer = tokio::time::timeout(DEADLINE, async {
                    let channel = engine
                        .hops
                        .channel(&endpoint, DEADLINE)
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    StageTrainerClient::new(channel)
                        .progress(ProgressRequest {})
                        .await
                        .map_err(|s| s.message().to_string())
                })
                .await;
                match answer {
                    Ok(Ok(response)) => Some(response.into_inner()),
                    Ok(Err(e)) => {
                        tracing::debug!(%endpoint, error = %e, "training progress");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(%endpoint, "training progress: no answer in time");
                        None
                    }
                }
            });
        }
        let mut progress = TrainingProgress::default();
        while let Some(joined) = asks.join_next().await {
            if let Ok(Some(response)) = joined {
                progress.served_round = progress.served_round.max(response.served_round);
                progress
                    .pipelines
                    .extend(response.pipelines.into_iter().map(pipeline_status));
            }
        }
        progress.pipelines.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(endpoint) = &engine.config.aggregator {
            progress.rounds = match aggregator_rounds(&engine, endpoint).await {
                Some(rounds) => rounds,
                None => engine
                    .progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .rounds
                    .clone(),
            };
        }
        *engine.progress.lock().unwrap_or_else(|p| p.into_inner()) = progress;
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_proto::trainer::v1::LossPoint;

    #[test]
    fn a_report_without_a_step_has_no_loss_and_no_error() {
        let fresh = pipeline_status(PipelineProgress {
            id: "p0".into(),
            loss: f64::NAN,
            state: "waiting".into(),
            ..PipelineProgress::default()
        });
        assert_eq!(fresh.loss, None);
        assert_eq!(fresh.error, None);
        let stepped = pipeline_status(PipelineProgress {
            id: "p1".into(),
            node_ids: vec!["a".into(), "b".into()],
            round: 2,
            step: 5,
            loss: 4.5,
            tokens: 640,
            state: "running".into(),
            error: "stage 1 hung".into(),
            losses: vec![
                LossPoint { step: 1, loss: 5.0 },
                LossPoint {
                    step: 2,
                    loss: f64::INFINITY,
                },
            ],
        });
        assert_eq!(stepped.loss, Some(4.5));
        assert_eq!(stepped.nodes, vec!["a", "b"]);
        assert_eq!(stepped.error.as_deref(), Some("stage 1 hung"));
        assert_eq!(stepped.losses, vec![[1.0, 5.0]]);
    }
}
