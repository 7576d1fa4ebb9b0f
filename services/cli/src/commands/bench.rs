//! `neuroshard bench train-step | decode`: time per training step (forward, loss, backward,
//! clip, AdamW) of a freshly initialised model on fixed random tokens, and the greedy decode
//! rate of a checkpoint with the KV cache. Both print JSON so a script can set them beside a
//! baseline measured the same way, on CPU or CUDA, in f32, bf16 or f16.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::{Args, Subcommand};
use neuroshard_model::checkpoint;
use neuroshard_model::device::{parse_device, parse_dtype};
use neuroshard_model::generate::{GenerateOptions, generate};
use neuroshard_model::init::initialize;
use neuroshard_model::sampling::SamplingParams;
use neuroshard_model::tch::{Device, Tensor};
use neuroshard_model::training::{TrainOptions, Trainer};
use neuroshard_model::{Shard, ShardSpec};

use crate::{ModelShapeArgs, RuntimeArgs};
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Milliseconds per training step.
    TrainStep(TrainStepArgs),
    /// Greedy decode tokens/s of a checkpoint (one position per step, KV cache).
    Decode(DecodeArgs),
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
    /// auto (CUDA when available), cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Kind of the weights, gradients and optimizer state: f32 (what `neuroshard train`
    /// uses), bf16 or f16. The loss is computed in f32 either way.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Checkpoint directory (as `neuroshard model init` or `neuroshard train` writes it).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Prompt length in tokens (seeded random ids, run as one prefill).
    #[arg(long = "prompt-len", default_value_t = 32)]
    pub prompt_len: usize,
    /// Tokens generated per round; the rate is timed from the first to the last of them.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Untimed rounds first (kernel selection, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long)]
    pub threads: Option<i32>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainStep(args) => train_step(args),
        BenchCommand::Decode(args) => decode(args),
    }
}

/// Waits for the device's queued kernels, so a host clock read after it covers them.
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        neuroshard_model::tch::Cuda::synchronize(index as i64);
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn train_step(args: TrainStepArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        neuroshard_model::tch::set_num_threads(threads);
    }
    let config = args.shape.config(args.vocab, args.seq_len + 1);
    let device = parse_device(&args.device)?;
    let kind = parse_dtype(&args.dtype)?;
    let mut model = Shard::new(&config, ShardSpec::full(config.num_layers), device, kind)?;
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
        synchronize(device);
        if i >= args.warmup {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let steps = times.len();
    let median_ms = median(times);
    // Tokens trained on per step: every input position predicts its next token.
    let tokens_per_step = args.batch_size * args.seq_len;
    println!(
        "{}",
        json!({
            "impl": "neuroshard",
            "median_ms": median_ms,
            "mean_ms": mean,
            "steps": steps,
            "threads": neuroshard_model::tch::get_num_threads(),
            "parameters": parameters,
            "device": args.device,
            "dtype": args.dtype,
            "tokens_per_step": tokens_per_step,
            "tokens_per_s": tokens_per_step as f64 / (median_ms / 1e3),
        })
    );
    Ok(())
}

fn decode(args: DecodeArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        neuroshard_model::tch::set_num_threads(threads);
    }
    if args.tokens < 2 {
        bail!("--tokens must be at least 2: the rate is timed from the first token to the last");
    }
    if args.prompt_len == 0 || args.rounds == 0 {
        bail!("--prompt-len and --rounds must be at least 1");
    }
    let config = checkpoint::read_config(&args.checkpoint)?;
    if (args.prompt_len + args.tokens) as i64 > config.max_seq_len {
        bail!(
            "--prompt-len {} + --tokens {} exceed the checkpoint's context of {}",
            args.prompt_len,
            args.tokens,
            config.max_seq_len
        );
    }
    let (model, device) = args.runtime.load_full_model(&args.checkpoint, &config)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let prompt: Vec<u32> = (0..args.prompt_len)
        .map(|_| rng.random_range(0..config.vocab_size as u32))
        .collect();
    let options = GenerateOptions {
        max_tokens: args.tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop_token: None,
    };
    let mut prefill_ms = Vec::with_capacity(args.rounds);
    let mut rates = Vec::with_capacity(args.rounds);
    for round in 0..args.warmup + args.rounds {
        synchronize(device);
        let started = Instant::now();
        let mut stamps = Vec::with_capacity(args.tokens);
        // Each token reaches the callback after its logits were copied to the host, so the
        // device's work for it is done when the stamp is taken.
        generate(&model, &prompt, &options, |_| {
            stamps.push(Instant::now());
            Ok(())
        })?;
        if round < args.warmup {
            continue;
        }
        let (Some(&first), Some(&last)) = (stamps.first(), stamps.last()) else {
            bail!("generation stopped before its first token");
        };
        if stamps.len() != args.tokens {
            bail!(
                "generated {} tokens, asked for {}",
                stamps.len(),
                args.tokens
            );
        }
        // The first token closes the prefill; each later one is a one-position decode step.
        prefill_ms.push((first - started).as_secs_f64() * 1e3);
        rates.push((stamps.len() - 1) as f64 / (last - first).as_secs_f64());
    }
    println!(
        "{}",
        json!({
            "impl": "neuroshard",
            "device": args.runtime.device,
            "dtype": args.runtime.dtype,
            "parameters": model.num_parameters(),
            "prompt_tokens": args.prompt_len,
            "decode_tokens": args.tokens,
            "rounds": args.rounds,
            "threads": neuroshard_model::tch::get_num_threads(),
            "prefill_ms": median(prefill_ms),
            "decode_tokens_per_s": median(rates),
        })
    );
    Ok(())
}
