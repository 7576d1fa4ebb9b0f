//! The Driver: a pipeline's first stage (the node holding the embedding) runs its training.
//! It follows the registry's pipelines, and for the one that starts with this node it runs
//! rounds: start every stage from the round's global weights, H inner steps on the data its
//! replica index selects, end the round (each stage then holds Δ = θ_start − θ_end for the
//! aggregator). A step that fails or passes its deadline ends the round early and is
//! reported (log and [`progress`]); so does a change of the pipeline's nodes or spans. The
//! next round starts when the pipeline is whole and live again.
//!
//! - [`config`]: the `[training]` settings; [`data`]: a round's verified shards and batches;
//! - [`pipeline`]: one pipeline's stages over gRPC (a step's schedule, global clipping,
//!   deadlines); [`progress`]: what the `Progress` RPC reports;
//! - this file: the loop, and [`driven_pipeline`], which pipeline a node drives (pure).

pub mod config;
pub mod data;
pub mod pipeline;
pub mod progress;

use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::growth::ArchitectureState;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{AssignmentSnapshot, GetAssignmentRequest, NodeState};
use neuroshard_runtime::tls::TlsFiles;
use tokio::sync::watch;

pub use config::TrainingConfig;
use data::RoundData;
use pipeline::{PipelineRun, StageAddress, StepPlan};
use progress::{DriverProgress, FAILED, RUNNING, WAITING};

/// The pipeline `node_id` drives in `snapshot`: the one it is the first stage of. Returns its
/// index (the replica its data is drawn for) and its stages in layer order.
pub fn driven_pipeline(
    snapshot: &AssignmentSnapshot,
    node_id: &str,
) -> Option<(u64, Vec<StageAddress>)> {
    let (replica, pipeline) = snapshot
        .pipelines
        .iter()
        .enumerate()
        .find(|(_, p)| p.node_ids.first().map(String::as_str) == Some(node_id))?;
    let stages = pipeline
        .node_ids
        .iter()
        .map(|id| {
            let node = snapshot.nodes.iter().find(|n| &n.node_id == id)?;
            let span = node.span?;
            Some(StageAddress {
                node_id: id.clone(),
                endpoint: node.endpoint.clone(),
                span: (span.start, span.end),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((replica as u64, stages))
}

/// Stages of `stages` that `snapshot` does not show live.
pub fn not_live(snapshot: &AssignmentSnapshot, stages: &[StageAddress]) -> Vec<String> {
    stages
        .iter()
        .filter(|s| {
            !snapshot
                .nodes
                .iter()
                .any(|n| n.node_id == s.node_id && n.state == NodeState::Live as i32)
        })
        .map(|s| s.node_id.clone())
        .collect()
}

/// A Driver for this node.
#[derive(Debug)]
pub struct Driver {
    pub node_id: String,
    /// The registry's URL, dialled with `tls` (and again until it answers).
    pub registry: String,
    pub tls: TlsFiles,
    pub config: TrainingConfig,
    pub max_message_bytes: usize,
    pub progress: Arc<DriverProgress>,
    /// The aggregators whose rounds the Driver follows (round number, H, the weights every
    /// stage must serve first), and to which the stages submit Δ. Without any, rounds are
    /// numbered locally and Δ stays on the stages.
    pub aggregators: Option<Arc<neuroshard_worker_client::aggregator::Aggregators>>,
}

/// How long ending a failed round waits for each stage (a hung one never answers).
const ABANDON_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the Driver reads the registry's assignment.
const ASSIGNMENT_POLL: Duration = Duration::from_millis(500);

impl Driver {
    /// Runs rounds until the task is dropped.
    pub async fn run(self) {
        let retry = Duration::from_millis(self.config.retry_ms.max(100));
        let mut registry = loop {
            match self.tls.connect(&self.registry).await {
                Ok(channel) => break LayerRegistryClient::new(channel),
                Err(e) => {
                    tracing::warn!(error = %e, "driver: connecting to the registry");
                    tokio::time::sleep(retry).await;
                }
            }
        };
        let (tx, mut assignments) = watch::channel::<Option<Arc<AssignmentSnapshot>>>(None);
        let poller = tokio::spawn(async move {
            loop {
                match registry.get_assignment(GetAssignmentRequest {}).await {
                    Ok(snapshot) => {
                        // The Driver is gone (its task ended or was aborted): so is this.
                        if tx.send(Some(Arc::new(snapshot.into_inner()))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e.message(), "driver: reading the assignment")
                    }
                }
                tokio::time::sleep(ASSIGNMENT_POLL).await;
            }
        });
        let mut round = 0u64;
        let mut total_steps = 0u64;
        loop {
            let snapshot = assignments.borrow_and_update().clone();
            let outcome = match snapshot {
                Some(snapshot) => {
                    self.round(&snapshot, &mut assignments, &mut round, &mut total_steps)
                        .await
                }
                None => Outcome::Wait,
            };
            if outcome != Outcome::Done {
                // A failed or impossible round: wait for the swarm to change (a restart, a
                // reassignment) before trying again.
                tokio::time::sleep(retry).await;
            }
            if poller.is_finished() {
                tracing::error!("driver: the assignment poller stopped");
                return;
            }
        }
    }

    /// One round of the pipeline this node drives in `snapshot`, if any.
    async fn round(
        &self,
        snapshot: &AssignmentSnapshot,
        assignments: &mut watch::Receiver<Option<Arc<AssignmentSnapshot>>>,
        round: &mut u64,
        total_steps: &mut u64,
    ) -> Outcome {
        let Some((replica, stages)) = driven_pipeline(snapshot, &self.node_id) else {
            self.progress.retain(&[]);
            return Outcome::Wait;
        };
        let id = format!("p{replica}");
        self.progress.retain(std::slice::from_ref(&id));
        self.progress.update(&id, |p| {
            p.node_ids = stages.iter().map(|s| s.node_id.clone()).collect();
        });
        let fail = |message: String| {
            tracing::warn!(pipeline = %id, error = %message, "driver: round ended early");
            self.progress.update(&id, |p| {
                p.state = FAILED.into();
                p.error = message;
            });
            Outcome::Failed
        };
        let absent = not_live(snapshot, &stages);
        if !absent.is_empty() {
            self.progress.update(&id, |p| p.state = WAITING.into());
            return Outcome::Wait;
        }
        let Some((vocab_size, hidden_size)) = snapshot
            .architecture
            .as_ref()
            .and_then(|a| ArchitectureState::from_proto(a).ok())
            .map(|a| (a.config.vocab_size, a.config.hidden_size))
        else {
            return Outcome::Wait;
        };
        let Some(dir) = self.config.data_dir.clone() else {
            return fail("training.data_dir is not set".into());
        };
        // The round to train: the aggregators' open one, once every stage serves the weights
        // it starts from; without aggregators, the next local number.
        let (this_round, inner_steps, weights_round) = match &self.aggregators {
            Some(aggregators) => match aggregators.round().await {
                Ok(state) if state.round > *round => {
                    (state.round, state.inner_steps, Some(state.weights_round))
                }
                Ok(_) => {
                    // This pipeline has done the open round; the others may not have.
                    self.progress.update(&id, |p| p.state = WAITING.into());
                    return Outcome::Wait;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "driver: reading the aggregators' round");
                    self.progress.update(&id, |p| p.state = WAITING.into());
                    return Outcome::Wait;
                }
            },
            None => {
                *round += 1;
                (*round, self.config.inner_steps, None)
            }
        };
        let deadline = Duration::from_millis(self.config.step_deadline_ms);
        let run =
            match PipelineRun::connect(stages.clone(), &self.tls, self.max_message_bytes, deadline)
                .await
            {
                Ok(run) => run,
                Err(f) => return fail(format!("round {this_round}: {f}")),
            };
        let mut run = run;
        if let Some(wanted) = weights_round {
            match run.served_rounds(deadline).await {
                Ok(served) if served.iter().all(|&r| r == wanted) => {}
                Ok(served) => {
                    tracing::debug!(pipeline = %id, round = this_round, ?served, wanted, "driver: stages are loading the round's weights");
                    self.progress.update(&id, |p| p.state = WAITING.into());
                    return Outcome::Wait;
                }
                Err(f) => return fail(format!("round {this_round}: {f}")),
            }
        }
        // Read (and hash) the round's shards only once the stages are ready for it: a Driver
        // waiting for the weights to load would otherwise read them again at every retry.
        let config = self.config.clone();
        let data = tokio::task::spawn_blocking(move || {
            RoundData::load(
                &dir,
                this_round,
                replica,
                config.shards_per_round,
                config.seq_len,
                config.batch_size,
                vocab_size,
            )
        })
        .await;
        let data = match data {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => return fail(format!("round {this_round}: data: {e}")),
            Err(e) => return fail(format!("round {this_round}: data task: {e}")),
        };
        let optimizer_steps = match run
            .start_round(this_round, &id, false, weights_round, deadline)
            .await
        {
            Ok(steps) => steps,
            Err(f) => {
                // Reported first: ending the round waits on stages that may not answer.
                let outcome = fail(format!("round {this_round}: {f}"));
                run.abandon(ABANDON_TIMEOUT).await;
                return outcome;
            }
        };
        tracing::info!(pipeline = %id, round = this_round, replica, shards = ?data.shard_ids, stages = stages.len(), "driver: round started");
        self.progress.update(&id, |p| {
            p.round = this_round;
            p.step = 0;
            p.state = RUNNING.into();
            p.error.clear();
        });
        let plan = StepPlan {
            schedule: match self.config.schedule() {
                Ok(s) => s,
                Err(e) => return fail(e.to_string()),
            },
            micro_batches: self.config.micro_batches,
            grad_clip: self.config.grad_clip,
            deadline,
            hidden_size: usize::try_from(hidden_size).unwrap_or(usize::MAX),
        };
        let lr = self.config.lr_schedule();
        let mut tokens = 0u64;
        for step in 0..inner_steps {
            // The pipeline's nodes or spans changed (a death, a reassignment, growth): the
            // round is over for it.
            let now = assignments.borrow_and_update().clone();
            if let Some(now) = now
                && driven_pipeline(&now, &self.node_id).map(|(_, s)| s) != Some(stages.clone())
            {
                let outcome = fail(format!(
                    "round {this_round}: the pipeline changed at step {step}; the round ended early"
                ));
                run.abandon(ABANDON_TIMEOUT).await;
                return outcome;
            }
            let batch = data.batch(step);
            match run
                .step(
                    step,
                    &batch,
                    data.rows(),
                    lr.at(optimizer_steps + step),
                    &plan,
                )
                .await
            {
                Ok(report) => {
                    *total_steps += 1;
                    tokens += report.tokens;
                    self.progress
                        .stepped(&id, step + 1, report.loss, report.tokens, *total_steps);
                    tracing::debug!(pipeline = %id, round = this_round, step, loss = report.loss, clip = report.clip_coefficient, ms = report.wall.as_millis() as u64, "driver: step");
                }
                Err(f) => {
                    let outcome = fail(format!("round {this_round}, step {step}: {f}"));
                    run.abandon(ABANDON_TIMEOUT).await;
                    return outcome;
                }
            }
        }
        let submit = self.aggregators.is_some();
        if submit {
            // Done with this round whatever the submission's fate: the aggregators' round
            // moves on without a pipeline that failed to submit.
            *round = this_round;
        }
        let sent = match run.end_round(deadline, submit, tokens).await {
            Ok(sent) => sent,
            Err(f) => return fail(format!("round {this_round}: {f}")),
        };
        tracing::info!(pipeline = %id, round = this_round, steps = inner_steps, tokens, submitted_bytes = sent, "driver: round ended");
        self.progress.update(&id, |p| p.state = WAITING.into());
        Outcome::Done
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Wait,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_proto::common::v1::LayerSpan;
    use neuroshard_proto::registry::v1::{NodeAssignment, Pipeline};

    fn node(id: &str, start: u32, end: u32, state: NodeState) -> NodeAssignment {
        NodeAssignment {
            node_id: id.into(),
            endpoint: format!("https://{id}:7500"),
            state: state as i32,
            span: Some(LayerSpan { start, end }),
            ..NodeAssignment::default()
        }
    }

    #[test]
    fn a_node_drives_the_pipeline_it_starts_and_its_index_is_the_replica() {
        let snapshot = AssignmentSnapshot {
            nodes: vec![
                node("a", 0, 2, NodeState::Live),
                node("b", 2, 4, NodeState::Live),
                node("c", 0, 2, NodeState::Live),
                node("d", 2, 4, NodeState::Suspect),
            ],
            pipelines: vec![
                Pipeline {
                    node_ids: vec!["a".into(), "b".into()],
                },
                Pipeline {
                    node_ids: vec!["c".into(), "d".into()],
                },
            ],
            ..AssignmentSnapshot::default()
        };
        let (replica, stages) = driven_pipeline(&snapshot, "c").unwrap();
        assert_eq!(replica, 1);
        assert_eq!(
            stages
                .iter()
                .map(|s| (s.node_id.as_str(), s.span))
                .collect::<Vec<_>>(),
            vec![("c", (0, 2)), ("d", (2, 4))]
        );
        assert_eq!(stages[1].endpoint, "https://d:7500");
        assert_eq!(not_live(&snapshot, &stages), vec!["d".to_string()]);
        assert!(not_live(&snapshot, &driven_pipeline(&snapshot, "a").unwrap().1).is_empty());
        // A later stage drives nothing.
        assert!(driven_pipeline(&snapshot, "b").is_none());
        assert!(driven_pipeline(&snapshot, "z").is_none());
    }
}
