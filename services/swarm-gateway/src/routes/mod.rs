//! The routes: the router [`app`] and the handlers behind it. A request passes the response
//! counter and the body limit, then (on `/v1/*`) the key check, then its handler:
//!
//! | route | key | handler | answers |
//! |---|---|---|---|
//! | `GET /v1/models`, `GET /v1/models/{model}` | yes | [`models`] | the served model |
//! | `POST /v1/completions`, `POST /v1/chat/completions` | yes | [`generation`] | JSON or SSE |
//! | `GET /` | no | [`operations`] | the dashboard |
//! | `GET /healthz` | no | [`operations`] | 200 `ok` while the process serves |
//! | `GET /readyz` | no | [`operations`] | 200 with a full route, else 503 and why |
//! | `GET /metrics` | no | [`operations`] | Prometheus text |
//! | `GET /api/v1/status` | optional | [`operations`] | [`SwarmStatus`](crate::status::SwarmStatus): detail with a key, summary without |
//!
//! Unknown routes and methods are answered with OpenAI error documents too.

pub mod generation;
pub mod models;
pub mod operations;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::http::{auth, telemetry};

/// The gateway's router: the dashboard at `/`, health, readiness, metrics, status, and the
/// keyed `/v1` API.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{model}", get(models::get_model))
        .route("/v1/completions", post(generation::completions))
        .route("/v1/chat/completions", post(generation::chat_completions))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/", get(operations::dashboard))
        .route("/healthz", get(operations::healthz))
        .route("/readyz", get(operations::readyz))
        .route("/metrics", get(operations::metrics))
        .route("/api/v1/status", get(operations::status))
        .merge(api)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(telemetry::count_responses))
        .layer(DefaultBodyLimit::max(state.config().limits.max_body_bytes))
        .with_state(state)
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
