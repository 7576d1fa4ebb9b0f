//! The `StageTrainer` service over real gRPC: a model cut into 2 and into 3 stages, each served
//! by a worker state of its own in this process, driven by the Driver's `PipelineRun`
//! (micro-batches forward stage to stage, gradients back, squared norms summed into one clip
//! coefficient, every stage stepped). Five steps give the weights and AdamW moments of the
//! single-process trainer on the same batches; the pseudo-gradient is θ_start − θ_end. Also:
//! calls for another span, round or step, a micro-batch never forwarded and bad tensors are
//! refused naming the problem, with the weights unchanged.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-shard-worker --test training

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::pipeline_schedule::Schedule;
use neuroshard_common::tensor::{ChunkAssembler, Limits, decode_f32};
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::training::{TrainOptions, Trainer};
use neuroshard_model::{ModelConfig, Shard, ShardSpec, init};
use neuroshard_proto::common::v1::{LayerSpan, Tensor as WireTensor};
use neuroshard_proto::trainer::v1::stage_trainer_client::StageTrainerClient;
use neuroshard_proto::trainer::v1::{
    EndRoundRequest, PseudoGradientRequest, ReadTensorsRequest, StartRoundRequest, StepRef,
    StepRequest, TensorSet, TrainBackwardRequest, TrainForwardRequest,
};
use neuroshard_runtime::tls::TlsFiles;
use neuroshard_shard_worker::compute::ComputeOptions;
use neuroshard_shard_worker::driver::pipeline::{PipelineRun, StageAddress, StepPlan};
use tonic::transport::Channel;

const SEED: u64 = 5;
const STEPS: u64 = 5;
const MICRO_BATCHES: i64 = 4;
const ROUND: u64 = 1;

fn config() -> ModelConfig {
    ModelConfig {
        hidden_size: 48,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 96,
        max_seq_len: 32,
        ..ModelConfig::small(97)
    }
}

/// Step `step`'s batch: tokens [8, 17], fixed.
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

fn span(start: u32, end: u32) -> Option<LayerSpan> {
    Some(LayerSpan { start, end })
}

/// A stage: a worker state holding `[start, end)` (seeded as a worker without a checkpoint
/// loads it), serving ShardWorker and StageTrainer on a loopback port.
struct Stage {
    span: (u32, u32),
    url: String,
    client: StageTrainerClient<Channel>,
}

async fn stage(start: u32, end: u32) -> Stage {
    let config = config();
    let arch = ArchitectureState::genesis(config.clone());
    let spec = ShardSpec::span(i64::from(start), i64::from(end), config.num_layers).unwrap();
    let mut shard = Shard::new(&config, spec, Device::Cpu, Kind::Float).unwrap();
    init::initialize(&mut shard, SEED).unwrap();
    let options = ComputeOptions {
        max_decode_batch: 1,
        prefill_chunk_positions: 256,
    };
    let state = support::state_with(shard, arch, options);
    let url = support::serve_training(state, SEED).await;
    Stage {
        span: (start, end),
        client: StageTrainerClient::connect(url.clone()).await.unwrap(),
        url,
    }
}

impl Stage {
    fn at(&self, step: u64) -> Option<StepRef> {
        Some(StepRef {
            span: span(self.span.0, self.span.1),
            round: ROUND,
            step,
        })
    }

    async fn read(&mut self, set: TensorSet) -> BTreeMap<String, Vec<f32>> {
        read_named(
            self.client
                .read_tensors(ReadTensorsRequest {
                    span: span(self.span.0, self.span.1),
                    set: set as i32,
                })
                .await
                .unwrap()
                .into_inner(),
        )
        .await
    }
}

/// Named tensors from a stream of chunks, each reassembled and decoded.
async fn read_named(
    mut stream: tonic::Streaming<neuroshard_proto::trainer::v1::NamedTensorChunk>,
) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, ChunkAssembler)> = None;
    let mut finish = |current: Option<(String, ChunkAssembler)>| {
        if let Some((name, assembler)) = current {
            let wire = assembler.finish(true).unwrap();
            out.insert(name, decode_f32(&wire, "t", &Limits::default()).unwrap());
        }
    };
    while let Some(piece) = stream.message().await.unwrap() {
        if !piece.name.is_empty() {
            finish(current.take());
            current = Some((
                piece.name.clone(),
                ChunkAssembler::new(piece.name, Limits::default()),
            ));
        }
        let (_, assembler) = current.as_mut().expect("a chunk before any name");
        assembler.push(piece.chunk.unwrap()).unwrap();
    }
    finish(current);
    out
}

fn wire(t: &Tensor) -> WireTensor {
    neuroshard_shard_worker::convert::to_wire(t).unwrap()
}

fn tensor(w: &WireTensor) -> Tensor {
    neuroshard_shard_worker::convert::from_wire(w, "t", &Limits::default()).unwrap()
}

/// The Driver's pipeline over the stages (plaintext loopback), in `schedule` order.
async fn pipeline(stages: &[Stage]) -> PipelineRun {
    let addresses = stages
        .iter()
        .map(|s| StageAddress {
            node_id: format!("stage-{}", s.span.0),
            endpoint: s.url.clone(),
            span: s.span,
        })
        .collect();
    PipelineRun::connect(
        addresses,
        &TlsFiles::insecure_plaintext(),
        64 << 20,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

fn plan(schedule: Schedule) -> StepPlan {
    StepPlan {
        schedule,
        micro_batches: MICRO_BATCHES as u32,
        grad_clip: options().grad_clip,
        deadline: Duration::from_secs(60),
    }
}

fn max_diff(a: &[f32], b: &Tensor) -> f64 {
    let b = Vec::<f32>::try_from(&b.flatten(0, -1)).unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

async fn assert_pipeline_equals_single_process(cuts: &[(u32, u32)], schedule: Schedule) {
    let options = options();
    let config = config();
    let mut full = Shard::new(
        &config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut full, SEED).unwrap();
    let theta_start: BTreeMap<String, Tensor> = full
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    let mut single = Trainer::new(full, &options).unwrap();
    let mut stages = Vec::new();
    for &(start, end) in cuts {
        stages.push(stage(start, end).await);
    }
    let mut run = pipeline(&stages).await;
    let steps_before = run
        .start_round(ROUND, "p0", true, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(steps_before, 0);
    let lr = options.schedule();
    let mut clipped = false;
    for step in 0..STEPS {
        let (single_loss, _) = single.step(&batch(step)).unwrap();
        let ids = Vec::<i64>::try_from(&batch(step).flatten(0, -1)).unwrap();
        let report = run
            .step(step, &ids, 8, lr.at(step), &plan(schedule))
            .await
            .unwrap();
        let (loss, clip) = (report.loss, report.clip_coefficient);
        assert_eq!(report.tokens, 8 * 16);
        assert_eq!(report.busy.len(), cuts.len());
        clipped |= clip < 1.0;
        assert!(
            (single_loss - loss).abs() < 1e-5,
            "step {step}: {single_loss} vs {loss}"
        );
    }
    assert!(clipped, "clipping never triggered");
    let weights = single.model().var_store().variables();
    let moments = single.optimizer().moments();
    let mut compared = 0;
    for stage in &mut stages {
        let trained = stage.read(TensorSet::Training).await;
        let m = stage.read(TensorSet::AdamM).await;
        let v = stage.read(TensorSet::AdamV).await;
        let global = stage.read(TensorSet::Global).await;
        for (name, w) in &trained {
            let d = max_diff(w, &weights[name]);
            assert!(d <= 1e-5, "{cuts:?} {name}: weights differ by {d}");
            let (dm, dv) = (
                max_diff(&m[name], &moments[name].m),
                max_diff(&v[name], &moments[name].v),
            );
            assert!(
                dm <= 1e-5 && dv <= 1e-5,
                "{name}: moments differ by {dm}, {dv}"
            );
            assert_eq!(
                max_diff(&global[name], &theta_start[name]),
                0.0,
                "{name}: θ_start"
            );
            compared += 1;
        }
        let ended = stage
            .client
            .end_round(EndRoundRequest {
                span: span(stage.span.0, stage.span.1),
                round: ROUND,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ended.steps, STEPS);
        let deltas = read_named(
            stage
                .client
                .pseudo_gradient(PseudoGradientRequest {
                    span: span(stage.span.0, stage.span.1),
                    round: ROUND,
                })
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        for (name, delta) in &deltas {
            let expected = &theta_start[name] - &weights[name];
            let d = max_diff(delta, &expected);
            assert!(d <= 1e-5, "{name}: Δ differs by {d}");
        }
        assert_eq!(deltas.len(), trained.len());
    }
    assert_eq!(
        compared,
        weights.len(),
        "every parameter is trained by one stage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stages_over_grpc_in_gpipe_order_train_like_one_process() {
    assert_pipeline_equals_single_process(&[(0, 2), (2, 3)], Schedule::GPipe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stages_over_grpc_in_1f1b_order_train_like_one_process() {
    assert_pipeline_equals_single_process(
        &[(0, 1), (1, 2), (2, 3)],
        Schedule::OneForwardOneBackward,
    )
    .await;
}

/// Each refusal names its cause, and none changes the stage's weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_refused_naming_the_problem_and_change_nothing() {
    let mut middle = stage(1, 2).await;
    let before = middle.read(TensorSet::Global).await;
    let refused = |status: tonic::Status, code: tonic::Code, needle: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(needle), "{status:?}");
    };
    // Nothing happens before StartRound.
    let hidden = wire(&Tensor::ones([2, 16, 48], (Kind::Float, Device::Cpu)));
    let forward =
        |at: Option<StepRef>, micro_batch: u64, hidden: Option<WireTensor>| TrainForwardRequest {
            at,
            micro_batch,
            tokens: Vec::new(),
            token_rows: 0,
            hidden,
            targets: Vec::new(),
            loss_scale: 0.25,
        };
    let status = middle
        .client
        .forward(forward(middle.at(0), 0, Some(hidden.clone())))
        .await
        .unwrap_err();
    refused(
        status,
        tonic::Code::FailedPrecondition,
        "call StartRound first",
    );
    let status = middle
        .client
        .start_round(StartRoundRequest {
            span: span(0, 2),
            round: ROUND,
            pipeline_id: "p".into(),
            reset_optimizer: false,
        })
        .await
        .unwrap_err();
    refused(
        status,
        tonic::Code::FailedPrecondition,
        "this node holds [1, 2)",
    );
    middle
        .client
        .start_round(StartRoundRequest {
            span: span(1, 2),
            round: ROUND,
            pipeline_id: "p".into(),
            reset_optimizer: false,
        })
        .await
        .unwrap();

    let wrong_step = Some(StepRef {
        span: span(1, 2),
        round: ROUND,
        step: 3,
    });
    let status = middle
        .client
        .forward(forward(wrong_step, 0, Some(hidden.clone())))
        .await
        .unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, "step: 3 named");
    let wrong_round = Some(StepRef {
        span: span(1, 2),
        round: ROUND + 1,
        step: 0,
    });
    let status = middle
        .client
        .forward(forward(wrong_round, 0, Some(hidden.clone())))
        .await
        .unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, "round: 2 named");
    let mut nan = hidden.clone();
    let bad = tensor(&nan).fill_(f64::NAN);
    nan = wire(&bad);
    let status = middle
        .client
        .forward(forward(middle.at(0), 0, Some(nan)))
        .await
        .unwrap_err();
    refused(status, tonic::Code::InvalidArgument, "hidden");
    let narrow = wire(&Tensor::ones([2, 16, 40], (Kind::Float, Device::Cpu)));
    let status = middle
        .client
        .forward(forward(middle.at(0), 0, Some(narrow)))
        .await
        .unwrap_err();
    refused(status, tonic::Code::InvalidArgument, "hidden: shape");
    let status = middle
        .client
        .forward(forward(middle.at(0), 0, None))
        .await
        .unwrap_err();
    refused(status, tonic::Code::InvalidArgument, "needs hidden states");

    middle
        .client
        .forward(forward(middle.at(0), 0, Some(hidden.clone())))
        .await
        .unwrap();
    let at0 = middle.at(0);
    let backward = |micro_batch: u64, grad: Option<WireTensor>| TrainBackwardRequest {
        at: at0,
        micro_batch,
        grad,
    };
    let status = middle
        .client
        .backward(backward(9, Some(hidden.clone())))
        .await
        .unwrap_err();
    refused(
        status,
        tonic::Code::InvalidArgument,
        "micro-batch 9 was never forwarded",
    );
    let small = wire(&Tensor::ones([1, 16, 48], (Kind::Float, Device::Cpu)));
    let status = middle
        .client
        .backward(backward(0, Some(small)))
        .await
        .unwrap_err();
    refused(
        status,
        tonic::Code::InvalidArgument,
        "gradient shape [1, 16, 48]",
    );
    let inf = wire(&Tensor::ones([2, 16, 48], (Kind::Float, Device::Cpu)).fill_(f64::INFINITY));
    let status = middle
        .client
        .backward(backward(0, Some(inf)))
        .await
        .unwrap_err();
    refused(status, tonic::Code::InvalidArgument, "grad");
    let status = middle
        .client
        .step(StepRequest {
            at: middle.at(0),
            lr: 1e-2,
            clip_coefficient: 1.0,
        })
        .await
        .unwrap_err();
    refused(
        status,
        tonic::Code::InvalidArgument,
        "still wait for their backward",
    );
    let oversized = WireTensor {
        shape: vec![1 << 20, 1 << 10, 48],
        ..hidden.clone()
    };
    let status = middle
        .client
        .forward(forward(middle.at(0), 1, Some(oversized)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );

    // Nothing above changed the weights being trained.
    let after = middle.read(TensorSet::Training).await;
    assert_eq!(before, after);
    // The pseudo-gradient waits for the round's end.
    let status = middle
        .client
        .pseudo_gradient(PseudoGradientRequest {
            span: span(1, 2),
            round: ROUND,
        })
        .await
        .unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, "after EndRound");
}
