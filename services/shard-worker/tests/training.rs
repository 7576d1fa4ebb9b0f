//! The `StageTrainer` service's refusals over real gRPC, on a worker state in this process:
//! calls before a round, for another span, round or step, a micro-batch never forwarded, NaN
//! and Inf, mismatched shapes and oversized tensors are refused naming the problem, with the
//! stage's weights unchanged. (That pipelines of worker processes train like one process is
//! `tests/tests/training_pipelines.rs`.)
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-shard-worker --test training

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::collections::BTreeMap;

use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::tensor::{Limits, decode_f32};
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{ModelConfig, Shard, ShardSpec, init};
use neuroshard_proto::common::v1::{LayerSpan, Tensor as WireTensor};
use neuroshard_proto::trainer::v1::stage_trainer_client::StageTrainerClient;
use neuroshard_proto::trainer::v1::{
    PseudoGradientRequest, ReadTensorsRequest, StartRoundRequest, StepRef, StepRequest, TensorSet,
    TrainBackwardRequest, TrainForwardRequest,
};
use neuroshard_shard_worker::compute::ComputeOptions;
use neuroshard_worker_client::named::collect_named;
use tonic::transport::Channel;

const SEED: u64 = 5;
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

fn span(start: u32, end: u32) -> Option<LayerSpan> {
    Some(LayerSpan { start, end })
}

/// A stage: a worker state holding `[start, end)` (seeded as a worker without a checkpoint
/// loads it), serving ShardWorker and StageTrainer on a loopback port.
struct Stage {
    span: (u32, u32),
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
        client: StageTrainerClient::connect(url).await.unwrap(),
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
    stream: tonic::Streaming<neuroshard_proto::trainer::v1::NamedTensorChunk>,
) -> BTreeMap<String, Vec<f32>> {
    collect_named(stream, Limits::default())
        .await
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, decode_f32(&t, "t", &Limits::default()).unwrap()))
        .collect()
}

fn wire(t: &Tensor) -> WireTensor {
    neuroshard_shard_worker::convert::to_wire(t).unwrap()
}

fn tensor(w: &WireTensor) -> Tensor {
    neuroshard_shard_worker::convert::from_wire(w, "t", &Limits::default()).unwrap()
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
            weights_round: None,
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
            weights_round: None,
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
