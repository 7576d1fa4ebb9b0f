//! Benchmarks (ignored by default), with worker services serving on loopback in this process:
//! - the latency one gRPC hop adds to a hidden-state forward, as a ratio to the layer compute
//!   it carries: a worker holding layer [1, 2) of a 1024-wide model; the same forward timed
//!   called directly and over gRPC, alternating;
//! - a large hidden state's hop, unary vs chunked stream: a head-only worker (tiny vocabulary)
//!   takes [1, seq, 1024] in, and an embedding-only worker sends [1, seq, 1024] out, so the
//!   time is transport, not compute; the two ways alternate.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-shard-worker --test hop_bench -- --ignored --nocapture

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::Instant;

use neuroshard_common::tensor::encode_f32;
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{ModelConfig, Shard, ShardInput, ShardSpec, init};
use neuroshard_proto::common::v1::LayerSpan;
use neuroshard_proto::worker::v1::ForwardRequest;
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_shard_worker::client::{ClientOptions, WorkerClient};
use neuroshard_shard_worker::compute::ComputeOptions;
use neuroshard_shard_worker::stream::StreamLimits;
use support::session_id;

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 32_000,
        hidden_size: 1024,
        num_layers: 3,
        num_heads: 16,
        num_kv_heads: 4,
        intermediate_size: 2816,
        max_seq_len: 256,
        ..ModelConfig::small(32_000)
    }
}

fn middle_shard() -> Shard {
    let spec = ShardSpec {
        start: 1,
        end: 2,
        embed: false,
        head: false,
    };
    let mut shard = Shard::new(&config(), spec, Device::Cpu, Kind::Float).unwrap();
    init::initialize(&mut shard, 1).unwrap();
    shard
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Serves `shard` on a loopback port of this process; returns its URL. Passes are not cut
/// into chunks, so that what is timed is one forward, as the direct call times it.
async fn serve(shard: Shard) -> String {
    let options = ComputeOptions {
        max_decode_batch: 16,
        prefill_chunk_positions: i64::MAX,
    };
    support::serve(support::state(shard, options), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored"]
async fn bench_grpc_hop_latency() {
    let addr = serve(middle_shard()).await;
    let mut client = ShardWorkerClient::connect(addr).await.unwrap();
    let direct = middle_shard();
    let rounds = 30;
    for seq in [1i64, 64] {
        let values: Vec<f32> = (0..seq * 1024)
            .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
            .collect();
        let wire = encode_f32(&[1, seq, 1024], &values);
        let local = Tensor::from_slice(&values).view([1, seq, 1024]);
        let (mut compute, mut rpc) = (Vec::new(), Vec::new());
        for round in 0..rounds + 3 {
            let started = Instant::now();
            {
                let _guard = neuroshard_model::tch::no_grad_guard();
                let mut cache = direct.new_cache();
                let _ = direct
                    .forward(ShardInput::Hidden(&local), Some(&mut cache))
                    .unwrap();
            }
            let c = started.elapsed().as_secs_f64() * 1e3;
            let started = Instant::now();
            let request = ForwardRequest {
                session_id: session_id(),
                span: Some(LayerSpan { start: 1, end: 2 }),
                tokens: vec![],
                hidden: Some(wire.clone()),
                position: 0,
            };
            let out = client.forward(request).await.unwrap().into_inner();
            let r = started.elapsed().as_secs_f64() * 1e3;
            assert_eq!(out.position as i64, seq);
            if round >= 3 {
                compute.push(c);
                rpc.push(r);
            }
        }
        let (c, r) = (median(compute), median(rpc));
        println!(
            "hidden 1x{seq}x1024: layer compute {c:.3} ms, over gRPC {r:.3} ms, added {:.3} ms, ratio added/compute {:.2}",
            r - c,
            (r - c) / c
        );
    }
}

/// A model of width 1024 and a tiny vocabulary whose end shards hold no layers: the head-only
/// shard turns [1, seq, 1024] into 16 logits, the embedding-only shard 'seq' tokens into
/// [1, seq, 1024], both at negligible compute.
fn transport_shard(spec: ShardSpec) -> Shard {
    let config = ModelConfig {
        vocab_size: 16,
        num_layers: 1,
        max_seq_len: 16_384,
        ..config()
    };
    let mut shard = Shard::new(&config, spec, Device::Cpu, Kind::Float).unwrap();
    init::initialize(&mut shard, 1).unwrap();
    shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored"]
async fn bench_large_tensor_hop_unary_vs_chunked() {
    let head = serve(transport_shard(ShardSpec::span(1, 1, 1).unwrap())).await;
    let embed = serve(transport_shard(ShardSpec::span(0, 0, 1).unwrap())).await;
    let options = |stream_threshold_bytes| ClientOptions {
        stream_threshold_bytes,
        chunk_bytes: 1 << 20,
        max_message_bytes: 64 << 20,
        limits: StreamLimits::default(),
    };
    let mut clients = Vec::new();
    for url in [&head, &embed] {
        let unary = WorkerClient::connect(url, options(usize::MAX))
            .await
            .unwrap();
        let chunked = WorkerClient::connect(url, options(0)).await.unwrap();
        clients.push((unary, chunked));
    }
    let rounds = 15;
    for seq in [1024i64, 4096, 8192] {
        let values: Vec<f32> = (0..seq * 1024)
            .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
            .collect();
        let hidden = encode_f32(&[1, seq, 1024], &values);
        let tokens: Vec<i64> = (0..seq).map(|i| i % 16).collect();
        let mib = hidden.data.len() as f64 / f64::from(1 << 20);
        for (direction, (unary, chunked)) in ["in", "out"].iter().zip(clients.iter_mut()) {
            let (mut u, mut c) = (Vec::new(), Vec::new());
            for round in 0..rounds + 2 {
                let request = |session: &str| ForwardRequest {
                    session_id: session.to_string(),
                    span: Some(if *direction == "in" {
                        LayerSpan { start: 1, end: 1 }
                    } else {
                        LayerSpan { start: 0, end: 0 }
                    }),
                    tokens: if *direction == "in" {
                        vec![]
                    } else {
                        tokens.clone()
                    },
                    hidden: (*direction == "in").then(|| hidden.clone()),
                    position: 0,
                };
                for (client, times) in [(&mut *unary, &mut u), (&mut *chunked, &mut c)] {
                    let session = session_id();
                    let request = request(&session);
                    let started = Instant::now();
                    let out = client.forward(request).await.unwrap();
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    assert_eq!(out.position as i64, seq);
                    client.end_session(&session).await.unwrap();
                    if round >= 2 {
                        times.push(ms);
                    }
                }
            }
            let (u, c) = (median(u), median(c));
            println!(
                "hidden 1x{seq}x1024 ({mib:.0} MiB) {direction}: unary {u:.1} ms, chunked (1 MiB) {c:.1} ms, chunked/unary {:.2}",
                c / u
            );
        }
    }
}
