//! The operator's routes, without a key: the dashboard, liveness, readiness, metrics and the
//! status document the dashboard polls (its detail view with a key, a summary without).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::status::{DETAIL, SwarmStatus};

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

/// The detail view for a request with a known API key, the public summary for one without;
/// a key that is presented and wrong is refused (401), as on `/v1/*`, rather than quietly
/// downgraded.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SwarmStatus>, ApiError> {
    let mut doc = state.generator().status();
    doc.billing = match state.ledger() {
        Some(ledger) => {
            let mut wallets: Vec<String> = state
                .config()
                .api_keys
                .iter()
                .map(|k| k.account.clone())
                .collect();
            wallets.sort();
            wallets.dedup();
            Some(ledger.status_with_balances(&wallets).await)
        }
        None => None,
    };
    match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            state.api_keys().authenticate(value.to_str().ok())?;
            doc.view = DETAIL;
            Ok(Json(doc))
        }
        None => Ok(Json(doc.public_summary())),
    }
}
