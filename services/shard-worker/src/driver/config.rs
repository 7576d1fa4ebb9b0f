//! The `[training]` section of the worker's config: whether this node drives the pipelines it
//! is the first stage of, on which data, with which inner-loop settings.

use std::path::PathBuf;

use neuroshard_common::Error;
use neuroshard_common::pipeline_schedule::Schedule;
use neuroshard_model::schedule::LrSchedule;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Drive every pipeline whose first stage this node is (the StageTrainer service is
    /// served either way: other Drivers use it).
    pub enabled: bool,
    /// Dataset directory from `neuroshard data build` (manifest.json and token shards).
    pub data_dir: Option<PathBuf>,
    /// Inner steps per round (H).
    pub inner_steps: u64,
    /// Sequences per inner step, split into `micro_batches` equal micro-batches.
    pub batch_size: usize,
    pub micro_batches: u32,
    pub seq_len: usize,
    /// `1f1b` (default) or `gpipe`.
    pub schedule: String,
    /// Training shards each pipeline draws its batches from in a round.
    pub shards_per_round: usize,
    /// Peak inner learning rate, warm-up steps and the steps of the cosine decay (counted
    /// over the optimizer's steps, across rounds), and the floor as a share of the peak.
    pub lr: f64,
    pub warmup_steps: u64,
    pub lr_decay_steps: u64,
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip across the pipeline.
    pub grad_clip: f64,
    /// A step that has not finished by then fails: the pipeline ends its round early.
    pub step_deadline_ms: u64,
    /// Pause after a failed round before the next start (a restarted stage, a reassignment).
    pub retry_ms: u64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            data_dir: None,
            inner_steps: 500,
            batch_size: 16,
            micro_batches: 4,
            seq_len: 128,
            schedule: "1f1b".into(),
            shards_per_round: 4,
            lr: 3e-4,
            warmup_steps: 100,
            lr_decay_steps: 10_000,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            step_deadline_ms: 60_000,
            retry_ms: 2_000,
        }
    }
}

impl TrainingConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |m: String| Err(Error::invalid_argument(format!("training.{m}")));
        if self.enabled && self.data_dir.is_none() {
            return fail(
                "data_dir: a node that drives training needs a dataset (training.enabled = true)"
                    .into(),
            );
        }
        if self.inner_steps == 0 {
            return fail("inner_steps must be at least 1".into());
        }
        if self.micro_batches == 0 || self.batch_size == 0 {
            return fail("batch_size and micro_batches must be at least 1".into());
        }
        if !self.batch_size.is_multiple_of(self.micro_batches as usize) {
            return fail(format!(
                "batch_size ({}) must be a multiple of micro_batches ({})",
                self.batch_size, self.micro_batches
            ));
        }
        if self.seq_len == 0 || self.shards_per_round == 0 {
            return fail("seq_len and shards_per_round must be at least 1".into());
        }
        self.schedule()?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail(format!("lr must be positive, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return fail(format!(
                "min_lr_ratio must be in [0, 1], got {}",
                self.min_lr_ratio
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip > 0.0) {
            return fail(format!(
                "grad_clip must be positive, got {}",
                self.grad_clip
            ));
        }
        if self.step_deadline_ms == 0 {
            return fail("step_deadline_ms must be at least 1".into());
        }
        Ok(())
    }

    pub fn schedule(&self) -> Result<Schedule, Error> {
        match self.schedule.as_str() {
            "1f1b" => Ok(Schedule::OneForwardOneBackward),
            "gpipe" => Ok(Schedule::GPipe),
            other => Err(Error::invalid_argument(format!(
                "training.schedule: `{other}` is not a schedule (1f1b or gpipe)"
            ))),
        }
    }

    /// The learning rate of the optimizer's `step` (counted across rounds).
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.lr,
            min_ratio: self.min_lr_ratio,
            warmup_steps: self.warmup_steps.min(self.lr_decay_steps / 2),
            total_steps: self.lr_decay_steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_setting_is_named() {
        TrainingConfig::default().validate().unwrap();
        for (config, field) in [
            (
                TrainingConfig {
                    enabled: true,
                    ..TrainingConfig::default()
                },
                "training.data_dir",
            ),
            (
                TrainingConfig {
                    batch_size: 10,
                    micro_batches: 4,
                    ..TrainingConfig::default()
                },
                "batch_size (10) must be a multiple of micro_batches (4)",
            ),
            (
                TrainingConfig {
                    schedule: "zigzag".into(),
                    ..TrainingConfig::default()
                },
                "`zigzag` is not a schedule",
            ),
            (
                TrainingConfig {
                    lr: f64::NAN,
                    ..TrainingConfig::default()
                },
                "training.lr",
            ),
            (
                TrainingConfig {
                    inner_steps: 0,
                    ..TrainingConfig::default()
                },
                "training.inner_steps",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
