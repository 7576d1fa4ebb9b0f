//! Pipelined training with real processes: PostgreSQL, the layer registry and shard-worker
//! processes, placed by the registry into two pipelines.
//!
//! - Equivalence: the Driver's pipeline code drives five inner steps (4 micro-batches, a
//!   learning rate at which global clipping triggers) through a 2-stage pipeline (message
//!   limits so small that activations and gradients stream in chunks) and a 3-stage pipeline
//!   of worker processes; the weights and AdamW moments equal the single-process trainer's
//!   on the same batches to 1e-5, and Δ = θ_start − θ_end.
//! - Faults: six workers drive their own pipelines on a dataset; kill -9 of one pipeline's
//!   middle stage is reported by its Driver within the step deadline while the other pipeline
//!   keeps training; SIGSTOP of a middle stage is reported when the deadline passes, and the
//!   pipeline trains again after SIGCONT.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-tests --test training_pipelines

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use neuroshard_common::ModelConfig;
use neuroshard_common::pipeline_schedule::Schedule;
use neuroshard_common::tensor::{Limits, decode_f32};
use neuroshard_model::checkpoint;
use neuroshard_model::tch::Tensor;
use neuroshard_model::training::{TrainOptions, Trainer};
use neuroshard_proto::common::v1::LayerSpan;
use neuroshard_proto::registry::v1::AssignmentSnapshot;
use neuroshard_proto::trainer::v1::stage_trainer_client::StageTrainerClient;
use neuroshard_proto::trainer::v1::{
    EndRoundRequest, PipelineProgress, ProgressRequest, PseudoGradientRequest, ReadTensorsRequest,
    TensorSet,
};
use neuroshard_runtime::tls::TlsFiles;
use neuroshard_shard_worker::driver::driven_pipeline;
use neuroshard_shard_worker::driver::pipeline::{PipelineRun, StageAddress, StepPlan};
use neuroshard_worker_client::named::collect_named;
use support::checkpoints::{corpus_dataset, seeded_model};
use support::swarm::{Swarm, max_diff, memory_for_layers};

const SEED: u64 = 5;
const STEPS: u64 = 5;
const MICRO_BATCHES: u32 = 4;
const ROUND: u64 = 1;

/// Three layers, narrow: every stage of a 3-stage cut holds one.
fn config(vocab: i64) -> ModelConfig {
    ModelConfig {
        hidden_size: 48,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 96,
        max_seq_len: 32,
        ..ModelConfig::small(vocab)
    }
}

/// Step `step`'s batch: [8, 17] token ids, fixed.
fn batch(step: u64) -> Tensor {
    let ids: Vec<i64> = (0..8 * 17u64)
        .map(|i| ((i * 29 + step * 13 + i * i) % 97) as i64)
        .collect();
    Tensor::from_slice(&ids).reshape([8, 17])
}

/// A learning rate at which clipping at 1.0 triggers.
fn options() -> TrainOptions {
    TrainOptions {
        steps: STEPS,
        batch_size: 8,
        seq_len: 16,
        lr: 3e-2,
        warmup_steps: 2,
        grad_clip: 1.0,
        micro_batches: MICRO_BATCHES as usize,
        ..TrainOptions::default()
    }
}

/// Waits until the registry has two pipelines of `stages` stages each, every span loaded.
async fn two_pipelines(swarm: &mut Swarm, stages: usize) -> AssignmentSnapshot {
    swarm
        .wait_for(
            &format!("two pipelines of {stages} stages"),
            Duration::from_secs(90),
            |s| s.pipelines.len() == 2 && s.pipelines.iter().all(|p| p.node_ids.len() == stages),
        )
        .await
}

async fn read(
    client: &mut StageTrainerClient<tonic::transport::Channel>,
    span: (u32, u32),
    set: TensorSet,
) -> BTreeMap<String, Vec<f32>> {
    let stream = client
        .read_tensors(ReadTensorsRequest {
            span: Some(LayerSpan {
                start: span.0,
                end: span.1,
            }),
            set: set as i32,
        })
        .await
        .unwrap()
        .into_inner();
    decoded(collect_named(stream, Limits::default()).await.unwrap())
}

fn decoded(
    tensors: BTreeMap<String, neuroshard_proto::common::v1::Tensor>,
) -> BTreeMap<String, Vec<f32>> {
    tensors
        .into_iter()
        .map(|(name, t)| (name, decode_f32(&t, "t", &Limits::default()).unwrap()))
        .collect()
}

/// `max_message_bytes`: the workers' and the Driver's message limit (64 MiB by default).
async fn assert_processes_train_like_one_process(
    workers: usize,
    stages: usize,
    schedule: Schedule,
    max_message_bytes: Option<usize>,
) {
    let config = config(97);
    let mut swarm = Swarm::start(|registry| registry.model(&config).unwrap()).await;
    let model = seeded_model(&config, SEED);
    let ckpt = swarm.dir.path().join("ckpt");
    checkpoint::save(&ckpt, &model, None, 0).unwrap();
    let theta_start: BTreeMap<String, Tensor> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    let memory = memory_for_layers(&config, (3 / stages) as u64 + u64::from(3 % stages != 0));
    for _ in 0..workers {
        swarm.add_worker(|w| {
            let w = w.checkpoint(&ckpt).unwrap().usable_memory_bytes(memory);
            match max_message_bytes {
                Some(max) => w.message_limits(max, max / 3, 256 << 20, 100_000),
                None => w,
            }
        });
    }
    let snapshot = two_pipelines(&mut swarm, stages).await;
    let (_, addresses) = driven_pipeline(&snapshot, &snapshot.pipelines[0].node_ids[0]).unwrap();
    assert_eq!(addresses.len(), stages);

    let options = options();
    let mut single = Trainer::new(model, &options).unwrap();
    let mut run = PipelineRun::connect(
        addresses.clone(),
        &TlsFiles::insecure_plaintext(),
        max_message_bytes.unwrap_or(64 << 20),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(
        run.start_round(ROUND, "p0", true, None, Duration::from_secs(10))
            .await
            .unwrap(),
        0
    );
    let plan = StepPlan {
        schedule,
        micro_batches: MICRO_BATCHES,
        grad_clip: options.grad_clip,
        deadline: Duration::from_secs(60),
        hidden_size: config.hidden_size as usize,
    };
    let lr = options.schedule();
    let mut clipped = false;
    for step in 0..STEPS {
        let (single_loss, _) = single.step(&batch(step)).unwrap();
        let ids = Vec::<i64>::try_from(&batch(step).flatten(0, -1)).unwrap();
        let report = run.step(step, &ids, 8, lr.at(step), &plan).await.unwrap();
        clipped |= report.clip_coefficient < 1.0;
        assert!(
            (single_loss - report.loss).abs() < 1e-5,
            "step {step}: {single_loss} vs {}",
            report.loss
        );
        assert_eq!(report.tokens, 8 * 16);
    }
    assert!(clipped, "clipping never triggered");

    let weights = single.model().var_store().variables();
    let moments = single.optimizer().moments();
    let mut compared = 0;
    let mut worst = 0.0f64;
    for stage in &addresses {
        let mut client = StageTrainerClient::connect(stage.endpoint.clone())
            .await
            .unwrap();
        let trained = read(&mut client, stage.span, TensorSet::Training).await;
        let m = read(&mut client, stage.span, TensorSet::AdamM).await;
        let v = read(&mut client, stage.span, TensorSet::AdamV).await;
        for (name, w) in &trained {
            let d = max_diff(w, &weights[name]);
            let (dm, dv) = (
                max_diff(&m[name], &moments[name].m),
                max_diff(&v[name], &moments[name].v),
            );
            worst = worst.max(d).max(dm).max(dv);
            assert!(d <= 1e-5, "{name}: weights differ by {d}");
            assert!(
                dm <= 1e-5 && dv <= 1e-5,
                "{name}: moments differ by {dm}, {dv}"
            );
            compared += 1;
        }
        let span = Some(LayerSpan {
            start: stage.span.0,
            end: stage.span.1,
        });
        let ended = client
            .end_round(EndRoundRequest {
                span,
                round: ROUND,
                ..EndRoundRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ended.steps, STEPS);
        let stream = client
            .pseudo_gradient(PseudoGradientRequest { span, round: ROUND })
            .await
            .unwrap()
            .into_inner();
        let deltas = decoded(collect_named(stream, Limits::default()).await.unwrap());
        assert_eq!(deltas.len(), trained.len());
        for (name, delta) in &deltas {
            let expected = &theta_start[name] - &weights[name];
            let d = max_diff(delta, &expected);
            assert!(d <= 1e-5, "{name}: Δ differs by {d}");
        }
    }
    assert_eq!(
        compared,
        weights.len(),
        "every parameter is trained by one stage"
    );
    eprintln!(
        "{stages} stages ({schedule:?}) vs one process after {STEPS} steps: max abs diff {worst:e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_in_1f1b_streaming_activations_train_like_one_process() {
    // A micro-batch's activations (2 × 16 × 48 f32, 6 KiB) do not fit in one 6 KiB message:
    // every Forward and Backward streams its tensors in chunks.
    assert_processes_train_like_one_process(4, 2, Schedule::OneForwardOneBackward, Some(6 << 10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_in_gpipe_train_like_one_process() {
    assert_processes_train_like_one_process(6, 3, Schedule::GPipe, None).await;
}

/// What the Driver on `endpoint` reports, asked with a deadline (a hung Driver fails it).
async fn progress(endpoint: &str) -> Vec<PipelineProgress> {
    let ask = async {
        let mut client = StageTrainerClient::connect(endpoint.to_string()).await?;
        Ok::<_, Box<dyn std::error::Error>>(client.progress(ProgressRequest {}).await?.into_inner())
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .expect("the Driver did not answer Progress within 2 s")
        .unwrap()
        .pipelines
}

/// Polls the Driver on `endpoint` until its one pipeline satisfies `done`, or `limit` passes.
async fn wait_progress(
    endpoint: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&PipelineProgress) -> bool,
) -> PipelineProgress {
    let deadline = Instant::now() + limit;
    loop {
        let reported = progress(endpoint).await;
        if let Some(p) = reported.iter().find(|p| done(p)) {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {reported:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const STEP_DEADLINE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_stopped_stage_is_reported_within_the_step_deadline_and_the_other_pipeline_trains()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus_dataset(dir.path(), 300);
    let vocab = neuroshard_model::data::Manifest::read(&data)
        .unwrap()
        .vocab_size;
    let config = config(i64::from(vocab));
    // Slow liveness: the Driver's deadline, not the registry, is what notices here.
    let mut swarm = Swarm::start(|registry| {
        registry
            .model(&config)
            .unwrap()
            .liveness(200, 30_000, 60_000)
    })
    .await;
    let mut training = toml::Table::new();
    for (key, value) in [
        ("enabled", toml::Value::from(true)),
        ("data_dir", data.to_str().unwrap().into()),
        ("inner_steps", 100_000.into()),
        ("batch_size", 8.into()),
        ("micro_batches", 4.into()),
        ("seq_len", 16.into()),
        ("shards_per_round", 2.into()),
        ("lr", 1e-3.into()),
        ("warmup_steps", 5.into()),
        (
            "step_deadline_ms",
            (STEP_DEADLINE.as_millis() as i64).into(),
        ),
        ("retry_ms", 300.into()),
    ] {
        training.insert(key.into(), value);
    }
    let memory = memory_for_layers(&config, 1);
    for _ in 0..6 {
        let training = training.clone();
        swarm.add_worker(|w| w.usable_memory_bytes(memory).training(training));
    }
    two_pipelines(&mut swarm, 3).await;
    // Both train: the Drivers of the registry's two pipelines report steps and a finite loss
    // for those very pipelines (placement may still settle after the first assignment).
    let deadline = Instant::now() + Duration::from_secs(90);
    let pipelines: Vec<Vec<StageAddress>> = loop {
        let snapshot = swarm.snapshot().await;
        let pipelines: Vec<Vec<StageAddress>> = snapshot
            .pipelines
            .iter()
            .filter_map(|p| driven_pipeline(&snapshot, &p.node_ids[0]).map(|(_, s)| s))
            .collect();
        let mut training = pipelines.len() == 2 && pipelines.iter().all(|p| p.len() == 3);
        for p in &pipelines {
            if !training {
                break;
            }
            let ids: Vec<String> = p.iter().map(|s| s.node_id.clone()).collect();
            training &= progress(&p[0].endpoint).await.iter().any(|r| {
                r.state == "running" && r.step >= 3 && r.loss.is_finite() && r.node_ids == ids
            });
        }
        if training {
            break pipelines;
        }
        assert!(
            Instant::now() < deadline,
            "two pipelines did not train: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (a, b) = (&pipelines[0], &pipelines[1]);
    let pid_of = |swarm: &Swarm, endpoint: &str| {
        swarm
            .workers
            .iter()
            .find(|(_, port)| endpoint.ends_with(&format!(":{port}")))
            .map(|(child, _)| child.pid())
            .unwrap()
    };

    // kill -9 of pipeline a's middle stage.
    let b_before = progress(&b[0].endpoint).await[0].tokens;
    let killed = Instant::now();
    support::signal(pid_of(&swarm, &a[1].endpoint), "KILL");
    let failed = wait_progress(
        &a[0].endpoint,
        "the kill reported",
        STEP_DEADLINE * 2,
        |p| p.state == "failed",
    )
    .await;
    let reported_after = killed.elapsed();
    eprintln!(
        "kill -9 of a middle stage reported after {reported_after:?}: {}",
        failed.error
    );
    assert!(
        reported_after <= STEP_DEADLINE + Duration::from_secs(1),
        "{reported_after:?}"
    );
    assert!(failed.error.contains("stage 1"), "{}", failed.error);
    // The other pipeline kept training meanwhile.
    let b_now = wait_progress(
        &b[0].endpoint,
        "pipeline b going on",
        Duration::from_secs(10),
        |p| p.state == "running" && p.tokens > b_before,
    )
    .await;
    assert!(b_now.tokens > b_before);

    // SIGSTOP of pipeline b's middle stage: its call hangs, the deadline names it.
    let stopped_pid = pid_of(&swarm, &b[1].endpoint);
    let stopped = Instant::now();
    support::signal(stopped_pid, "STOP");
    let failed = wait_progress(
        &b[0].endpoint,
        "the stop reported",
        STEP_DEADLINE * 3,
        |p| p.state == "failed",
    )
    .await;
    let reported_after = stopped.elapsed();
    support::signal(stopped_pid, "CONT");
    eprintln!(
        "SIGSTOP of a middle stage reported after {reported_after:?}: {}",
        failed.error
    );
    assert!(
        reported_after <= STEP_DEADLINE + Duration::from_secs(1),
        "{reported_after:?}"
    );
    assert!(
        failed.error.contains("passed its deadline") && failed.error.contains("stage 1"),
        "{}",
        failed.error
    );
    // Resumed, the stage takes the next round from the global weights and b trains again.
    let resumed = wait_progress(
        &b[0].endpoint,
        "pipeline b training again",
        Duration::from_secs(30),
        |p| p.state == "running" && p.round > failed.round && p.step >= 1,
    )
    .await;
    assert!(resumed.error.is_empty());
    // Pipeline a's Driver is not hung either: it answers, and keeps reporting its failure
    // while its middle stage is gone.
    let a_now = progress(&a[0].endpoint).await;
    assert_eq!(a_now[0].state, "failed", "{a_now:?}");
}
