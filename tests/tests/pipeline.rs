//! The swarm core with real processes: PostgreSQL, the layer registry and five shard workers
//! loading their spans from one checkpoint. A pipelined forward (prefill, then decode steps)
//! through the workers equals the in-process model; bad inputs are refused by name; a worker
//! killed with SIGKILL has its layers reassigned and replicas restored to two.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::{Duration, Instant};

use neuroshard_common::tensor::encode_f32;
use neuroshard_model::Shard;
use neuroshard_proto::common::v1::{LayerSpan, Tensor as WireTensor};
use neuroshard_proto::registry::v1::NodeState;
use neuroshard_proto::worker::v1::ForwardRequest;
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use support::checkpoints::small_checkpoint;
use support::swarm::{Swarm, in_process_logits, max_diff, min_holders, session_id, through};
use tonic::Code;

const WORKERS: usize = 5;
/// Two layers of the small model plus its embedding or head (20 bytes per parameter).
const WORKER_MEMORY: u64 = 60_000_000;

/// The registry in fixed mode (the small model), and five workers loading their spans from a
/// checkpoint of it; also returns the model, in-process.
async fn start() -> (Swarm, Shard) {
    let mut swarm = Swarm::start(|registry| registry).await;
    let (model, ckpt) = small_checkpoint(swarm.dir.path(), 11);
    for _ in 0..WORKERS {
        swarm.add_worker(|w| {
            w.checkpoint(&ckpt)
                .unwrap()
                .usable_memory_bytes(WORKER_MEMORY)
        });
    }
    (swarm, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_forward_equals_the_model_and_survives_a_killed_worker() {
    let (mut swarm, model) = start().await;
    let ready = swarm
        .wait_for("two replicas", Duration::from_secs(60), |s| {
            s.nodes.len() == WORKERS && min_holders(s) >= 2 && s.pipelines.len() >= 2
        })
        .await;
    let routes = swarm.routes(4).await;
    assert!(routes.len() >= 2);
    let route = &routes[0];
    assert!(route.hops.len() >= 2, "a multi-stage pipeline: {route:?}");

    // Prefill, then two decode steps, each compared with the full model in-process.
    let prompt = [5i64, 17, 300, 42, 7, 1024, 9];
    let expected = in_process_logits(&model, &[&prompt[..], &[88, 4000]].concat());
    let logits = through(route, "s1", &prompt, 0).await;
    let d0 = max_diff(&logits, &expected.get(6));
    let logits = through(route, "s1", &[88], 7).await;
    let d1 = max_diff(&logits, &expected.get(7));
    let logits = through(route, "s1", &[4000], 8).await;
    let d2 = max_diff(&logits, &expected.get(8));
    eprintln!("max abs diff through the pipeline: prefill {d0:e}, decode {d1:e}, {d2:e}");
    assert!(d0 <= 1e-5 && d1 <= 1e-5 && d2 <= 1e-5);

    // Bad inputs, each refused with the field named.
    let last = route.hops.last().unwrap();
    let mut validator = ShardWorkerClient::connect(last.endpoint.clone())
        .await
        .unwrap();
    let span = last.span.unwrap();
    let request = |span: LayerSpan, hidden: WireTensor, position: u32| ForwardRequest {
        session_id: session_id("bad"),
        span: Some(span),
        tokens: vec![],
        hidden: Some(hidden),
        position,
    };
    let good_hidden = encode_f32(&[1, 2, 256], &[0.5; 512]);
    let err = validator
        .forward(request(
            LayerSpan { start: 0, end: 1 },
            good_hidden.clone(),
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("span"), "{err:?}");
    let err = validator
        .forward(request(span, encode_f32(&[1, 2, 100], &[0.5; 200]), 0))
        .await
        .unwrap_err();
    assert!(
        err.code() == Code::InvalidArgument && err.message().contains("hidden"),
        "{err:?}"
    );
    let mut nan = good_hidden.clone();
    nan.data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let err = validator.forward(request(span, nan, 0)).await.unwrap_err();
    assert!(
        err.code() == Code::InvalidArgument && err.message().contains("NaN"),
        "{err:?}"
    );
    let mut short = good_hidden.clone();
    short.data.truncate(10);
    let err = validator
        .forward(request(span, short, 0))
        .await
        .unwrap_err();
    assert!(err.message().contains("hidden.data"), "{err:?}");
    let err = validator
        .forward(request(span, good_hidden, 5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // kill -9 a worker that holds layers; its layers move and replicas return to two.
    let victim_id = route.hops[0].node_id.clone();
    let victim_endpoint = route.hops[0].endpoint.clone();
    let victim = swarm
        .workers
        .iter_mut()
        .find(|(_, port)| victim_endpoint.ends_with(&format!(":{port}")))
        .expect("victim process");
    victim.0.kill();
    let started = Instant::now();
    let after = swarm
        .wait_for("reassignment", Duration::from_secs(30), |s| {
            s.version > ready.version
                && s.nodes
                    .iter()
                    .any(|n| n.node_id == victim_id && n.state == NodeState::Dead as i32)
                && min_holders(s) >= 2
        })
        .await;
    let elapsed = started.elapsed();
    eprintln!(
        "layers of the killed worker reassigned and loaded, replicas back to 2, after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(2 * 1500 + 2000),
        "{elapsed:?}"
    );
    assert!(after.deficits.is_empty());
}
