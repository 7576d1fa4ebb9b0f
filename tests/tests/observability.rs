//! Observability of the real registry process: it exports its gRPC spans over OTLP to a
//! collector (continuing the caller's `traceparent`), flushes them on SIGTERM, and serves
//! Prometheus `/metrics` with per-method call counts and assignment gauges.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::Duration;

use fake_opentelemetry_collector::FakeCollectorServer;
use neuroshard_local::{LocalRegistry, RegistryToml, free_port};
use neuroshard_proto::registry::v1::GetAssignmentRequest;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_exports_traces_and_serves_metrics() {
    let mut collector = FakeCollectorServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port().unwrap();
    let mut launcher = support::launcher(dir.path());
    launcher.env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.endpoint()),
        ("RUST_LOG".into(), "info".into()),
    ];
    let LocalRegistry { registry, pg: _pg } = LocalRegistry::start(
        &launcher,
        RegistryToml::new("neuroshard-local")
            .tls(&neuroshard_runtime::tls::TlsFiles::insecure_plaintext())
            .unwrap()
            .metrics_port(metrics_port),
        Duration::from_secs(20),
    )
    .unwrap();
    let mut client = support::registry_client(&registry.url).await;
    let mut request = tonic::Request::new(GetAssignmentRequest {});
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    client.get_assignment(request).await.unwrap();

    let response = tokio::task::spawn_blocking(move || {
        neuroshard_local::http_get(metrics_port, "/metrics", Duration::from_secs(10))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let page = response.body;
    for expected in [
        r#"grpc_server_handled_total{service="neuroshard.registry.v1.LayerRegistry",method="GetAssignment",code="Ok"} 1"#,
        "registry_assignment_version",
        r#"registry_nodes{state="live"} 0"#,
        "registry_replica_deficit",
    ] {
        assert!(page.contains(expected), "missing {expected} in:\n{page}");
    }

    // SIGTERM: a clean stop flushes the batched spans to the collector.
    let mut process = registry.process;
    support::signal(process.pid(), "TERM");
    let status = tokio::task::spawn_blocking(move || process.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "registry exited with {status}");

    let spans = collector.exported_spans(1, Duration::from_secs(10)).await;
    let span = spans
        .iter()
        .find(|s| s.name == "neuroshard.registry.v1.LayerRegistry/GetAssignment")
        .unwrap_or_else(|| panic!("no GetAssignment span in {spans:#?}"));
    assert_eq!(span.trace_id, TRACE_ID);
    assert_eq!(span.parent_span_id, CALLER_SPAN);
    assert_eq!(span.kind, "SPAN_KIND_SERVER");
}
