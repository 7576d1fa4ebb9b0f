#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A real tonic server and client in one process: the client's span context crosses the call in
//! `traceparent` metadata and the server's span continues that trace; the metrics layer counts
//! the call by method and code, and `/metrics` serves it.

use std::time::Duration;

use neuroshard_runtime::telemetry::{metrics, propagation};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_crosses_a_grpc_call_and_metrics_count_it() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    propagation::install_propagator();

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("demo", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .trace_fn(propagation::server_span)
            .layer(metrics::GrpcMetricsLayer)
            .add_service(health)
            .serve_with_incoming(neuroshard_runtime::grpc::incoming(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    let caller = tracing::info_span!("caller");
    let status = async {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: "demo".into(),
        });
        propagation::inject(&mut request);
        assert!(request.metadata().get("traceparent").is_some());
        client.check(request).await.unwrap().into_inner().status
    }
    .instrument(caller)
    .await;
    assert_eq!(status, ServingStatus::Serving as i32);
    let missing = client
        .check(HealthCheckRequest {
            service: "no-such-service".into(),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    // Spans end when the server finishes the response; give it a moment, then flush.
    tokio::time::sleep(Duration::from_millis(200)).await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let caller = spans
        .iter()
        .find(|s| s.name == "caller")
        .expect("caller span");
    let server = spans
        .iter()
        .find(|s| {
            s.name == "grpc.health.v1.Health/Check"
                && s.span_context.trace_id() == caller.span_context.trace_id()
        })
        .unwrap_or_else(|| panic!("no server span in the caller's trace: {spans:#?}"));
    assert_eq!(server.parent_span_id, caller.span_context.span_id());
    // The call without traceparent started its own trace.
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name == "grpc.health.v1.Health/Check")
            .count(),
        2
    );

    let text = metrics::render();
    assert!(
        text.contains(
            r#"grpc_server_handled_total{service="grpc.health.v1.Health",method="Check",code="Ok"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"grpc_server_handled_total{service="grpc.health.v1.Health",method="Check",code="NotFound"} 1"#
        ),
        "{text}"
    );

    let server = metrics::serve(Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    let port = server.addr.port();
    let response = tokio::task::spawn_blocking(move || {
        neuroshard_local::http_get(port, "/metrics", Duration::from_secs(10))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.body;
    assert!(body.contains("grpc_server_handling_seconds"), "{body}");
}
