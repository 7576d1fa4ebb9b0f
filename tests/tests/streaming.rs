//! Large tensors in chunks through real processes: PostgreSQL, the registry and two shard
//! workers (one pipeline of the small model, from a checkpoint) whose unary message limit is
//! 64 KiB. A 200-token prefill's hidden state (200 KiB) is refused as one message but goes
//! through the worker client, which streams it, both out of the Driver and into the Validator;
//! the logits equal the in-process model's, and so do those after a streamed Replay of a long
//! context. Malformed streams are refused by name and leave the worker serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::Duration;

use neuroshard_common::tensor::{Limits, decode_f32};
use neuroshard_proto::common::v1::{LayerSpan, Tensor as WireTensor};
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_proto::worker::v1::{ForwardRequest, ForwardStreamRequest, ReplayRequest};
use neuroshard_worker_client::client::{ClientOptions, WorkerClient};
use neuroshard_worker_client::stream::{Part, StreamLimits, StreamMessage, split};
use support::checkpoints::small_checkpoint;
use support::swarm::{Swarm, in_process_logits, max_diff, session_id, through_with};
use tonic::{Code, Status};

/// Both ends: one message of at most 64 KiB, streamed chunks of 16 KiB.
const MESSAGE_LIMIT: usize = 64 << 10;
const CHUNK: usize = 16 << 10;

fn options() -> ClientOptions {
    ClientOptions {
        stream_threshold_bytes: 32 << 10,
        chunk_bytes: CHUNK,
        max_message_bytes: MESSAGE_LIMIT,
        limits: StreamLimits::default(),
    }
}

/// The status a malformed stream ends with (from the call or from its response stream).
async fn refused(client: &mut WorkerClient, parts: Vec<ForwardStreamRequest>) -> Status {
    match client.raw().forward_stream(tokio_stream::iter(parts)).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    }
}

fn with_chunk_header(
    mut parts: Vec<ForwardStreamRequest>,
    edit: impl Fn(&mut WireTensor),
) -> Vec<ForwardStreamRequest> {
    if let Some(Part::Chunk(mut chunk)) = parts[1].clone().into_part() {
        edit(chunk.header.as_mut().unwrap());
        parts[1] = ForwardStreamRequest::from_part(Part::Chunk(chunk));
    }
    parts
}

fn with_header(
    mut parts: Vec<ForwardStreamRequest>,
    edit: impl Fn(&mut ForwardRequest),
) -> Vec<ForwardStreamRequest> {
    if let Some(Part::Header(mut header)) = parts[0].clone().into_part() {
        edit(&mut header);
        parts[0] = ForwardStreamRequest::from_part(Part::Header(header));
    }
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tensors_stream_in_chunks_through_a_real_worker() {
    let mut swarm = Swarm::start(|registry| registry).await;
    let (model, ckpt) = small_checkpoint(swarm.dir.path(), 23);
    for _ in 0..2 {
        swarm.add_worker(|w| {
            w.checkpoint(&ckpt)
                .unwrap()
                .usable_memory_bytes(60_000_000)
                .message_limits(MESSAGE_LIMIT, CHUNK, 1 << 20, 64)
        });
    }
    swarm
        .wait_for("one two-stage pipeline", Duration::from_secs(60), |s| {
            s.nodes.len() == 2 && !s.pipelines.is_empty()
        })
        .await;
    let route = swarm.routes(1).await.remove(0);
    assert_eq!(route.hops.len(), 2, "{route:?}");
    let (driver, validator) = (&route.hops[0], &route.hops[1]);

    // A 200-token prefill: the hidden state between the stages is 200 × 256 × 4 bytes.
    let prompt: Vec<i64> = (0..200).map(|i| (i * 37 + 11) % 4096).collect();
    let expected = in_process_logits(&model, &[&prompt[..], &[88, 4000]].concat());
    let logits = through_with(options(), &route, "long", &prompt, 0).await;
    let d_prefill = max_diff(&logits, &expected.get(199));
    let logits = through_with(options(), &route, "long", &[88], 200).await;
    let d_step = max_diff(&logits, &expected.get(200));

    // The same hidden state as one unary message is over the limit.
    let mut to_driver = WorkerClient::connect(&driver.endpoint, options())
        .await
        .unwrap();
    let hidden = to_driver
        .forward(ForwardRequest {
            session_id: session_id("probe"),
            span: driver.span,
            tokens: prompt.clone(),
            hidden: None,
            position: 0,
        })
        .await
        .unwrap()
        .output
        .unwrap();
    assert_eq!(hidden.shape, vec![1, 200, 256]);
    assert!(hidden.data.len() > MESSAGE_LIMIT);
    let mut to_validator = WorkerClient::connect(&validator.endpoint, options())
        .await
        .unwrap();
    let unary = ForwardRequest {
        session_id: session_id("unary"),
        span: validator.span,
        tokens: vec![],
        hidden: Some(hidden.clone()),
        position: 0,
    };
    // (A client without the limit, so that it is the worker that refuses.)
    let mut unlimited = ShardWorkerClient::connect(validator.endpoint.clone())
        .await
        .unwrap();
    let err = unlimited.forward(unary).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted)
            && err.message().contains("too large"),
        "{err:?}"
    );

    // A long context replayed (streamed both ways), then a decode step on the rebuilt caches.
    let context = [&prompt[..], &[88]].concat();
    let replayed = to_driver
        .replay(ReplayRequest {
            session_id: session_id("replayed"),
            span: driver.span,
            tokens: context.clone(),
            hidden: None,
        })
        .await
        .unwrap();
    assert_eq!(replayed.position, 201);
    let replayed = to_validator
        .replay(ReplayRequest {
            session_id: session_id("replayed"),
            span: validator.span,
            tokens: vec![],
            hidden: replayed.output,
        })
        .await
        .unwrap();
    let logits = decode_f32(&replayed.output.unwrap(), "logits", &Limits::default()).unwrap();
    let d_replay = max_diff(&logits, &expected.get(200));
    let logits = through_with(options(), &route, "replayed", &[4000], 201).await;
    let d_after_replay = max_diff(&logits, &expected.get(201));
    eprintln!(
        "max abs diff, streamed: prefill {d_prefill:e}, decode {d_step:e}, replay {d_replay:e}, decode after replay {d_after_replay:e}"
    );
    for d in [d_prefill, d_step, d_replay, d_after_replay] {
        assert!(d <= 1e-5, "{d:e}");
    }

    // Malformed streams into the Validator, each refused by name.
    let request = |session: &str| ForwardRequest {
        session_id: session_id(session),
        span: validator.span,
        tokens: vec![],
        hidden: Some(hidden.clone()),
        position: 0,
    };
    let good = split::<ForwardStreamRequest>(request("bad"), CHUNK);
    assert!(good.len() > 3);
    let cases: Vec<(&str, Vec<ForwardStreamRequest>, Code, &str)> = vec![
        (
            "missing",
            {
                let mut p = good.clone();
                p.remove(2);
                p
            },
            Code::InvalidArgument,
            "missing chunk",
        ),
        (
            "duplicated",
            {
                let mut p = good.clone();
                p.insert(3, p[2].clone());
                p
            },
            Code::InvalidArgument,
            "duplicate chunk",
        ),
        (
            "truncated",
            {
                let mut p = good.clone();
                p.pop();
                p
            },
            Code::InvalidArgument,
            "missing chunk",
        ),
        (
            "headless",
            good[1..].to_vec(),
            Code::InvalidArgument,
            "before the header",
        ),
        (
            "two headers",
            {
                let mut p = good.clone();
                p.insert(1, p[0].clone());
                p
            },
            Code::InvalidArgument,
            "header: sent twice",
        ),
        (
            "mismatched",
            with_chunk_header(good.clone(), |h| h.shape = vec![1, 256, 200]),
            Code::InvalidArgument,
            "header mismatch",
        ),
        (
            "tiny chunks",
            split::<ForwardStreamRequest>(request("bad"), 1024),
            Code::InvalidArgument,
            "more than 64 chunks",
        ),
        (
            "oversize",
            with_header(good.clone(), |h| {
                h.hidden.as_mut().unwrap().shape = vec![1, 1100, 256];
            }),
            Code::ResourceExhausted,
            "exceeds the limit of 1048576 bytes",
        ),
        (
            "wrong span",
            with_header(good.clone(), |h| {
                h.span = Some(LayerSpan { start: 0, end: 1 })
            }),
            Code::InvalidArgument,
            "span",
        ),
        (
            "wrong width",
            with_header(good.clone(), |h| {
                h.hidden.as_mut().unwrap().shape = vec![1, 256, 200];
            }),
            Code::InvalidArgument,
            "hidden.shape",
        ),
    ];
    for (what, parts, code, needle) in cases {
        let status = refused(&mut to_validator, parts).await;
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: {status:?}");
    }
    // The worker still serves: the well-formed stream goes through.
    let mut responses = to_validator
        .raw()
        .forward_stream(tokio_stream::iter(good))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some());
}
