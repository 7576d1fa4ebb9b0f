//! Prometheus metrics: one recorder per process (installed on first use), the `/metrics`
//! endpoint services expose, and [`GrpcMetricsLayer`], which counts and times every gRPC call
//! a server handles by method and status code.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use neuroshard_common::error::{Error, ErrorKind};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bucket bounds (seconds) of every `*_seconds` histogram: sub-millisecond hops to
/// minute-long requests.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// The process's Prometheus handle. The first call installs the global recorder; when another
/// recorder is already installed, metrics go there and this handle renders an empty page.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Histograms (not summaries) for durations, so replicas' series can be aggregated.
        // The bounds are constant and non-empty, so this cannot fail; fall back to summaries
        // rather than panic if it ever did.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The Prometheus text exposition of every metric recorded so far.
pub fn render() -> String {
    handle().render()
}

/// An axum router serving `GET /metrics`.
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                render(),
            )
        }),
    )
}

/// A running `/metrics` endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `/metrics` on `listen` in the background until the returned guard is dropped.
/// Returns `None` (serving nothing) when `listen` is `None`.
pub async fn serve(listen: Option<SocketAddr>) -> Result<Option<MetricsServer>, Error> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    handle();
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("metrics_listen {listen}: {e}"),
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("metrics listener: {e}")))?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router()).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics");
    Ok(Some(MetricsServer { addr, task }))
}

/// Tower layer for tonic servers: `grpc_server_handled_total{service,method,code}` and
/// `grpc_server_handling_seconds{service,method}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        handle();
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a tonic router.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // Unary errors come back "trailers-only", with grpc-status in the headers; a
            // response whose headers carry none is a call that is sending its body (OK so far).
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                    .unwrap_or_else(|| "Ok".to_string()),
                Err(_) => "Transport".to_string(),
            };
            metrics::counter!(
                super::names::grpc::SERVER_HANDLED,
                "service" => service.clone(),
                "method" => method.clone(),
                "code" => code
            )
            .increment(1);
            metrics::histogram!(
                super::names::grpc::SERVER_HANDLING_SECONDS,
                "service" => service,
                "method" => method
            )
            .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// `/neuroshard.worker.v1.ShardWorker/Forward` → (`neuroshard.worker.v1.ShardWorker`, `Forward`).
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => (trimmed.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/neuroshard.worker.v1.ShardWorker/Forward"),
            ("neuroshard.worker.v1.ShardWorker".into(), "Forward".into())
        );
        assert_eq!(split_path("/odd"), ("odd".into(), String::new()));
    }
}
