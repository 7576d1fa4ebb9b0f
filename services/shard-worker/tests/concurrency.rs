//! A worker keeps answering while it computes: control calls and heartbeats are not held up
//! by a long prefill, another session's decode steps go on during it, and the decode steps of
//! several sessions run as one batched pass with each session's own result.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-shard-worker --test concurrency

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::{Duration, Instant};

use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::tensor::{Limits, decode_f32};
use neuroshard_proto::worker::v1::{ForwardRequest, ForwardResponse};
use neuroshard_shard_worker::WorkerConfig;
use neuroshard_shard_worker::client::{ClientOptions, WorkerClient};
use neuroshard_shard_worker::compute::ComputeOptions;
use support::{FakeRegistry, SEED, full_span, last_logits, max_abs_diff, session_id, tokens};

/// Positions of the long prefill: seconds of compute on one thread.
const LONG: usize = 2000;
const OPTIONS: ComputeOptions = ComputeOptions {
    max_decode_batch: 16,
    prefill_chunk_positions: 128,
};

fn request(session: &str, tokens: &[i64], position: usize) -> ForwardRequest {
    ForwardRequest {
        session_id: session.to_string(),
        span: full_span(),
        tokens: tokens.to_vec(),
        hidden: None,
        position: position as u32,
    }
}

fn logits(response: &ForwardResponse) -> Vec<f32> {
    decode_f32(
        response.output.as_ref().unwrap(),
        "logits",
        &Limits::default(),
    )
    .unwrap()
}

async fn client(url: &str) -> WorkerClient {
    WorkerClient::connect(url, ClientOptions::default())
        .await
        .unwrap()
}

/// Starts a long prefill on a fresh session; it answers with its response and when it ended.
fn long_prefill(url: String, salt: i64) -> tokio::task::JoinHandle<(ForwardResponse, Instant)> {
    tokio::spawn(async move {
        let mut worker = client(&url).await;
        let response = worker
            .forward(request(&session_id(), &tokens(LONG, salt), 0))
            .await
            .unwrap();
        (response, Instant::now())
    })
}

/// The whole worker (registration, heartbeats, the service) in this process, with a registry
/// that records its heartbeats: while a prefill of seconds runs, Info and EndSession answer
/// in milliseconds and heartbeats keep their interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_calls_and_heartbeats_are_answered_during_a_long_prefill() {
    neuroshard_model::tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let (key_file, node_id) = support::worker_key(dir.path());
    let registry = FakeRegistry::new(
        &node_id,
        Some(ArchitectureState::genesis(support::config())),
    );
    let registry_url = registry.clone().serve().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = WorkerConfig {
        registry: registry_url,
        key_file,
        init_seed: SEED,
        device: "cpu".into(),
        heartbeat_interval_ms: 100,
        prefill_chunk_positions: OPTIONS.prefill_chunk_positions as u32,
        tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
        ..WorkerConfig::default()
    };
    tokio::spawn(neuroshard_shard_worker::run(
        config,
        listener,
        std::future::pending(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut worker = loop {
        if let Ok(mut w) = WorkerClient::connect(&url, ClientOptions::default()).await
            && w.info().await.is_ok_and(|i| i.span == full_span())
        {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never loaded its span"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let started = Instant::now();
    let long = long_prefill(url.clone(), 1);
    let (mut worst, mut rounds) = (Duration::ZERO, 0);
    while !long.is_finished() {
        let asked = Instant::now();
        let info = worker.info().await.unwrap();
        assert_eq!(info.span, full_span());
        worker.end_session(&session_id()).await.unwrap();
        worst = worst.max(asked.elapsed());
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (response, ended) = long.await.unwrap();
    let prefill = ended - started;
    assert_eq!(response.position as usize, LONG);
    assert!(
        prefill > Duration::from_secs(1),
        "the prefill took {prefill:?}: too short for this test to show anything"
    );
    assert!(rounds >= 5, "{rounds} control rounds during {prefill:?}");
    assert!(
        worst < Duration::from_millis(250) && worst * 10 < prefill,
        "Info + EndSession took up to {worst:?} during a {prefill:?} prefill"
    );

    let beats: Vec<Instant> = registry
        .heard
        .lock()
        .unwrap()
        .heartbeats
        .iter()
        .copied()
        .filter(|t| *t >= started && *t <= ended)
        .collect();
    let mut edges = vec![started];
    edges.extend(beats);
    edges.push(ended);
    let longest_gap = edges.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!(
        "prefill {prefill:?}: {rounds} control rounds, slowest {worst:?}; longest heartbeat gap {longest_gap:?}"
    );
    assert!(
        longest_gap < Duration::from_millis(500),
        "heartbeats (every 100 ms) paused for {longest_gap:?} during a {prefill:?} prefill"
    );
}

/// A session decoding while another session's prefill of seconds runs finishes its steps
/// before that prefill does; both answer what the model computes in one pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_decodes_while_another_prefills() {
    neuroshard_model::tch::set_num_threads(1);
    let model = support::model();
    let url = support::serve(support::state(support::model(), OPTIONS), None).await;
    let mut worker = client(&url).await;
    let short = session_id();
    let short_tokens = tokens(16, 2);
    worker
        .forward(request(&short, &short_tokens[..8], 0))
        .await
        .unwrap();

    let long = long_prefill(url.clone(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!long.is_finished(), "the prefill should still be running");
    let mut last = None;
    for position in 8..16 {
        let response = worker
            .forward(request(
                &short,
                &short_tokens[position..=position],
                position,
            ))
            .await
            .unwrap();
        assert_eq!(response.position as usize, position + 1);
        last = Some(response);
    }
    let short_done = Instant::now();
    let (long_response, long_done) = long.await.unwrap();
    eprintln!(
        "8 decode steps done {:?} before the prefill",
        long_done.saturating_duration_since(short_done)
    );
    assert!(
        short_done < long_done,
        "the decoding session waited for the other's prefill ({:?} after it)",
        short_done - long_done
    );
    let diff = max_abs_diff(&logits(&last.unwrap()), &last_logits(&model, &short_tokens));
    assert!(diff < 1e-3, "decoded logits differ by {diff}");
    let diff = max_abs_diff(
        &logits(&long_response),
        &last_logits(&model, &tokens(LONG, 1)),
    );
    assert!(diff < 1e-3, "chunked prefill logits differ by {diff}");
}

/// Sessions at different positions send decode steps together (queued behind a prefill
/// chunk): they run as batched passes, and each gets what it gets alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decode_steps_of_several_sessions_run_as_one_batch() {
    neuroshard_model::tch::set_num_threads(1);
    const SESSIONS: usize = 6;
    const STEPS: usize = 4;
    let model = support::model();
    let state = support::state(support::model(), OPTIONS);
    let url = support::serve(state.clone(), None).await;
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let id = session_id();
        let all = tokens(3 + 2 * i + STEPS, i as i64 + 10);
        let prompt = all.len() - STEPS;
        client(&url)
            .await
            .forward(request(&id, &all[..prompt], 0))
            .await
            .unwrap();
        sessions.push((id, all, prompt));
    }
    let long = long_prefill(url.clone(), 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let steps: Vec<_> = sessions
        .into_iter()
        .map(|(id, all, prompt)| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut worker = client(&url).await;
                let mut last = None;
                for position in prompt..all.len() {
                    let response = worker
                        .forward(request(&id, &all[position..=position], position))
                        .await
                        .unwrap();
                    last = Some(logits(&response));
                }
                (all, last.unwrap())
            })
        })
        .collect();
    for step in steps {
        let (all, got) = step.await.unwrap();
        let diff = max_abs_diff(&got, &last_logits(&model, &all));
        assert!(diff < 1e-3, "a batched session's logits differ by {diff}");
    }
    long.await.unwrap();
    let largest = state.loaded().unwrap().compute.largest_batch();
    assert!(
        largest >= 2,
        "decode steps never shared a pass (largest {largest})"
    );
}
