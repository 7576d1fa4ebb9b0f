//! `neuroshard bench train-step`: time per training step (forward, loss, backward, clip,
//! AdamW) of a freshly initialised model on fixed random tokens. Prints JSON so a script can
//! set it beside a baseline measured the same way.

use std::time::Instant;

use clap::{Args, Subcommand};
use neuroshard_model::device::parse_device;
use neuroshard_model::init::initialize;
use neuroshard_model::tch::{Kind, Tensor};
use neuroshard_model::training::{TrainOptions, Trainer};
use neuroshard_model::{Shard, ShardSpec};

use crate::ModelShapeArgs;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Milliseconds per training step.
    TrainStep(TrainStepArgs),
}

#[derive(Debug, Args)]
pub struct TrainStepArgs {
    #[command(flatten)]
    pub shape: ModelShapeArgs,
    #[arg(long, default_value_t = 4096)]
    pub vocab: i64,
    #[arg(long = "batch-size", default_value_t = 16)]
    pub batch_size: i64,
    #[arg(long = "seq-len", default_value_t = 128)]
    pub seq_len: i64,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long)]
    pub threads: Option<i32>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainStep(args) => train_step(args),
    }
}

fn train_step(args: TrainStepArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        neuroshard_model::tch::set_num_threads(threads);
    }
    let config = args.shape.config(args.vocab, args.seq_len + 1);
    let device = parse_device(&args.device)?;
    let mut model = Shard::new(
        &config,
        ShardSpec::full(config.num_layers),
        device,
        Kind::Float,
    )?;
    initialize(&mut model, 0)?;
    let parameters = model.num_parameters();
    let options = TrainOptions {
        lr: 1e-4,
        warmup_steps: 0,
        steps: (args.warmup + args.steps) as u64,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(model, &options)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<i64> = (0..args.batch_size * (args.seq_len + 1))
        .map(|_| rng.random_range(0..args.vocab))
        .collect();
    let tokens = Tensor::from_slice(&ids)
        .view([args.batch_size, args.seq_len + 1])
        .to_device(device);
    let mut times = Vec::with_capacity(args.steps);
    for i in 0..args.warmup + args.steps {
        let started = Instant::now();
        trainer.step(&tokens)?;
        if device.is_cuda() {
            neuroshard_model::tch::Cuda::synchronize(0);
        }
        if i >= args.warmup {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!(
        "{}",
        json!({
            "impl": "neuroshard",
            "median_ms": median,
            "mean_ms": mean,
            "steps": times.len(),
            "threads": neuroshard_model::tch::get_num_threads(),
            "parameters": parameters,
        })
    );
    Ok(())
}
