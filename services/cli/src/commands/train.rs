//! `neuroshard train`: single-process training with a progress bar.

use std::path::PathBuf;

use crate::ModelShapeArgs;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use neuroshard_model::data::Manifest;
use neuroshard_model::device::parse_device;
use neuroshard_model::training::{TrainEvent, TrainOptions, train};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset directory (from `neuroshard data build`).
    #[arg(long)]
    pub data: PathBuf,
    /// Checkpoint directory to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    #[arg(long = "batch-size", default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long = "seq-len", default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long = "warmup-steps", default_value_t = 50)]
    pub warmup_steps: u64,
    #[arg(long = "eval-every", default_value_t = 100)]
    pub eval_every: u64,
    #[arg(long = "checkpoint-every", default_value_t = 200)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start from this checkpoint instead of a fresh model.
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub shape: ModelShapeArgs,
    /// auto (CUDA when available), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        neuroshard_model::tch::set_num_threads(threads);
    }
    let manifest = Manifest::read(&args.data)?;
    let config = args.shape.config(
        i64::from(manifest.vocab_size),
        (args.seq_len as i64).max(256),
    );
    let options = TrainOptions {
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        seed: args.seed,
        ..TrainOptions::default()
    };
    let device = parse_device(&args.device)?;
    let bar = ProgressBar::new(args.steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")?
            .progress_chars("=> "),
    );
    // `suspend` rather than `println`: the bar hides itself off a terminal, the lines must not.
    let say = |line: String| bar.suspend(|| println!("{line}"));
    let mut entropy = f64::NAN;
    let mut last_validation = f64::NAN;
    let report = train(
        &args.data,
        &args.out,
        &config,
        args.init.as_deref(),
        &options,
        device,
        |event| match event {
            TrainEvent::Started {
                parameters,
                train_tokens,
                validation_tokens,
                unigram_entropy,
            } => {
                entropy = *unigram_entropy;
                say(format!(
                    "training {parameters} parameters on {train_tokens} tokens ({validation_tokens} held out); \
                 unigram entropy {unigram_entropy:.3} nats; device {device:?}"
                ));
            }
            TrainEvent::Step {
                step,
                loss,
                tokens_per_second,
                ..
            } => {
                bar.set_position(*step);
                bar.set_message(format!(
                    "loss {loss:.3}  held-out {last_validation:.3}  {tokens_per_second:.0} tok/s"
                ));
            }
            TrainEvent::Evaluated {
                step,
                validation_loss,
            } => {
                last_validation = *validation_loss;
                say(format!(
                    "step {step:>6}  held-out loss {validation_loss:.4} (unigram {entropy:.3})"
                ));
            }
            TrainEvent::Checkpointed { step } => {
                say(format!(
                    "step {step:>6}  checkpoint written to {}",
                    args.out.display()
                ));
            }
        },
    )?;
    bar.finish_and_clear();
    println!(
        "done: {} steps in {:.0}s ({:.0} tok/s); held-out loss {:.4} vs unigram entropy {:.4} nats; checkpoint in {}",
        report.steps,
        report.seconds,
        report.tokens_per_second,
        report.final_validation_loss,
        report.unigram_entropy,
        args.out.display()
    );
    Ok(())
}
