//! The `/v1/*` gate: a middleware that answers 401 unless the request carries a known API key
//! ([`ApiKeys`](super::api_keys::ApiKeys)), and attaches the key's
//! [`Account`](super::api_keys::Account) otherwise.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::state::AppState;

/// Middleware for `/v1/*`: refuses requests without a known key, attaches the
/// [`Account`](super::api_keys::Account).
pub async fn require_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let account = state.api_keys().authenticate(authorization)?;
    req.extensions_mut().insert(account);
    Ok(next.run(req).await)
}
