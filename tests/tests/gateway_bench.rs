//! Benchmarks of the gateway over the local swarm's real processes (PostgreSQL, registry,
//! shard workers, gateway), figures for BENCHMARKS.md. Ignored by default (minutes each);
//! `make bench` runs them:
//!
//! `scripts/cargo.sh test --release -p neuroshard-tests --test gateway_bench -- --ignored --nocapture --test-threads 1`
//!
//! The model is 8 layers × 1024 wide, so that a token costs what a real layer costs rather
//! than what a toy's does. It is untrained, and an untrained model samples bytes that are not
//! whole characters, which a stream holds back; its head is therefore masked to tokens that
//! decode to ASCII text, so that every token is one streamed event and arrival times measure
//! tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use neuroshard_common::ModelConfig;
use neuroshard_common::model_config::swiglu_intermediate;
use neuroshard_local::{LocalSwarm, SwarmOptions};
use neuroshard_local::{http_get, http_request, open_request};
use neuroshard_model::Shard;
use neuroshard_model::generate::{GenerateOptions, generate};
use neuroshard_model::tch::{self, Tensor};
use neuroshard_text::sampling::SamplingParams;
use neuroshard_text::tokenizer::TextTokenizer;
use serde_json::{Value, json};

const KEY: &str = "sk-bench-0123456789abcdef";
const TIMEOUT: Duration = Duration::from_secs(120);
/// libtorch threads, in-process and in every worker: the machine's two cores.
const THREADS: usize = 2;
const PROMPT: &str = "the king hath spoken and the queen doth answer thou noble lord of the crown";

struct Bench {
    swarm: LocalSwarm,
    model: Shard,
    tokenizer: TextTokenizer,
    _dir: tempfile::TempDir,
}

fn bench_config() -> ModelConfig {
    ModelConfig {
        hidden_size: 1024,
        num_layers: 8,
        num_heads: 16,
        num_kv_heads: 4,
        intermediate_size: swiglu_intermediate(1024, 256),
        max_seq_len: 512,
        ..ModelConfig::small(512)
    }
}

/// Zeroes the head rows of every token that does not decode to ASCII text on its own (and of
/// end-of-sequence): their logits become 0 while about half the others are positive, so
/// greedy decoding never picks them.
fn mask_to_ascii(model: &mut Shard, tokenizer: &TextTokenizer) {
    let masked: Vec<i64> = (0..tokenizer.vocab_size() as u32)
        .filter(|&id| {
            id == tokenizer.eos_id()
                || tokenizer
                    .decode(&[id])
                    .map(|t| t.is_empty() || !t.is_ascii())
                    .unwrap_or(true)
        })
        .map(i64::from)
        .collect();
    let head = model.var_store().variables()["lm_head.weight"].shallow_clone();
    tch::no_grad(|| {
        let mut head = head;
        let _ = head.index_fill_(0, &Tensor::from_slice(&masked), 0.0);
    });
}

fn start(workers: usize, dir: tempfile::TempDir) -> Bench {
    start_with(workers, dir, Vec::new(), false)
}

/// [`start`] with extra environment for every process (e.g. a worker setting), and with
/// plaintext gRPC instead of the default mutual TLS when `plaintext`.
fn start_with(
    workers: usize,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    plaintext: bool,
) -> Bench {
    tch::set_num_threads(THREADS as i32);
    let (ckpt, model, tokenizer) =
        support::checkpoints::checkpoint_for(dir.path(), &bench_config(), 77, mask_to_ascii);
    let mut options = SwarmOptions::new(ckpt, dir.path().join("state"), support::bin_dir());
    options.workers = workers;
    options.http_port = 0;
    options.api_key = KEY.into();
    options.worker_threads = THREADS;
    options.env = env;
    options.plaintext = plaintext;
    let swarm =
        LocalSwarm::start(&options, Duration::from_secs(300), |m| eprintln!("  {m}")).unwrap();
    Bench {
        swarm,
        model,
        tokenizer,
        _dir: dir,
    }
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

/// Greedy tokens of the in-process model, and how long they took.
fn in_process(bench: &Bench, max_tokens: usize) -> (Vec<u32>, Duration) {
    let prompt = bench.tokenizer.encode(PROMPT).unwrap();
    let started = Instant::now();
    let tokens = generate(
        &bench.model,
        &prompt,
        &GenerateOptions {
            max_tokens,
            sampling: greedy(),
            stop_token: Some(bench.tokenizer.eos_id()),
        },
        |_| Ok(()),
    )
    .unwrap();
    (tokens, started.elapsed())
}

fn body(max_tokens: usize, stream: bool) -> String {
    json!({
        "model": "neurollm",
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
    .to_string()
}

fn headers() -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".to_string()),
        ("Authorization", format!("Bearer {KEY}")),
    ]
}

/// One non-streamed completion: its text, completion tokens and wall time.
fn complete(port: u16, max_tokens: usize) -> (String, u64, Duration) {
    let headers = headers();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let response = http_request(
        port,
        "POST",
        "/v1/completions",
        &headers,
        &body(max_tokens, false),
        TIMEOUT,
    )
    .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.body);
    let doc: Value = serde_json::from_str(&response.body).unwrap();
    (
        doc["choices"][0]["text"].as_str().unwrap().to_string(),
        doc["usage"]["completion_tokens"].as_u64().unwrap(),
        elapsed,
    )
}

/// A streamed completion read event by event.
struct Streamed {
    id: String,
    text: String,
    /// When each text event arrived.
    arrivals: Vec<Instant>,
}

/// Streams one completion; `on_event(n)` runs after the n-th text event (1-based).
fn stream(port: u16, max_tokens: usize, mut on_event: impl FnMut(usize, &str)) -> Streamed {
    let headers = headers();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let socket = open_request(
        port,
        "POST",
        "/v1/completions",
        &headers,
        &body(max_tokens, true),
        TIMEOUT,
    )
    .unwrap();
    let mut reader = BufReader::new(socket);
    let mut out = Streamed {
        id: String::new(),
        text: String::new(),
        arrivals: Vec::new(),
    };
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    if !line.starts_with("HTTP/1.1 200") {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        panic!("streamed completion refused: {line}{rest}");
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("stream ended without [DONE]: {:?}", out.text);
        }
        let Some(data) = line.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return out;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        let piece = chunk["choices"][0]["text"].as_str().unwrap_or_default();
        if piece.is_empty() {
            continue;
        }
        out.arrivals.push(Instant::now());
        out.text.push_str(piece);
        out.id = chunk["id"].as_str().unwrap_or_default().to_string();
        on_event(out.arrivals.len(), &out.id);
    }
}

fn status(port: u16) -> Value {
    let response = http_get(port, "/api/v1/status", TIMEOUT).unwrap();
    serde_json::from_str(&response.body).unwrap()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Nearest-rank percentile `p` (0–100).
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Tokens/s of greedy generation through the gateway over `workers / 2` stages, against the
/// same model generating in this process, alternating, medians.
fn throughput(workers: usize) {
    const TOKENS: usize = 64;
    const ROUNDS: usize = 5;
    let bench = start(workers, tempfile::tempdir().unwrap());
    let port = bench.swarm.gateway_port;
    let (expected, _) = in_process(&bench, TOKENS);
    let (text, _, _) = complete(port, TOKENS);
    assert_eq!(text, bench.tokenizer.decode(&expected).unwrap());
    let (mut local, mut routed) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (tokens, took) = in_process(&bench, TOKENS);
        local.push(tokens.len() as f64 / took.as_secs_f64());
        let (_, n, took) = complete(port, TOKENS);
        assert_eq!(n as usize, TOKENS);
        routed.push(n as f64 / took.as_secs_f64());
    }
    let (local, routed) = (median(&mut local), median(&mut routed));
    println!(
        "{}",
        json!({
            "bench": "gateway_throughput",
            "stages": workers / 2,
            "workers": workers,
            "tokens": TOKENS,
            "rounds": ROUNDS,
            "in_process_tokens_per_s": local,
            "gateway_tokens_per_s": routed,
            "ratio": routed / local,
        })
    );
    bench.swarm.stop();
}

#[test]
#[ignore = "benchmark: minutes, real processes"]
fn bench_throughput_two_stages() {
    throughput(4);
}

#[test]
#[ignore = "benchmark: minutes, real processes"]
fn bench_throughput_four_stages() {
    throughput(8);
}

/// Time to first token and aggregate tokens/s of 8 streams started together (two pipelines of
/// two stages; one stream alone beside it), on a swarm whose workers decode one session at a
/// time (`max_decode_batch = 1`), on one that batches the decode steps of concurrent sessions
/// (the default), both over mutual TLS (the default), and on the batched one over plaintext
/// gRPC, in this one run.
#[test]
#[ignore = "benchmark: minutes, real processes"]
fn bench_time_to_first_token() {
    let mut results = Vec::new();
    for (name, batch, plaintext) in [
        ("one_at_a_time", Some("1"), false),
        ("batched", None, false),
        ("batched_plaintext", None, true),
    ] {
        let env = batch
            .map(|b| {
                vec![(
                    "NEUROSHARD_WORKER_MAX_DECODE_BATCH".to_string(),
                    b.to_string(),
                )]
            })
            .unwrap_or_default();
        let mut figures = time_to_first_token(env, plaintext);
        figures["decode"] = json!(name);
        println!("{figures}");
        results.push(figures);
    }
    let ratio =
        |field: &str| results[1][field].as_f64().unwrap() / results[0][field].as_f64().unwrap();
    println!(
        "{}",
        json!({
            "bench": "gateway_time_to_first_token_batched_vs_one_at_a_time",
            "tokens_per_s_ratio": ratio("concurrent_tokens_per_s"),
            "ttft_p50_ratio": ratio("concurrent_p50_ms"),
            "ttft_p99_ratio": ratio("concurrent_p99_ms"),
        })
    );
}

fn time_to_first_token(env: Vec<(String, String)>, plaintext: bool) -> Value {
    const STREAMS: usize = 8;
    const ROUNDS: usize = 5;
    const TOKENS: usize = 16;
    let bench = start_with(4, tempfile::tempdir().unwrap(), env, plaintext);
    let port = bench.swarm.gateway_port;
    let first = |started: Instant, s: &Streamed| ms(s.arrivals[0] - started);
    let _ = stream(port, TOKENS, |_, _| {});
    let mut alone = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let s = stream(port, TOKENS, |_, _| {});
        alone.push(first(started, &s));
    }
    let mut concurrent = Vec::new();
    let mut tokens_per_s = Vec::new();
    for _ in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(STREAMS));
        let round_start = Instant::now();
        let handles: Vec<_> = (0..STREAMS)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let s = stream(port, TOKENS, |_, _| {});
                    (first(started, &s), s.arrivals.len())
                })
            })
            .collect();
        let mut events = 0;
        for h in handles {
            let (ttft, n) = h.join().unwrap();
            concurrent.push(ttft);
            events += n;
        }
        tokens_per_s.push(events as f64 / round_start.elapsed().as_secs_f64());
    }
    // Hop failures under the burst (each a replay on another node) explain a slow tail.
    let failovers: u64 = status(port)["requests"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["failovers"].as_u64()).sum())
        .unwrap_or(0);
    let figures = json!({
        "bench": "gateway_time_to_first_token",
        "failovers": failovers,
        "prompt_tokens": bench.tokenizer.encode(PROMPT).unwrap().len(),
        "streams": STREAMS,
        "samples": concurrent.len(),
        "alone_p50_ms": percentile(&mut alone.clone(), 50.0),
        "concurrent_p50_ms": percentile(&mut concurrent.clone(), 50.0),
        "concurrent_p99_ms": percentile(&mut concurrent, 99.0),
        "concurrent_tokens_per_s": median(&mut tokens_per_s),
    });
    bench.swarm.stop();
    figures
}

/// How a hop's node is taken away.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// `kill -9`: the connection breaks, the hop fails at once.
    Crash,
    /// SIGSTOP: the node hangs with its connection open; only the hop deadline notices.
    Freeze,
}

/// Waits until every worker is placed and loaded and no node is backed off at the gateway.
fn settle(swarm: &mut LocalSwarm) {
    swarm.wait_until_ready(TIMEOUT).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let doc = status(swarm.gateway_port);
        let now = doc["now_ms"].as_u64().unwrap();
        let clear = doc["nodes"].as_array().unwrap().iter().all(|n| {
            n["backed_off_until_ms"]
                .as_u64()
                .is_none_or(|until| until <= now)
        });
        if clear {
            return;
        }
        assert!(Instant::now() < deadline, "nodes stay backed off: {doc}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One streamed greedy generation with a fault at the node serving a hop after `at` tokens:
/// returns the pause (the gap between the tokens either side of the fault, from the fault)
/// and the median gap between other tokens.
fn faulted_generation(
    bench: &mut Bench,
    fault: Fault,
    hop: usize,
    tokens: usize,
    expected: &str,
) -> (f64, f64) {
    const AT: usize = 12;
    let port = bench.swarm.gateway_port;
    let mut victim: Option<(String, u32, Instant)> = None;
    let swarm = &mut bench.swarm;
    let s = stream(port, tokens, |n, id| {
        if n != AT {
            return;
        }
        let doc = status(port);
        let request = doc["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("request {id} not in {doc}"));
        let node = request["route"][hop].as_str().unwrap().to_string();
        let worker = swarm.worker_mut(&node).unwrap();
        let pid = worker.process.pid();
        match fault {
            Fault::Crash => worker.process.kill(),
            Fault::Freeze => support::signal(pid, "STOP"),
        }
        victim = Some((node, pid, Instant::now()));
    });
    let (node, pid, at) = victim.expect("the fault was injected");
    assert_eq!(s.text, expected, "output changed by the {fault:?}");
    let doc = status(port);
    let request = doc["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == s.id.as_str())
        .unwrap()
        .clone();
    assert!(request["failovers"].as_u64().unwrap() >= 1, "{request}");
    assert!(
        !request["route"].as_array().unwrap().contains(&json!(node)),
        "{request}"
    );
    let after = s.arrivals.iter().position(|t| *t > at).unwrap();
    let pause = ms(s.arrivals[after] - at);
    let mut gaps: Vec<f64> = s
        .arrivals
        .windows(2)
        .enumerate()
        .filter(|(i, _)| *i + 1 != after)
        .map(|(_, w)| ms(w[1] - w[0]))
        .collect();
    if fault == Fault::Freeze {
        support::signal(pid, "CONT");
    }
    bench.swarm.restart_worker(&node).unwrap();
    (pause, median(&mut gaps))
}

/// Failover pause over 20 crashes (kill -9) and 10 hangs (SIGSTOP) of the node serving a hop
/// of a streamed greedy generation, alternating the hop; each output checked against the
/// undisturbed one; the node is started again (or woken and restarted) between runs.
#[test]
#[ignore = "benchmark: minutes, real processes"]
fn bench_failover_pause() {
    const TOKENS: usize = 32;
    let mut bench = start(4, tempfile::tempdir().unwrap());
    let (expected, _) = in_process(&bench, TOKENS);
    let expected = bench.tokenizer.decode(&expected).unwrap();
    // One replay's cost: a prefill of what the replacement replays (prompt + tokens so far)
    // on the whole model, in this process — an upper bound for one span's replay.
    let replay_ms = {
        let prompt = bench.tokenizer.encode(PROMPT).unwrap();
        let options = GenerateOptions {
            max_tokens: 1,
            sampling: greedy(),
            stop_token: None,
        };
        let long: Vec<u32> = prompt.iter().chain(prompt.iter()).copied().collect();
        let mut samples: Vec<f64> = (0..5)
            .map(|_| {
                let started = Instant::now();
                generate(&bench.model, &long[..prompt.len() + 12], &options, |_| {
                    Ok(())
                })
                .unwrap();
                ms(started.elapsed())
            })
            .collect();
        median(&mut samples)
    };
    for (fault, runs) in [(Fault::Crash, 20), (Fault::Freeze, 10)] {
        let (mut pauses, mut gaps) = (Vec::new(), Vec::new());
        for run in 0..runs {
            settle(&mut bench.swarm);
            let (pause, gap) = faulted_generation(&mut bench, fault, run % 2, TOKENS, &expected);
            eprintln!("  {fault:?} {run}: pause {pause:.1} ms (token gap {gap:.1} ms)");
            pauses.push(pause);
            gaps.push(gap);
        }
        println!(
            "{}",
            json!({
                "bench": "gateway_failover_pause",
                "fault": format!("{fault:?}"),
                "runs": runs,
                "hop_deadline_ms": 200,
                "pause_p50_ms": percentile(&mut pauses.clone(), 50.0),
                "pause_p99_ms": percentile(&mut pauses, 99.0),
                "token_gap_p50_ms": median(&mut gaps),
                "replay_estimate_ms": replay_ms,
            })
        );
    }
    bench.swarm.stop();
}
