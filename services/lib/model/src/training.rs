//! Single-process training: AdamW (betas 0.9/0.95, decoupled weight decay on matrices only,
//! gradient-norm clipping), warm-up + cosine schedule, periodic held-out loss and
//! checkpoints. This is the baseline the swarm's training is measured against.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::adamw::{AdamW, AdamWConfig, clip_coefficient};
use crate::checkpoint;
use crate::config::ModelConfig;
use crate::data::batches::{BatchSampler, eval_windows, unigram_entropy};
use crate::data::manifest::{Split, TokenShards};
use crate::error::{ModelError, Result};
use crate::schedule::LrSchedule;
use crate::shard::{Shard, ShardSpec};
use crate::tokenizer::TextTokenizer;

/// Hyper-parameters of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub steps: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub min_lr_ratio: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub grad_clip: f64,
    pub eval_every: u64,
    pub eval_windows: usize,
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Each batch runs as this many equal micro-batches whose gradients add up to the
    /// batch's (gradient accumulation: the same step in less memory, and the order a
    /// pipeline of stages computes it in).
    #[serde(default = "one")]
    pub micro_batches: usize,
}

fn one() -> usize {
    1
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 600,
            batch_size: 16,
            seq_len: 128,
            lr: 2e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 50,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: 1.0,
            eval_every: 100,
            eval_windows: 64,
            checkpoint_every: 200,
            seed: 0,
            micro_batches: 1,
        }
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 || self.seq_len == 0 {
            return Err(ModelError::Training(
                "steps, batch_size and seq_len must be positive".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ModelError::Training(format!(
                "lr must be positive, got {}",
                self.lr
            )));
        }
        if self.micro_batches == 0 || !self.batch_size.is_multiple_of(self.micro_batches) {
            return Err(ModelError::Training(format!(
                "micro_batches ({}) must divide batch_size ({})",
                self.micro_batches, self.batch_size
            )));
        }
        Ok(())
    }

    /// The optimizer's hyper-parameters (the learning rate follows [`Self::schedule`]).
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: 1e-8,
            weight_decay: self.weight_decay,
        }
    }

    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.lr,
            min_ratio: self.min_lr_ratio,
            warmup_steps: self.warmup_steps.min(self.steps / 2),
            total_steps: self.steps,
        }
    }
}

/// AdamW over a full-model shard.
#[derive(Debug)]
pub struct Trainer {
    model: Shard,
    optimizer: AdamW,
    micro_batches: usize,
    schedule: LrSchedule,
    grad_clip: f64,
    step: u64,
}

impl Trainer {
    pub fn new(model: Shard, options: &TrainOptions) -> Result<Self> {
        options.validate()?;
        let optimizer = AdamW::new(model.var_store(), options.adamw());
        Ok(Self {
            model,
            optimizer,
            micro_batches: options.micro_batches,
            schedule: options.schedule(),
            grad_clip: options.grad_clip,
            step: 0,
        })
    }

    pub fn model(&self) -> &Shard {
        &self.model
    }

    pub fn into_model(self) -> Shard {
        self.model
    }

    pub fn step_index(&self) -> u64 {
        self.step
    }

    /// The optimizer, whose moments a test compares with a pipeline's.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// One optimizer step on tokens [batch, seq + 1]; returns (loss in nats, learning rate).
    pub fn step(&mut self, tokens: &Tensor) -> Result<(f64, f64)> {
        let lr = self.schedule.at(self.step);
        let rows = tokens.size().first().copied().unwrap_or(0);
        let parts = self.micro_batches as i64;
        if rows == 0 || rows % parts != 0 {
            return Err(ModelError::InvalidInput(format!(
                "tokens: {rows} rows do not split into {parts} equal micro-batches"
            )));
        }
        self.optimizer.zero_grad();
        // Each micro-batch's mean loss / parts: the gradients add up to the batch mean's.
        let mut value = 0.0;
        for part in tokens.split(rows / parts, 0) {
            let loss = self.model.loss(&part)?;
            let part_value = loss.double_value(&[]);
            if !part_value.is_finite() {
                self.optimizer.zero_grad();
                return Err(ModelError::Training(format!(
                    "loss became {part_value} at step {}",
                    self.step
                )));
            }
            (loss / parts as f64).backward();
            value += part_value / parts as f64;
        }
        let clip = clip_coefficient(self.optimizer.squared_grad_norm(), self.grad_clip);
        self.optimizer.scale_grads(clip);
        self.optimizer.step(lr)?;
        self.step += 1;
        Ok((value, lr))
    }

    /// Mean loss over evaluation windows (each `seq + 1` tokens), without gradients.
    pub fn evaluate(&self, windows: &[Vec<i64>], batch_size: usize) -> Result<f64> {
        evaluate(&self.model, windows, batch_size)
    }
}

/// Mean next-token loss of a full-model shard over `windows`, in batches.
pub fn evaluate(model: &Shard, windows: &[Vec<i64>], batch_size: usize) -> Result<f64> {
    if windows.is_empty() {
        return Err(ModelError::Training("no evaluation windows".into()));
    }
    let _guard = tch::no_grad_guard();
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in windows.chunks(batch_size.max(1)) {
        let flat: Vec<i64> = chunk.iter().flatten().copied().collect();
        let tokens = Tensor::from_slice(&flat).view([chunk.len() as i64, -1]);
        total += model.loss(&tokens)?.double_value(&[]) * chunk.len() as f64;
        count += chunk.len();
    }
    Ok(total / count as f64)
}

/// Progress of a run, reported as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    Started {
        parameters: i64,
        train_tokens: u64,
        validation_tokens: u64,
        unigram_entropy: f64,
    },
    Step {
        step: u64,
        loss: f64,
        lr: f64,
        tokens_per_second: f64,
    },
    Evaluated {
        step: u64,
        validation_loss: f64,
    },
    Checkpointed {
        step: u64,
    },
}

/// Summary of a finished run, also written to `training.json` in the output directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: u64,
    pub parameters: i64,
    pub unigram_entropy: f64,
    pub final_train_loss: f64,
    pub final_validation_loss: f64,
    /// (step, held-out loss) at every evaluation.
    pub validation_history: Vec<(u64, f64)>,
    /// (step, mean training loss over the preceding steps), every [`TRAIN_LOG_EVERY`] steps
    /// and at the end; the loss curve the dashboard draws. Absent in older reports.
    #[serde(default)]
    pub train_history: Vec<(u64, f64)>,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub options: TrainOptions,
}

pub use neuroshard_common::checkpoint_files::TRAINING_REPORT_FILE;

/// Steps averaged into one point of [`TrainReport::train_history`].
pub const TRAIN_LOG_EVERY: u64 = 10;

/// Trains a model on the dataset in `data_dir` and writes checkpoints to `out_dir`. The model
/// starts from `init` (a checkpoint directory) or from `config` initialised with the seed.
pub fn train(
    data_dir: &Path,
    out_dir: &Path,
    config: &ModelConfig,
    init: Option<&Path>,
    options: &TrainOptions,
    device: Device,
    mut on_event: impl FnMut(&TrainEvent),
) -> Result<TrainReport> {
    options.validate()?;
    let shards = TokenShards::open(data_dir)?;
    let manifest = &shards.manifest;
    let tokenizer = TextTokenizer::from_file(&data_dir.join(checkpoint::TOKENIZER_FILE))?;
    if tokenizer.sha256()? != manifest.tokenizer_sha256 {
        return Err(ModelError::Data(
            "tokenizer.json does not match the manifest".into(),
        ));
    }
    let train_tokens = shards.load_split(Split::Train)?;
    let validation_tokens = shards.load_split(Split::Validation)?;
    let entropy = unigram_entropy(&train_tokens);
    let windows = eval_windows(&validation_tokens, options.seq_len, options.eval_windows);
    if windows.is_empty() {
        return Err(ModelError::Data(format!(
            "the validation split has {} tokens, fewer than one window of {}",
            validation_tokens.len(),
            options.seq_len + 1
        )));
    }
    let model = match init {
        Some(dir) => checkpoint::load_shard(
            dir,
            ShardSpec::full(checkpoint::read_config(dir)?.num_layers),
            device,
            Kind::Float,
        )?,
        None => {
            let mut model = Shard::new(
                config,
                ShardSpec::full(config.num_layers),
                device,
                Kind::Float,
            )?;
            crate::init::initialize(&mut model, options.seed)?;
            model
        }
    };
    let model_config = model.config().clone();
    if model_config.vocab_size < i64::from(manifest.vocab_size) {
        return Err(ModelError::InvalidConfig(format!(
            "model vocab_size {} is smaller than the dataset's {}",
            model_config.vocab_size, manifest.vocab_size
        )));
    }
    if options.seq_len as i64 > model_config.max_seq_len {
        return Err(ModelError::InvalidConfig(format!(
            "seq_len {} exceeds the model's max_seq_len {}",
            options.seq_len, model_config.max_seq_len
        )));
    }
    let parameters = model.num_parameters();
    on_event(&TrainEvent::Started {
        parameters,
        train_tokens: train_tokens.len() as u64,
        validation_tokens: validation_tokens.len() as u64,
        unigram_entropy: entropy,
    });
    let sampler = BatchSampler::new(
        train_tokens,
        manifest,
        options.seq_len,
        options.batch_size,
        0,
    )?;
    let tokenizer_json = tokenizer.to_json()?;
    let save = |model: &Shard| {
        checkpoint::save(
            out_dir,
            model,
            Some(&tokenizer_json),
            i64::from(tokenizer.eos_id()),
        )
    };

    let mut trainer = Trainer::new(model, options)?;
    let started = Instant::now();
    let mut history = Vec::new();
    let mut last_loss = f64::NAN;
    let mut train_history = Vec::new();
    let (mut window_sum, mut window_len) = (0.0, 0u64);
    let tokens_per_step = (options.batch_size * options.seq_len) as f64;
    for step in 0..options.steps {
        let batch = sampler.batch(0, step);
        let tokens = Tensor::from_slice(&batch).view([options.batch_size as i64, -1]);
        let step_started = Instant::now();
        let (loss, lr) = trainer.step(&tokens)?;
        last_loss = loss;
        window_sum += loss;
        window_len += 1;
        on_event(&TrainEvent::Step {
            step: step + 1,
            loss,
            lr,
            tokens_per_second: tokens_per_step / step_started.elapsed().as_secs_f64(),
        });
        let done = step + 1 == options.steps;
        if (step + 1) % TRAIN_LOG_EVERY == 0 || done {
            train_history.push((step + 1, window_sum / window_len.max(1) as f64));
            (window_sum, window_len) = (0.0, 0);
        }
        if (step + 1) % options.eval_every.max(1) == 0 || done {
            let validation_loss = trainer.evaluate(&windows, options.batch_size)?;
            history.push((step + 1, validation_loss));
            on_event(&TrainEvent::Evaluated {
                step: step + 1,
                validation_loss,
            });
        }
        if (step + 1) % options.checkpoint_every.max(1) == 0 || done {
            save(trainer.model())?;
            on_event(&TrainEvent::Checkpointed { step: step + 1 });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = TrainReport {
        steps: options.steps,
        parameters,
        unigram_entropy: entropy,
        final_train_loss: last_loss,
        final_validation_loss: history.last().map_or(f64::NAN, |h| h.1),
        validation_history: history,
        train_history,
        seconds,
        tokens_per_second: tokens_per_step * options.steps as f64 / seconds,
        options: options.clone(),
    };
    checkpoint::write_json(&out_dir.join(TRAINING_REPORT_FILE), &report)?;
    Ok(report)
}
