//! The routed engine against an in-process swarm (fake registry and workers over gRPC on
//! loopback, see `fake_swarm`): output equal to the whole model's with and without failover,
//! replay within a memory budget, deadlines that grow with the work, faulty workers, a span
//! with no holder for a while, and the observations the gateway reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_swarm;
mod support;

use std::time::Duration;

use fake_swarm::{Call, FakeSwarm, collect, connected, greedy, job, reference};
use neuroshard_swarm_gateway::Generator;
use neuroshard_swarm_gateway::engine::SwarmEngine;

const PROMPT: [u32; 7] = [17, 3, 9, 25, 7, 42, 8];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_output_equals_the_model_and_survives_a_crash() {
    let mut swarm = FakeSwarm::two_stages().await;
    let engine = connected(swarm.engine_config()).await;
    let expected = reference(&PROMPT, 24, &greedy());
    let got = collect(&engine, job("plain", &PROMPT, 24), |_| {})
        .await
        .unwrap();
    assert_eq!(got, expected);

    // Crash whichever node serves the second hop after 8 tokens.
    let mut victim = None;
    let got = collect(&engine, job("crash", &PROMPT, 24), |n| {
        if n == 8 {
            let status = engine.status();
            let request = status.requests.iter().find(|r| r.id == "crash").unwrap();
            let id = request.route[1].clone();
            swarm.kill(&id);
            victim = Some(id);
        }
    })
    .await
    .unwrap();
    assert_eq!(got, expected, "the failover changed the output");
    let victim = victim.unwrap();
    let request = engine
        .status()
        .requests
        .into_iter()
        .find(|r| r.id == "crash")
        .unwrap();
    assert!(request.failovers >= 1 && !request.route.contains(&victim));
}

/// Crashes the node serving the last hop after `at` tokens of a generation; its output.
async fn crash_last_hop(
    swarm: &mut FakeSwarm,
    engine: &SwarmEngine,
    id: &str,
    at: usize,
) -> (Vec<u32>, String) {
    let mut victim = None;
    let got = collect(engine, job(id, &PROMPT, 24), |n| {
        if n == at {
            let status = engine.status();
            let request = status.requests.iter().find(|r| r.id == id).unwrap();
            let node = request.route.last().unwrap().clone();
            swarm.kill(&node);
            victim = Some(node);
        }
    })
    .await
    .unwrap();
    (got, victim.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_replay_budget_a_failover_recomputes_and_the_output_is_the_same() {
    let expected = reference(&PROMPT, 24, &greedy());

    // Unbounded: the replacement replays from the hidden states the gateway kept; the first
    // hop's node is never asked to replay.
    let mut swarm = FakeSwarm::two_stages().await;
    let engine = connected(swarm.engine_config()).await;
    let (got, _) = crash_last_hop(&mut swarm, &engine, "kept", 8).await;
    assert_eq!(got, expected);
    let first_hop_replays: usize = ["w0", "w1"]
        .iter()
        .map(|w| swarm.worker(w).replays().len())
        .sum();
    assert_eq!(first_hop_replays, 0);

    // A budget too small for one step's hidden states: nothing is kept, and the replacement's
    // input is recomputed by the first hop replaying its session from the token ids.
    let mut swarm = FakeSwarm::two_stages().await;
    let mut config = swarm.engine_config();
    config.replay_bytes_per_generation = 8;
    let engine = connected(config).await;
    let (got, victim) = crash_last_hop(&mut swarm, &engine, "recomputed", 8).await;
    assert_eq!(got, expected, "recomputing changed the output");
    let first_hop: Vec<Call> = ["w0", "w1"]
        .iter()
        .flat_map(|w| swarm.worker(w).replays())
        .collect();
    // Prompt and 8 generated tokens, less the one in flight (the 8th is not consumed yet,
    // or is: the generation may run a token ahead of the reader).
    assert_eq!(first_hop.len(), 1, "{first_hop:?}");
    assert!(
        matches!(first_hop[0], Call::Replay { tokens: true, positions } if positions >= PROMPT.len() + 7),
        "{first_hop:?}"
    );
    let replacement = if victim == "w2" { "w3" } else { "w2" };
    let replayed = swarm.worker(replacement).replays();
    assert!(
        matches!(replayed[..], [Call::Replay { tokens: false, .. }]),
        "{replayed:?}"
    );

    // The gateway-wide budget works the same way.
    let mut swarm = FakeSwarm::two_stages().await;
    let mut config = swarm.engine_config();
    config.replay_bytes_total = 8;
    let engine = connected(config).await;
    let (got, _) = crash_last_hop(&mut swarm, &engine, "shared", 5).await;
    assert_eq!(got, expected);
    let recomputed: usize = ["w0", "w1"]
        .iter()
        .map(|w| swarm.worker(w).replays().len())
        .sum();
    assert_eq!(recomputed, 1);
}

/// Every worker takes `per_position` a position and claims `claimed_tokens_per_s`.
async fn slow_swarm(per_position: Duration, claimed_tokens_per_s: f64) -> FakeSwarm {
    let mut swarm = FakeSwarm::two_stages().await;
    for w in &mut swarm.workers {
        w.claimed_tokens_per_s = claimed_tokens_per_s;
        w.update(|b| b.delay_per_position = per_position);
    }
    swarm.publish();
    swarm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_on_slow_nodes_gets_a_deadline_that_fits_its_length() {
    // 40 positions at 15 ms: 600 ms a prefill hop, past the fixed 250 ms part of the deadline
    // on every replica (which used to be the whole deadline: 503 after trying them all).
    let per_position = Duration::from_millis(15);
    let prompt: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 48).collect();
    let expected = reference(&prompt, 4, &greedy());
    let swarm = slow_swarm(per_position, 1000.0 / 15.0).await;
    let mut config = swarm.engine_config();
    config.prefill_deadline = Duration::from_millis(250);
    let engine = connected(config).await;
    let got = collect(&engine, job("long", &prompt, 4), |_| {}).await;
    assert_eq!(got.unwrap(), expected);
    let request = engine
        .status()
        .requests
        .into_iter()
        .find(|r| r.id == "long")
        .unwrap();
    assert_eq!(request.failovers, 0, "{request:?}");

    // Nodes that claim far more than they do: the deadline from the claim passes, but a node
    // that answers its liveness probe keeps its call; what it took is measured for next time.
    let swarm = slow_swarm(per_position, 1e6).await;
    let mut config = swarm.engine_config();
    config.prefill_deadline = Duration::from_millis(250);
    let engine = connected(config).await;
    for id in ["optimistic", "measured"] {
        let got = collect(&engine, job(id, &prompt, 4), |_| {}).await;
        assert_eq!(got.unwrap(), expected, "{id}");
        let request = engine
            .status()
            .requests
            .into_iter()
            .find(|r| r.id == id)
            .unwrap();
        assert_eq!(request.failovers, 0, "{request:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_returning_nan_is_failed_over_and_backed_off() {
    let expected = reference(&PROMPT, 12, &greedy());
    // w1 (first stage) and w3 (last stage) compute NaN; both claim to be the fastest, so
    // routing tries them first.
    let mut swarm = FakeSwarm::two_stages().await;
    for (id, claim) in [("w0", 10.0), ("w1", 1e6), ("w2", 10.0), ("w3", 1e6)] {
        let w = swarm.worker_mut(id);
        w.claimed_tokens_per_s = claim;
        if claim > 100.0 {
            w.update(|b| b.nan = true);
        }
    }
    swarm.publish();
    let mut config = swarm.engine_config();
    config.backoff = std::time::Duration::from_secs(30);
    let engine = connected(config).await;
    let got = collect(&engine, job("nan", &PROMPT, 12), |_| {}).await;
    assert_eq!(got.unwrap(), expected, "a NaN reached the client");
    let status = engine.status();
    let request = status.requests.iter().find(|r| r.id == "nan").unwrap();
    assert_eq!(request.route, ["w0", "w2"], "{request:?}");
    assert_eq!(request.failovers, 2, "{request:?}");
    // Each faulty node is blamed itself (not the node it fed), and avoided for a while.
    for node in &status.nodes {
        let backed_off = node.backed_off_until_ms.is_some();
        assert_eq!(backed_off, node.id == "w1" || node.id == "w3", "{node:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_swarm_has_an_architecture_requests_are_503_not_400() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    let mut swarm = FakeSwarm::two_stages().await;
    swarm.with_architecture = false;
    swarm.publish();
    let mut config = swarm.engine_config();
    config.model_name = support::MODEL.into();
    let engine = SwarmEngine::connect(config).await.unwrap();
    let state = neuroshard_swarm_gateway::AppState::new(
        support::config(),
        support::tokenizer(),
        std::sync::Arc::new(engine),
    )
    .unwrap();
    let app = neuroshard_swarm_gateway::app(state);
    for (path, body) in [
        (
            "/v1/completions",
            serde_json::json!({"model": support::MODEL, "prompt": "the fox", "max_tokens": 4}),
        ),
        (
            "/v1/chat/completions",
            serde_json::json!({"model": support::MODEL, "stream": true,
                "messages": [{"role": "user", "content": "the fox"}]}),
        ),
    ] {
        let request = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", support::KEY))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(error["error"]["type"], "server_error", "{error}");
        assert_eq!(error["error"]["code"], "model_not_ready", "{error}");
    }
}

/// The last holder of [2, 4) dies mid-stream; the registry then places the span on a new node,
/// which reports "not loaded" for a while before it serves. The request waits (within its
/// patience), replays on the new node and ends with the undisturbed output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_without_a_live_holder_is_waited_for_and_the_output_is_the_same() {
    let expected = reference(&PROMPT, 48, &greedy());
    let mut swarm = FakeSwarm::start(&[(0, 2), (0, 2), (2, 4)]).await;
    // Slow enough that the stream is still running when the span comes back.
    swarm
        .worker("w2")
        .update(|b| b.delay_per_position = Duration::from_millis(5));
    let mut config = swarm.engine_config();
    config.route_patience = Duration::from_secs(10);
    let engine = connected(config).await;
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel();
    let mut killed_tx = Some(killed_tx);
    let generation = collect(&engine, job("patient", &PROMPT, 48), |n| {
        if n == 4
            && let Some(tx) = killed_tx.take()
        {
            let _ = tx.send(());
        }
    });
    let churn = async {
        killed_rx.await.unwrap();
        swarm.kill("w2");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let loading = fake_swarm::Behaviour {
            loading: true,
            ..Default::default()
        };
        swarm.join("w3", 2, 4, loading).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        swarm.worker("w3").update(|b| b.loading = false);
    };
    let (got, ()) = tokio::join!(generation, churn);
    assert_eq!(got.unwrap(), expected, "the wait changed the output");
    let status = engine.status();
    let request = status.requests.iter().find(|r| r.id == "patient").unwrap();
    assert!(request.failovers >= 1, "{request:?}");
    assert_eq!(request.route.last().map(String::as_str), Some("w3"));
    assert!(
        !swarm.worker("w3").replays().is_empty(),
        "w3 never replayed"
    );
}

/// With nothing coming back, the request fails once its patience is spent: not at once, and
/// not much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_route_patience_the_request_fails_naming_the_missing_layers() {
    let mut swarm = FakeSwarm::start(&[(0, 2), (2, 4)]).await;
    let mut config = swarm.engine_config();
    config.route_patience = Duration::from_millis(800);
    let engine = connected(config).await;
    swarm.kill("w1");
    let started = std::time::Instant::now();
    let err = collect(&engine, job("impatient", &PROMPT, 8), |_| {})
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.kind, neuroshard_common::ErrorKind::Unavailable);
    assert!(err.message.contains("[2, 4)"), "{}", err.message);
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

/// With a key, the gateway reports what it measured of the nodes it used, signed, with
/// increasing nonces; a registry that refuses the reports does not disturb serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reports_measured_throughput_signed_with_its_key() {
    use neuroshard_common::identity::NodeKey;
    use neuroshard_common::signing::verify;
    use neuroshard_proto::registry::v1::ObservationsRequest;
    use neuroshard_swarm_gateway::engine::observer::ObserverConfig;
    use prost::Message;

    let swarm = FakeSwarm::two_stages().await;
    let key = std::sync::Arc::new(NodeKey::generate());
    let mut config = swarm.engine_config();
    config.observer = Some(ObserverConfig {
        key: key.clone(),
        network_id: "observer-test".into(),
        interval: Duration::from_millis(100),
        min_samples: 2,
    });
    let engine = connected(config).await;
    let expected = reference(&PROMPT, 16, &greedy());
    assert_eq!(
        collect(&engine, job("measured", &PROMPT, 16), |_| {})
            .await
            .unwrap(),
        expected
    );
    let route = engine
        .status()
        .requests
        .into_iter()
        .find(|r| r.id == "measured")
        .unwrap()
        .route;
    let mut used: Vec<String> = route.clone();
    used.sort_unstable();
    // A report holds the nodes with enough new samples at its tick, so the route's nodes may
    // come in more than one report: read them all until every node of the route is in.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (reported, last_nonce) = loop {
        let mut reported = std::collections::BTreeSet::new();
        let mut last_nonce = 0;
        for report in swarm.registry.reports() {
            let verified = verify(&report, "observer-test", "ObservationsRequest").unwrap();
            assert_eq!(verified.node_id, key.node_id());
            assert!(verified.nonce > last_nonce, "nonces must increase");
            last_nonce = verified.nonce;
            let body = ObservationsRequest::decode(verified.payload.as_slice()).unwrap();
            for node in &body.nodes {
                assert!(node.samples >= 2, "{node:?}");
                assert!(
                    node.tokens_per_second.is_finite() && node.tokens_per_second > 0.0,
                    "{node:?}"
                );
                reported.insert(node.node_id.clone());
            }
        }
        if reported.len() >= used.len() {
            break (reported, last_nonce);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reports: {reported:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reported.into_iter().collect::<Vec<_>>(), used);

    // Refused reports (a registry that does not list this observer): serving goes on, and
    // later reports carry larger nonces.
    swarm
        .registry
        .refuse_reports
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let before = swarm.registry.reports().len();
    assert_eq!(
        collect(&engine, job("after", &PROMPT, 16), |_| {})
            .await
            .unwrap(),
        expected
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while swarm.registry.reports().len() == before {
        assert!(std::time::Instant::now() < deadline, "no second report");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = verify(
        swarm.registry.reports().last().unwrap(),
        "observer-test",
        "ObservationsRequest",
    )
    .unwrap();
    assert!(later.nonce > last_nonce);
}
