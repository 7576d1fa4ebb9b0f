//! The gateway's engine against real processes: PostgreSQL, the registry and four shard
//! workers (two pipelines of two stages). Generation routed through the workers gives the same
//! tokens as the in-process model, and killing the worker serving a hop mid-generation
//! (kill -9), or freezing it (SIGSTOP: connection open, no answers), changes nothing in the
//! output: the hop moves to a replica, which replays the session, and the stream goes on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use neuroshard_local::{LocalSwarm, SwarmOptions};
use neuroshard_model::Shard;
use neuroshard_model::generate::{GenerateOptions, generate};
use neuroshard_swarm_gateway::engine::{EngineConfig, SwarmEngine};
use neuroshard_swarm_gateway::generator::{FinishReason, GenerationJob, Generator, Step};
use neuroshard_text::sampling::SamplingParams;
use tokio_stream::StreamExt;

struct Fixture {
    swarm: LocalSwarm,
    model: Shard,
    _dir: tempfile::TempDir,
}

/// A seeded model saved as a checkpoint (with a tokenizer, which the gateway process needs),
/// served by the local swarm: four workers, two pipelines of two stages.
fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, model, _) = support::checkpoints::seeded_checkpoint(dir.path(), 512, 5);
    let mut options = SwarmOptions::new(ckpt, dir.path().join("state"), support::bin_dir());
    options.http_port = 0;
    options.api_key = "sk-engine-test-0123456789".into();
    let swarm = LocalSwarm::start(&options, Duration::from_secs(120), |_| {}).unwrap();
    Fixture {
        swarm,
        model,
        _dir: dir,
    }
}

async fn engine(swarm: &LocalSwarm) -> SwarmEngine {
    // The local swarm speaks mutual TLS by default; this engine dials with the harness's
    // certificate under the run's CA.
    assert!(
        swarm.registry_url.starts_with("https://"),
        "{}",
        swarm.registry_url
    );
    let mut config = EngineConfig::new(&swarm.registry_url, "neurollm-test");
    config.tls = swarm.client_tls.clone();
    config.connect_timeout = Duration::from_secs(30);
    config.backoff = Duration::from_millis(200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let engine = loop {
        match SwarmEngine::connect(config.clone()).await {
            Ok(engine) => break engine,
            Err(e) => {
                assert!(Instant::now() < deadline, "{}", e.message);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Ready with every worker placed: two full pipelines, each layer held twice.
    loop {
        let status = engine.status();
        let placed = status
            .nodes
            .iter()
            .filter(|n| n.state == "live" && n.span[1] > n.span[0])
            .count();
        let replicated =
            !status.layers.is_empty() && status.layers.iter().all(|l| l.holders.len() >= 2);
        if engine.ready() && placed == 4 && replicated {
            break;
        }
        assert!(Instant::now() < deadline, "swarm not ready: {status:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine
}

fn reference(
    model: &Shard,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &SamplingParams,
) -> Vec<u32> {
    generate(
        model,
        prompt,
        &GenerateOptions {
            max_tokens,
            sampling: sampling.clone(),
            stop_token: None,
        },
        |_| Ok(()),
    )
    .unwrap()
}

fn job(id: &str, prompt: &[u32], max_tokens: u32, sampling: SamplingParams) -> GenerationJob {
    GenerationJob {
        request_id: id.into(),
        prompt: prompt.to_vec(),
        max_tokens,
        sampling,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_generation_matches_the_model_and_survives_kill_9() {
    let mut f = start();
    let engine = engine(&f.swarm).await;
    let prompt: Vec<u32> = vec![17, 3, 99, 250, 7, 42, 8];
    let greedy = SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    };

    // Undisturbed: greedy and seeded sampling equal the in-process model.
    for (name, sampling) in [
        ("greedy", greedy.clone()),
        (
            "seeded",
            SamplingParams {
                temperature: 0.9,
                top_k: 50,
                top_p: 0.95,
                seed: 1234,
            },
        ),
    ] {
        let expected = reference(&f.model, &prompt, 24, &sampling);
        let mut stream = engine.generate(job(name, &prompt, 24, sampling));
        let mut got = Vec::new();
        let mut finish = None;
        while let Some(step) = stream.next().await {
            match step.unwrap() {
                Step::Token(t) => got.push(t),
                Step::Finished(reason) => finish = Some(reason),
            }
        }
        assert_eq!(got, expected, "{name}");
        assert_eq!(finish, Some(FinishReason::Length));
    }

    // Failover: kill -9 the worker serving the second hop after 10 tokens.
    let expected = reference(&f.model, &prompt, 64, &greedy);
    let mut stream = engine.generate(job("failover", &prompt, 64, greedy.clone()));
    let mut got = Vec::new();
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    let mut killed = None;
    while let Some(step) = stream.next().await {
        let Step::Token(t) = step.unwrap() else {
            continue;
        };
        got.push(t);
        gaps.push(last.elapsed());
        last = Instant::now();
        if got.len() == 10 {
            let status = engine.status();
            let request = status.requests.iter().find(|r| r.id == "failover").unwrap();
            // kill -9 the worker serving the last hop, as a crash would.
            let victim = request.route.last().unwrap().clone();
            f.swarm.worker_mut(&victim).unwrap().process.kill();
            killed = Some((victim, got.len()));
        }
    }
    let (victim, at) = killed.expect("a worker was killed");
    assert_eq!(got, expected, "output changed by the failover");
    let status = engine.status();
    let request = status.requests.iter().find(|r| r.id == "failover").unwrap();
    assert_eq!(request.state, "done");
    assert!(request.failovers >= 1, "{request:?}");
    assert!(!request.route.contains(&victim), "{request:?}");
    let pause = gaps[at];
    let typical = {
        let mut g: Vec<_> = gaps[1..].to_vec();
        g.sort();
        g[g.len() / 2]
    };
    println!(
        "failover: pause {:.1} ms at token {} (median token gap {:.1} ms)",
        pause.as_secs_f64() * 1000.0,
        at + 1,
        typical.as_secs_f64() * 1000.0
    );

    // A hang: SIGSTOP the worker serving the first hop (its span still has a live replica).
    // The connection stays open; only the hop deadline and the liveness probe notice, and
    // the output is still the undisturbed one.
    let expected = reference(&f.model, &prompt, 40, &greedy);
    let mut stream = engine.generate(job("hang", &prompt, 40, greedy.clone()));
    let mut got = Vec::new();
    let mut frozen = None;
    let mut pause = Duration::ZERO;
    let mut last = Instant::now();
    while let Some(step) = stream.next().await {
        let Step::Token(t) = step.unwrap() else {
            continue;
        };
        got.push(t);
        // The generation task may be a token ahead of this reader: the stall shows in one
        // of the gaps after the freeze, not necessarily the next.
        if frozen.is_some() {
            pause = pause.max(last.elapsed());
        }
        last = Instant::now();
        if got.len() == 10 {
            let status = engine.status();
            let request = status.requests.iter().find(|r| r.id == "hang").unwrap();
            let node = request.route[0].clone();
            let pid = f.swarm.worker_mut(&node).unwrap().process.pid();
            support::signal(pid, "STOP");
            frozen = Some((node, pid));
        }
    }
    let (node, pid) = frozen.expect("a worker was frozen");
    support::signal(pid, "CONT");
    assert_eq!(got, expected, "output changed by the hang");
    let status = engine.status();
    let request = status.requests.iter().find(|r| r.id == "hang").unwrap();
    assert_eq!(request.state, "done");
    assert!(request.failovers >= 1, "{request:?}");
    assert!(!request.route.contains(&node), "{request:?}");
    // At least the 200 ms deadline passed before the hop moved.
    assert!(pause >= Duration::from_millis(200), "{pause:?}");
    println!(
        "hang: longest gap after the freeze {:.1} ms",
        pause.as_secs_f64() * 1000.0
    );
}
