//! One inference request is one trace across processes: with `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! the gateway's generation span and every shard-worker hop it calls (each in its own process)
//! share one trace id at the collector, the hops as children of the generation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use fake_opentelemetry_collector::FakeCollectorServer;
use neuroshard_local::http_request;
use neuroshard_local::{LocalSwarm, SwarmOptions};

const KEY: &str = "sk-trace-test-0123456789";

#[test]
fn a_completion_is_one_trace_across_the_gateway_and_worker_processes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut collector = runtime.block_on(FakeCollectorServer::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, _, _) = support::checkpoints::seeded_checkpoint(dir.path(), 384, 4);
    let mut options = SwarmOptions::new(ckpt, dir.path().join("state"), support::bin_dir());
    options.http_port = 0;
    options.api_key = KEY.into();
    options.env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.endpoint())];
    let swarm = LocalSwarm::start(&options, Duration::from_secs(120), |_| {}).unwrap();
    let reply = http_request(
        swarm.gateway_port,
        "POST",
        "/v1/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {KEY}")),
        ],
        r#"{"model":"neurollm","prompt":"the king hath","max_tokens":5,"temperature":0}"#,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    // SIGTERM: every process flushes its batched spans before exiting.
    swarm.stop();

    let spans = runtime.block_on(collector.exported_spans(10, Duration::from_secs(15)));
    let generate = spans
        .iter()
        .find(|s| s.name == "generate")
        .unwrap_or_else(|| panic!("no generate span among {} spans", spans.len()));
    let hops: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "neuroshard.worker.v1.ShardWorker/Forward")
        .filter(|s| s.trace_id == generate.trace_id)
        .collect();
    // Two stages × (prefill + 4 decode steps); each hop is a child of the generation.
    assert!(
        hops.len() >= 10,
        "{} hop spans in the request's trace",
        hops.len()
    );
    assert!(hops.iter().all(|h| h.parent_span_id == generate.span_id));
}
