//! The operator's routes, without a key: the dashboard, liveness, readiness, metrics and the
//! status document the dashboard polls.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::state::AppState;
use crate::status::SwarmStatus;

/// The dashboard: one self-contained page (no external assets) that polls `/api/v1/status`.
const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

pub async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
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

pub async fn metrics(State(state): State<AppState>) -> Response {
    let handle = state.metrics();
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

pub async fn status(State(state): State<AppState>) -> Json<SwarmStatus> {
    Json(state.generator().status())
}
