//! Observability for every service: structured logs, Prometheus metrics, and OpenTelemetry
//! traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! - this file: [`init`] installs the process-wide subscriber (JSON logs to stderr, filtered by
//!   `RUST_LOG`, default `info`; plus the OTLP trace layer when configured) and returns a
//!   [`Telemetry`] guard whose [`Telemetry::shutdown`] flushes spans still buffered;
//! - [`metrics`]: the Prometheus recorder, the `/metrics` HTTP endpoint, and a tower layer that
//!   counts and times every gRPC call a server handles;
//! - [`names`]: every metric name, one table per service, described once at start;
//! - [`propagation`]: W3C `traceparent` in gRPC metadata, so one request is one trace across
//!   the gateway and every worker hop.

pub mod metrics;
pub mod names;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use neuroshard_common::error::{Error, ErrorKind};

/// The environment variable that turns OTLP trace export on (standard OpenTelemetry name).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps the trace pipeline alive; call [`Telemetry::shutdown`] before exiting so buffered
/// spans are sent.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting_traces(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Flushes and stops trace export.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// Installs logging (and OTLP tracing when [`OTLP_ENDPOINT_ENV`] is set) for `service`, and
/// the W3C trace-context propagator. Must run inside a Tokio runtime when OTLP is on (the
/// exporter's gRPC channel lives there). A second call in one process changes nothing.
pub fn init(service: &str) -> Result<Telemetry, Error> {
    propagation::install_propagator();
    // Metrics recorded before a recorder exists are dropped: install it first.
    metrics::handle();
    names::describe(names::grpc::TABLE);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr);
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let provider = match &endpoint {
        Some(_) => Some(otlp_provider(service)?),
        None => None,
    };
    let traces = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_string())));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if !installed {
        // Someone (a test harness) already owns the global subscriber; keep theirs.
        if let Some(p) = provider {
            let _ = p.shutdown();
        }
        return Ok(Telemetry::default());
    }
    tracing::info!(service, otlp = endpoint.is_some(), "telemetry started");
    Ok(Telemetry {
        tracer_provider: provider,
    })
}

/// Logs only, for tools and tests that never export traces.
pub fn init_logs(service: &str) {
    if let Err(e) = init(service) {
        eprintln!("telemetry: {e}");
    }
}

/// A tracer provider batching spans to the OTLP/gRPC endpoint named by the standard
/// environment variables, with `service.name` set.
fn otlp_provider(service: &str) -> Result<SdkTracerProvider, Error> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("OTLP exporter: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}
