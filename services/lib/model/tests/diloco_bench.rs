//! Benchmark: DiLoCo (K = 4 replicas, H = 50, mean rule, outer Nesterov lr 0.7 / 0.9) against
//! synchronous data-parallel training (one step on all K replicas' batches, gradients
//! all-reduced every step) and against the single-process trainer, on the default corpus with
//! the small NeuroLLM and the same token budget; the final held-out loss of each, and the
//! bytes each sends.
//!
//! Run: NEUROSHARD_BENCH_DATA=<dataset dir> scripts/cargo.sh test --release -p neuroshard-model --test diloco_bench -- --ignored --nocapture
//! (NEUROSHARD_BENCH_ROUNDS, NEUROSHARD_BENCH_BATCH (rows per replica step, default 8),
//! NEUROSHARD_BENCH_OUTER="lr,momentum", NEUROSHARD_BENCH_LR (the
//! replicas' and the single process's AdamW peak, default 2e-3), NEUROSHARD_BENCH_DP_LR
//! (data-parallel's, default the same), NEUROSHARD_BENCH_RUN="diloco,dp,single" (which of
//! the three to run) and NEUROSHARD_BENCH_WARM_START=steps vary it; with a warm
//! start, all three begin from the single-process trainer's weights after that many steps on
//! data no round draws, as the DiLoCo paper's runs begin from a pretrained model;
//! NEUROSHARD_BENCH_INNER_WARMUP sets the inner optimizers' warm-up steps, default 20;
//! NEUROSHARD_BENCH_SHARDS the training shards each replica draws from in a round, default 2;
//! NEUROSHARD_BENCH_REPLICAS the replicas, default 4.)
//! (`make bench` builds the dataset from the default corpus and passes it.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use neuroshard_aggregation::outer::OuterConfig;
use neuroshard_aggregation::round::RoundPlan;
use neuroshard_model::data::batches::eval_windows;
use neuroshard_model::data::{BatchSampler, Split, TokenShards};
use neuroshard_model::diloco::{DilocoOptions, load_named, named, replica_tokens, simulate};
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::training::{TrainOptions, Trainer, evaluate};
use neuroshard_model::{ModelConfig, Shard, ShardSpec, init};

/// Replicas unless NEUROSHARD_BENCH_REPLICAS says otherwise.
const REPLICAS: usize = 4;
const H: u64 = 50;
/// Rows per replica step unless NEUROSHARD_BENCH_BATCH says otherwise; the warm start and
/// the held-out evaluation always use it.
const BATCH: usize = 8;
const SEQ: usize = 64;
/// Training shards each replica draws its windows from in a round, unless
/// NEUROSHARD_BENCH_SHARDS says otherwise.
const SHARDS_PER_ROUND: usize = 2;

fn shards_per_round() -> usize {
    env_or("NEUROSHARD_BENCH_SHARDS", SHARDS_PER_ROUND)
}

fn model(config: &ModelConfig) -> Shard {
    let mut m = Shard::new(
        config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut m, 11).unwrap();
    m
}

/// The tokens replica `k` trains on in `round` (as DiLoCo draws them).
fn round_tokens(data: &TokenShards, round: u64, k: usize) -> Vec<u32> {
    replica_tokens(data, round, k as u64, shards_per_round())
        .unwrap()
        .1
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} does not parse")),
        Err(_) => default,
    }
}

/// Whether NEUROSHARD_BENCH_RUN (default: all three) names `which`.
fn runs(which: &str) -> bool {
    std::env::var("NEUROSHARD_BENCH_RUN")
        .map(|list| list.split(',').any(|w| w.trim() == which))
        .unwrap_or(true)
}

/// The outer step: NEUROSHARD_BENCH_OUTER="lr,momentum" (Nesterov), default 0.7,0.9.
fn outer_config() -> OuterConfig {
    match std::env::var("NEUROSHARD_BENCH_OUTER") {
        Ok(text) => {
            let (lr, momentum) = text
                .split_once(',')
                .expect("NEUROSHARD_BENCH_OUTER=lr,momentum");
            OuterConfig {
                lr: lr.trim().parse().expect("outer lr"),
                momentum: momentum.trim().parse().expect("outer momentum"),
                nesterov: true,
            }
        }
        Err(_) => OuterConfig::default(),
    }
}

/// The starting weights: the seeded model, or (NEUROSHARD_BENCH_WARM_START=steps) it after
/// that many single-process steps on round 0's data (which no round draws).
fn starting_point(
    config: &ModelConfig,
    data: &TokenShards,
    inner: &TrainOptions,
) -> neuroshard_aggregation::round::Named {
    let warm: u64 = env_or("NEUROSHARD_BENCH_WARM_START", 0);
    let start = model(config);
    if warm == 0 {
        return named(&start).unwrap();
    }
    // The warm start's own peak stays the default, whatever lr the runs after it use.
    let mut trainer = Trainer::new(
        start,
        &TrainOptions {
            steps: warm,
            batch_size: BATCH,
            lr: 2e-3,
            ..inner.clone()
        },
    )
    .unwrap();
    let sampler = BatchSampler::new(
        replica_tokens(data, 0, 0, 8).unwrap().1,
        &data.manifest,
        SEQ,
        BATCH,
        0,
    )
    .unwrap();
    for step in 0..warm {
        trainer
            .step(&Tensor::from_slice(&sampler.batch(0, step)).view([BATCH as i64, SEQ as i64 + 1]))
            .unwrap();
    }
    named(trainer.model()).unwrap()
}

#[test]
#[ignore = "benchmark: minutes of training"]
fn bench_diloco_vs_data_parallel_vs_single_process() {
    neuroshard_model::tch::set_num_threads(2);
    // Rounds of H steps (the token budget grows with them): NEUROSHARD_BENCH_ROUNDS, default 12.
    let rounds: u64 = env_or("NEUROSHARD_BENCH_ROUNDS", 12);
    let dir = std::env::var("NEUROSHARD_BENCH_DATA")
        .expect("NEUROSHARD_BENCH_DATA: a dataset directory from `neuroshard data build`");
    let data = TokenShards::open(std::path::Path::new(&dir)).unwrap();
    let config = ModelConfig::small(i64::from(data.manifest.vocab_size));
    let params: u64 = model(&config)
        .var_store()
        .variables()
        .values()
        .map(|t| t.numel() as u64)
        .sum();
    let windows = eval_windows(&data.load_split(Split::Validation).unwrap(), SEQ, 128);
    let batch: usize = env_or("NEUROSHARD_BENCH_BATCH", BATCH);
    let replicas: usize = env_or("NEUROSHARD_BENCH_REPLICAS", REPLICAS);
    let inner = TrainOptions {
        batch_size: batch,
        seq_len: SEQ,
        lr: env_or("NEUROSHARD_BENCH_LR", 2e-3),
        warmup_steps: env_or("NEUROSHARD_BENCH_INNER_WARMUP", 20),
        ..TrainOptions::default()
    };

    let start = starting_point(&config, &data, &inner);
    let begin = || {
        let m = model(&config);
        load_named(&m, &start).unwrap();
        m
    };
    println!(
        "{{\"bench\":\"diloco_start\",\"held_out\":{:.4}}}",
        evaluate(&begin(), &windows, BATCH).unwrap()
    );

    let rounded = |losses: &[f64]| {
        losses
            .iter()
            .map(|l| (l * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    };
    let steps = H * rounds;

    // DiLoCo.
    let diloco = runs("diloco").then(|| {
        let started = std::time::Instant::now();
        let options = DilocoOptions {
            replicas,
            attackers: 0,
            attack: None,
            inner_steps: H,
            rounds,
            train: inner.clone(),
            plan: RoundPlan::mean(outer_config()),
            shards_per_round: shards_per_round(),
            eval_windows: 128,
            wire_int8: true,
        };
        let (_, records) = simulate(begin(), &data, &options).unwrap();
        let by_round: Vec<f64> = records.iter().map(|r| r.held_out).collect();
        let outer = outer_config();
        println!(
            "{{\"bench\":\"diloco_rounds\",\"lr\":{},\"outer_lr\":{},\"outer_momentum\":{},\"rounds\":{rounds},\"held_out_by_round\":{:?},\"seconds\":{:.0}}}",
            inner.lr,
            outer.lr,
            outer.momentum,
            rounded(&by_round),
            started.elapsed().as_secs_f64(),
        );
        let bytes: u64 = records.iter().map(|r| r.bytes).sum();
        (by_round, bytes)
    });

    // Data-parallel: every step takes all K replicas' batches at once (K × batch rows), the
    // same data DiLoCo's replicas see, step for step.
    let dp_lr: f64 = env_or("NEUROSHARD_BENCH_DP_LR", inner.lr);
    let data_parallel = runs("dp").then(|| {
        let started = std::time::Instant::now();
        let mut dp = Trainer::new(
            begin(),
            &TrainOptions {
                steps,
                batch_size: replicas * batch,
                lr: dp_lr,
                ..inner.clone()
            },
        )
        .unwrap();
        let mut by_round = Vec::new();
        for round in 1..=rounds {
            let samplers: Vec<BatchSampler> = (0..replicas)
                .map(|k| {
                    BatchSampler::new(
                        round_tokens(&data, round, k),
                        &data.manifest,
                        SEQ,
                        batch,
                        k as u64,
                    )
                    .unwrap()
                })
                .collect();
            for step in 0..H {
                let ids: Vec<i64> = samplers.iter().flat_map(|s| s.batch(round, step)).collect();
                dp.step(&Tensor::from_slice(&ids).view([(replicas * batch) as i64, SEQ as i64 + 1]))
                    .unwrap();
            }
            by_round.push(dp.evaluate(&windows, BATCH).unwrap());
        }
        println!(
            "{{\"bench\":\"data_parallel_rounds\",\"lr\":{dp_lr},\"rounds\":{rounds},\"held_out_by_round\":{:?},\"seconds\":{:.0}}}",
            rounded(&by_round),
            started.elapsed().as_secs_f64(),
        );
        by_round
    });

    // Single process: the same tokens, one replica's batch at a time.
    let single = runs("single").then(|| {
        let started = std::time::Instant::now();
        let mut single = Trainer::new(
            begin(),
            &TrainOptions {
                steps: steps * replicas as u64,
                ..inner.clone()
            },
        )
        .unwrap();
        for round in 1..=rounds {
            for k in 0..replicas {
                let sampler = BatchSampler::new(
                    round_tokens(&data, round, k),
                    &data.manifest,
                    SEQ,
                    batch,
                    k as u64,
                )
                .unwrap();
                for step in 0..H {
                    single
                        .step(
                            &Tensor::from_slice(&sampler.batch(round, step))
                                .view([batch as i64, SEQ as i64 + 1]),
                        )
                        .unwrap();
                }
            }
        }
        let loss = evaluate(single.model(), &windows, BATCH).unwrap();
        println!(
            "{{\"bench\":\"single_process\",\"lr\":{},\"held_out\":{loss:.4},\"seconds\":{:.0}}}",
            inner.lr,
            started.elapsed().as_secs_f64(),
        );
        loss
    });

    // Bytes: data-parallel all-reduces f32 gradients every step; a ring all-reduce sends
    // 2(K − 1)/K of them from each replica. DiLoCo sends each replica's int8 Δ once a round.
    if let (Some((diloco, diloco_bytes)), Some(data_parallel), Some(single)) =
        (diloco, data_parallel, single)
    {
        let ring = steps as f64 * replicas as f64 * 2.0 * (replicas as f64 - 1.0) / replicas as f64
            * 4.0
            * params as f64;
        let naive = steps as f64 * replicas as f64 * 4.0 * params as f64;
        let (diloco, data_parallel) = (
            diloco[diloco.len() - 1],
            data_parallel[data_parallel.len() - 1],
        );
        println!(
            "{{\"bench\":\"diloco_convergence\",\"model\":\"4x256 vocab {}\",\"parameters\":{params},\"replicas\":{replicas},\"inner_steps\":{H},\"rounds\":{rounds},\"batch\":{batch},\"shards_per_round\":{},\"seq\":{SEQ},\"tokens\":{},\"held_out_diloco\":{diloco:.4},\"held_out_data_parallel\":{data_parallel:.4},\"held_out_single\":{single:.4},\"diloco_vs_data_parallel\":{:.4},\"bytes_diloco_int8\":{diloco_bytes},\"bytes_data_parallel_ring\":{ring:.0},\"bytes_ratio_ring\":{:.1},\"bytes_ratio_gradient_per_step\":{:.1}}}",
            data.manifest.vocab_size,
            shards_per_round(),
            replicas as u64 * H * rounds * (batch * SEQ) as u64,
            diloco / data_parallel,
            ring / diloco_bytes as f64,
            naive / diloco_bytes as f64,
        );
    }
}
