//! The HTTP application: shared state and the router.
//!
//! | route | key | answers |
//! |---|---|---|
//! | `GET /v1/models`, `GET /v1/models/{model}` | yes | the served model |
//! | `POST /v1/completions`, `POST /v1/chat/completions` | yes | OpenAI documents or SSE |
//! | `GET /healthz` | no | 200 `ok` while the process serves |
//! | `GET /readyz` | no | 200 when the generator has a full route, else 503 with the reason |
//! | `GET /metrics` | no | Prometheus text |
//! | `GET /api/v1/status` | no | the generator's [`SwarmStatus`](crate::status::SwarmStatus) |
//!
//! Unknown routes and methods are answered with OpenAI error documents too.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use neuroshard_common::Error;
use neuroshard_text::tokenizer::TextTokenizer;

use crate::auth::{self, ApiKeys};
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::generator::Generator;
use crate::{telemetry, v1};

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: GatewayConfig,
    generator: Arc<dyn Generator>,
    tokenizer: Arc<TextTokenizer>,
    api_keys: ApiKeys,
    metrics: PrometheusHandle,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.inner.config)
            .field("model", &self.inner.generator.model())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Validates `config` and checks that `generator` serves the model `config` names.
    /// Installs the process-wide metrics recorder on first use.
    pub fn new(
        config: GatewayConfig,
        tokenizer: TextTokenizer,
        generator: Arc<dyn Generator>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let card = generator.model();
        if card.id != config.model {
            return Err(Error::invalid_argument(format!(
                "model: the configuration serves '{}' but the generator's model is '{}'",
                config.model, card.id
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                api_keys: ApiKeys::new(&config.api_keys),
                metrics: telemetry::prometheus()?,
                config,
                generator,
                tokenizer: Arc::new(tokenizer),
            }),
        })
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    pub fn generator(&self) -> &Arc<dyn Generator> {
        &self.inner.generator
    }

    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.inner.tokenizer
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.inner.api_keys
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }
}

/// The gateway's router: the dashboard at `/`, health, readiness, metrics, status, and the
/// keyed `/v1` API.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/models", get(v1::list_models))
        .route("/v1/models/{model}", get(v1::get_model))
        .route("/v1/completions", post(v1::completions))
        .route("/v1/chat/completions", post(v1::chat_completions))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .merge(api)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(telemetry::count_responses))
        .layer(DefaultBodyLimit::max(state.config().limits.max_body_bytes))
        .with_state(state)
}

/// The dashboard: one self-contained page (no external assets) that polls `/api/v1/status`.
const DASHBOARD: &str = include_str!("../assets/dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.generator().ready() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        let reason = "no complete route: some layer has no live holder";
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reason": reason})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let handle = state.metrics();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

async fn status(State(state): State<AppState>) -> Json<crate::status::SwarmStatus> {
    Json(state.generator().status())
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::unknown_url(
        req.method().as_str(),
        req.uri().path(),
        StatusCode::NOT_FOUND,
    )
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::unknown_url(
        req.method().as_str(),
        req.uri().path(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
}
