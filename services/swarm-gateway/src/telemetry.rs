//! Prometheus metrics of the gateway: the names, the process-wide recorder, and the pieces that
//! record them (a middleware counting every response, a clock per generation request).
//!
//! The `metrics` crate has one global recorder per process, owned by `neuroshard-common`;
//! [`prometheus`] hands out its handle, so several apps in one process (tests) share it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use neuroshard_common::Error;

/// Responses by route and status: labels `endpoint`, `status`.
pub const HTTP_REQUESTS: &str = "gateway_http_requests_total";
/// Tokens produced by generators and counted into usage.
pub const TOKENS_GENERATED: &str = "gateway_tokens_generated_total";
/// Prompt tokens of accepted generation requests.
pub const PROMPT_TOKENS: &str = "gateway_prompt_tokens_total";
/// Seconds from a generation request's arrival to its first token.
pub const TIME_TO_FIRST_TOKEN: &str = "gateway_time_to_first_token_seconds";
/// Seconds from a generation request's arrival to its last byte (or cancellation): label
/// `endpoint`.
pub const REQUEST_DURATION: &str = "gateway_request_duration_seconds";

/// The process-wide Prometheus handle (the one recorder every NeuroShard service shares, from
/// `neuroshard-common`), with the gateway's metrics described on first call.
pub fn prometheus() -> Result<PrometheusHandle, Error> {
    static DESCRIBED: Once = Once::new();
    let handle = neuroshard_runtime::telemetry::metrics::handle().clone();
    DESCRIBED.call_once(describe);
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP responses by route and status");
    metrics::describe_counter!(TOKENS_GENERATED, "Tokens generated for API requests");
    metrics::describe_counter!(PROMPT_TOKENS, "Prompt tokens of generation requests");
    metrics::describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its first generated token"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a generation request's arrival to its end"
    );
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
        HTTP_REQUESTS,
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
        metrics::counter!(TOKENS_GENERATED).increment(1);
        if !self.first_token_seen.swap(true, Ordering::Relaxed) {
            metrics::histogram!(TIME_TO_FIRST_TOKEN).record(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for RequestClock {
    fn drop(&mut self) {
        metrics::histogram!(REQUEST_DURATION, "endpoint" => self.endpoint)
            .record(self.started.elapsed().as_secs_f64());
    }
}
