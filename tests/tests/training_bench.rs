//! Benchmark: training tokens/s of a 2-stage pipeline of worker processes (one libtorch thread
//! each, the two cores of this machine between them) against the single-process trainer
//! (two threads) on the same model and batch, alternating in one process so that both see
//! the same machine; and the pipeline bubble, each stage's idle share of a step, as the
//! Driver sees it (time outside its Forward and Backward calls) beside the schedule
//! simulator's prediction for equal costs. Both schedules, 4 and 8 micro-batches.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-tests --test training_bench -- --ignored --nocapture

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use neuroshard_common::ModelConfig;
use neuroshard_common::pipeline_schedule::{Schedule, simulate};
use neuroshard_model::checkpoint;
use neuroshard_model::tch::Tensor;
use neuroshard_model::training::{TrainOptions, Trainer};
use neuroshard_runtime::tls::TlsFiles;
use neuroshard_shard_worker::driver::driven_pipeline;
use neuroshard_shard_worker::driver::pipeline::{PipelineRun, StepPlan};
use support::checkpoints::seeded_model;
use support::swarm::{Swarm, memory_for_layers};

const BATCH: usize = 16;
const SEQ: usize = 128;
const STEPS: u64 = 6;
const ROUNDS: usize = 3;

/// The local default model: 4 layers × 256, vocabulary 4096.
fn config() -> ModelConfig {
    ModelConfig::small(4096)
}

fn batch(step: u64) -> Tensor {
    let window = SEQ as u64 + 1;
    let ids: Vec<i64> = (0..BATCH as u64 * window)
        .map(|i| ((i * 2654435761 + step * 97) % 4096) as i64)
        .collect();
    Tensor::from_slice(&ids).reshape([BATCH as i64, window as i64])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: minutes, real processes"]
async fn bench_two_stage_pipeline_vs_single_process() {
    let config = config();
    let mut swarm = Swarm::start(|registry| registry.model(&config).unwrap()).await;
    let model = seeded_model(&config, 3);
    let ckpt = swarm.dir.path().join("ckpt");
    checkpoint::save(&ckpt, &model, None, 0).unwrap();
    // Four workers: two replicas of two stages (the registry wants every layer twice); one
    // pipeline trains, the other idles.
    let memory = memory_for_layers(&config, 2);
    for _ in 0..4 {
        swarm.add_worker(|w| w.checkpoint(&ckpt).unwrap().usable_memory_bytes(memory));
    }
    let snapshot = swarm
        .wait_for(
            "two pipelines of two stages",
            Duration::from_secs(120),
            |s| s.pipelines.len() == 2 && s.pipelines.iter().all(|p| p.node_ids.len() == 2),
        )
        .await;
    let (_, stages) = driven_pipeline(&snapshot, &snapshot.pipelines[0].node_ids[0]).unwrap();
    println!(
        "stage spans: {:?}",
        stages.iter().map(|s| s.span).collect::<Vec<_>>()
    );

    neuroshard_model::tch::set_num_threads(2);
    let options = TrainOptions {
        steps: 1_000,
        batch_size: BATCH,
        seq_len: SEQ,
        lr: 1e-3,
        warmup_steps: 10,
        micro_batches: 1,
        ..TrainOptions::default()
    };
    let mut single = Trainer::new(model, &options).unwrap();
    let mut run = PipelineRun::connect(
        stages,
        &TlsFiles::insecure_plaintext(),
        64 << 20,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    run.start_round(1, "bench", true, None, Duration::from_secs(30))
        .await
        .unwrap();
    let tokens_per_step = (BATCH * SEQ) as f64;
    let mut step = 0u64;
    // Warm-up: first passes allocate.
    for _ in 0..2 {
        single.step(&batch(step)).unwrap();
        let ids = Vec::<i64>::try_from(&batch(step).flatten(0, -1)).unwrap();
        let plan = plan(&config, Schedule::OneForwardOneBackward, 4);
        run.step(step, &ids, BATCH, 1e-3, &plan).await.unwrap();
        step += 1;
    }
    for (schedule, micro_batches) in [
        (Schedule::OneForwardOneBackward, 4u32),
        (Schedule::OneForwardOneBackward, 8),
        (Schedule::GPipe, 4),
        (Schedule::GPipe, 8),
    ] {
        let plan = plan(&config, schedule, micro_batches);
        let mut ratios = Vec::new();
        let mut idle = [Vec::new(), Vec::new()];
        let (mut single_rates, mut pipeline_rates) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for s in 0..STEPS {
                single.step(&batch(s)).unwrap();
            }
            let single_rate = STEPS as f64 * tokens_per_step / started.elapsed().as_secs_f64();
            let started = Instant::now();
            for _ in 0..STEPS {
                let ids = Vec::<i64>::try_from(&batch(step).flatten(0, -1)).unwrap();
                let report = run.step(step, &ids, BATCH, 1e-3, &plan).await.unwrap();
                for (stage, busy) in report.busy.iter().enumerate() {
                    idle[stage].push(1.0 - busy.as_secs_f64() / report.wall.as_secs_f64());
                }
                step += 1;
            }
            let pipeline_rate = STEPS as f64 * tokens_per_step / started.elapsed().as_secs_f64();
            ratios.push(pipeline_rate / single_rate);
            single_rates.push(single_rate);
            pipeline_rates.push(pipeline_rate);
        }
        let predicted = simulate(plan.schedule, micro_batches, &[1.0, 1.0], &[2.0, 2.0], 0.0);
        println!(
            "{{\"bench\":\"pipeline_training\",\"model\":\"4x256 vocab 4096\",\"batch\":{BATCH},\"seq\":{SEQ},\"micro_batches\":{micro_batches},\"schedule\":\"{}\",\"single_tokens_per_s\":{:.0},\"pipeline_tokens_per_s\":{:.0},\"ratio_median\":{:.3},\"ratios\":{:?},\"idle_stage0\":{:.3},\"idle_stage1\":{:.3},\"simulated_bubble\":{:.3}}}",
            match schedule {
                Schedule::GPipe => "gpipe",
                Schedule::OneForwardOneBackward => "1f1b",
            },
            median(single_rates),
            median(pipeline_rates),
            median(ratios.clone()),
            ratios
                .iter()
                .map(|r| (r * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            median(idle[0].clone()),
            median(idle[1].clone()),
            predicted.bubble(),
        );
    }
}

fn plan(config: &ModelConfig, schedule: Schedule, micro_batches: u32) -> StepPlan {
    StepPlan {
        schedule,
        micro_batches,
        grad_clip: 1.0,
        deadline: Duration::from_secs(120),
        hidden_size: config.hidden_size as usize,
    }
}
