//! Prometheus metrics of the HTTP side: the process-wide recorder, and the pieces that record
//! into it (a middleware counting every response, a clock per generation request). The metric
//! names, help texts included, are the gateway's table in
//! [`neuroshard_runtime::telemetry::names::gateway`], shared with the engine's hop metrics.
//!
//! The `metrics` crate has one global recorder per process, owned by `neuroshard-runtime`;
//! [`prometheus`] hands out its handle, so several apps in one process (tests) share it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use neuroshard_common::Error;
use neuroshard_runtime::telemetry::names::{self, gateway};

/// The process-wide Prometheus handle (the one recorder every NeuroShard service shares, from
/// `neuroshard-runtime`), with the gateway's metrics described on first call.
pub fn prometheus() -> Result<PrometheusHandle, Error> {
    static DESCRIBED: Once = Once::new();
    let handle = neuroshard_runtime::telemetry::metrics::handle().clone();
    DESCRIBED.call_once(|| names::describe(gateway::TABLE));
    Ok(handle)
}

/// Middleware: counts every response by matched route (never the raw path, which clients
/// choose) and status.
pub async fn count_responses(req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    metrics::counter!(
        gateway::HTTP_REQUESTS,
        "endpoint" => endpoint,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// The clock of one generation request, shared by its choices and its response stream: the
/// first token of any choice records the time to first token, and the last holder to let go
/// records the duration.
#[derive(Debug)]
pub struct RequestClock {
    endpoint: &'static str,
    started: Instant,
    first_token_seen: AtomicBool,
}

impl RequestClock {
    pub fn start(endpoint: &'static str) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            started: Instant::now(),
            first_token_seen: AtomicBool::new(false),
        })
    }

    /// Called for every generated token.
    pub fn token(&self) {
        metrics::counter!(gateway::TOKENS_GENERATED).increment(1);
        if !self.first_token_seen.swap(true, Ordering::Relaxed) {
            metrics::histogram!(gateway::TIME_TO_FIRST_TOKEN)
                .record(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for RequestClock {
    fn drop(&mut self) {
        metrics::histogram!(gateway::REQUEST_DURATION, "endpoint" => self.endpoint)
            .record(self.started.elapsed().as_secs_f64());
    }
}
