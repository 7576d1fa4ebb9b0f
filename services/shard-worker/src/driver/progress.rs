//! What the Driver reports about its pipelines, read by the `Progress` RPC (and from there by
//! the gateway's status document). Written by the Driver's loop only.

use std::sync::{Mutex, PoisonError};

use neuroshard_proto::trainer::v1::{LossPoint, PipelineProgress, ProgressResponse};

/// Loss points kept per pipeline for the dashboard's plot.
pub const LOSS_HISTORY: usize = 600;

pub const RUNNING: &str = "running";
pub const WAITING: &str = "waiting";
pub const FAILED: &str = "failed";

#[derive(Debug, Default)]
pub struct DriverProgress {
    pipelines: Mutex<Vec<PipelineProgress>>,
}

impl DriverProgress {
    pub fn snapshot(&self) -> ProgressResponse {
        ProgressResponse {
            pipelines: self
                .pipelines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            served_round: 0,
        }
    }

    /// Changes pipeline `id`'s entry (made when missing).
    pub fn update(&self, id: &str, change: impl FnOnce(&mut PipelineProgress)) {
        let mut pipelines = self
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let index = match pipelines.iter().position(|p| p.id == id) {
            Some(i) => i,
            None => {
                pipelines.push(PipelineProgress {
                    id: id.to_string(),
                    loss: f64::NAN,
                    state: WAITING.into(),
                    ..PipelineProgress::default()
                });
                pipelines.len() - 1
            }
        };
        change(&mut pipelines[index]);
        let losses = &mut pipelines[index].losses;
        if losses.len() > LOSS_HISTORY {
            let excess = losses.len() - LOSS_HISTORY;
            losses.drain(..excess);
        }
    }

    /// Records a finished step.
    pub fn stepped(&self, id: &str, step: u64, loss: f64, tokens: u64, total_steps: u64) {
        self.update(id, |p| {
            p.step = step;
            p.loss = loss;
            p.tokens += tokens;
            p.state = RUNNING.into();
            p.losses.push(LossPoint {
                step: total_steps,
                loss,
            });
        });
    }

    /// Forgets every pipeline but `keep` (this node no longer drives the others).
    pub fn retain(&self, keep: &[String]) {
        self.pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| keep.contains(&p.id));
    }
}
