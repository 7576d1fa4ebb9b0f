//! The one error type of the HTTP layer, answered as OpenAI's error document
//! `{"error":{"message","type","param","code"}}`. Statuses come from
//! [`ErrorKind::http_status`] except for the cases OpenAI defines itself (413, 415).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use neuroshard_common::{Error, ErrorKind};
use serde::Serialize;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error` for the caller's mistakes, `server_error` for
    /// ours.
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A stable machine-readable code (`invalid_api_key`, `model_not_found`, …).
    pub code: Option<&'static str>,
    /// Seconds the client should wait before trying again (the `Retry-After` header).
    pub retry_after_s: Option<u32>,
}

/// The JSON body: `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorObject<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

const INVALID_REQUEST: &str = "invalid_request_error";

impl ApiError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let status =
            StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            message: message.into(),
            kind: type_for(status),
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// A request field with a bad value.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
            .with_param(param)
            .with_code("invalid_value")
    }

    /// A field OpenAI does not define (or we do not know).
    pub fn unknown_param(param: impl Into<String>) -> Self {
        let param = param.into();
        Self::new(
            ErrorKind::InvalidArgument,
            format!("Unrecognized request argument supplied: {param}"),
        )
        .with_param(param)
        .with_code("unknown_parameter")
    }

    /// A field OpenAI defines that this gateway does not implement, given a non-default value.
    pub fn unsupported_param(param: impl Into<String>, detail: &str) -> Self {
        let param = param.into();
        Self::new(
            ErrorKind::InvalidArgument,
            format!("'{param}' is not supported by this server{detail}"),
        )
        .with_param(param)
        .with_code("unsupported_parameter")
    }

    /// The request body is not JSON or does not fit the request's shape.
    pub fn malformed_body(param: Option<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::InvalidArgument, message).with_code("invalid_json");
        e.param = param;
        e
    }

    /// Missing or unknown bearer key. The message never repeats what was sent.
    pub fn invalid_api_key(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message).with_code("invalid_api_key")
    }

    /// The key's wallet cannot cover the request's most possible cost: 429 with OpenAI's
    /// `insufficient_quota` type and code, answered before any compute.
    pub fn insufficient_quota(message: impl Into<String>) -> Self {
        let mut e =
            Self::new(ErrorKind::ResourceExhausted, message).with_code("insufficient_quota");
        e.status = StatusCode::TOO_MANY_REQUESTS;
        e.kind = "insufficient_quota";
        e
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// The model is known but cannot run yet: the swarm has no architecture (no layers
    /// assigned). The request may well succeed later.
    pub fn model_not_ready(model: &str) -> Self {
        Self::new(
            ErrorKind::Unavailable,
            format!(
                "The model `{model}` is not ready: the swarm has no architecture yet (no layers are assigned). Try again later."
            ),
        )
        .with_code("model_not_ready")
    }

    /// The prompt, or the prompt plus the tokens asked for, exceed the model's context.
    pub fn context_length_exceeded(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
            .with_param(param)
            .with_code("context_length_exceeded")
    }

    pub fn body_too_large(limit: usize) -> Self {
        let mut e = Self::new(
            ErrorKind::InvalidArgument,
            format!("The request body is larger than the limit of {limit} bytes."),
        )
        .with_code("request_too_large");
        e.status = StatusCode::PAYLOAD_TOO_LARGE;
        e
    }

    pub fn unsupported_media_type() -> Self {
        let mut e = Self::new(
            ErrorKind::InvalidArgument,
            "The request body must be JSON, sent with `Content-Type: application/json`.",
        )
        .with_code("unsupported_media_type");
        e.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        e
    }

    /// The gateway runs as many requests as it may and its waiting line is full: 429 with
    /// `Retry-After`, as OpenAI answers a rate limit.
    pub fn server_busy(message: impl Into<String>, retry_after_s: u32) -> Self {
        let mut e = Self::new(ErrorKind::ResourceExhausted, message).with_code("server_busy");
        e.status = StatusCode::TOO_MANY_REQUESTS;
        e.kind = "rate_limit_exceeded";
        e.retry_after_s = Some(retry_after_s);
        e
    }

    /// No route matches the request's path (or method).
    pub fn unknown_url(method: &str, path: &str, status: StatusCode) -> Self {
        let mut e = Self::new(
            ErrorKind::NotFound,
            format!("Unknown request URL: {method} {path}."),
        )
        .with_code("unknown_url");
        e.status = status;
        e
    }

    /// The JSON document, for both plain responses and SSE error events.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }
}

/// OpenAI's `type` for a status: the caller's mistakes (including a bad key) are
/// `invalid_request_error`, ours are `server_error`.
fn type_for(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "server_error"
    } else {
        INVALID_REQUEST
    }
}

/// Errors from the generator (no route, deadline, bad prompt) keep their kind and message.
impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let code = match error.kind {
            ErrorKind::Unavailable => Some("no_route"),
            ErrorKind::DeadlineExceeded => Some("timeout"),
            _ => None,
        };
        let mut e = Self::new(error.kind, error.message);
        e.code = code;
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &ApiError) -> serde_json::Value {
        serde_json::to_value(e.body()).unwrap()
    }

    #[test]
    fn error_document_has_openai_shape() {
        let e = ApiError::invalid_param("temperature", "temperature must lie in [0, 2], got 3");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            json(&e),
            serde_json::json!({"error": {
                "message": "temperature must lie in [0, 2], got 3",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "invalid_value",
            }})
        );
    }

    #[test]
    fn statuses_follow_the_error_kind_table() {
        let unavailable: ApiError = Error::new(ErrorKind::Unavailable, "no route").into();
        assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.code, Some("no_route"));
        assert_eq!(unavailable.kind, "server_error");
        let internal: ApiError = Error::internal("bug").into();
        assert_eq!(internal.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(internal.kind, "server_error");
        let key = ApiError::invalid_api_key("Incorrect API key provided.");
        assert_eq!(key.status, StatusCode::UNAUTHORIZED);
        assert_eq!(json(&key)["error"]["code"], "invalid_api_key");
        assert_eq!(key.kind, "invalid_request_error");
        let model = ApiError::model_not_found("gpt-9");
        assert_eq!(model.status, StatusCode::NOT_FOUND);
        assert_eq!(json(&model)["error"]["param"], "model");
        assert_eq!(
            ApiError::body_too_large(10).status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            ApiError::unsupported_media_type().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let not_ready = ApiError::model_not_ready("m");
        assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (not_ready.kind, not_ready.code),
            ("server_error", Some("model_not_ready"))
        );
        let broke = ApiError::insufficient_quota("You exceeded your current quota");
        assert_eq!(broke.status.as_u16(), 429);
        assert_eq!(json(&broke)["error"]["type"], "insufficient_quota");
        assert_eq!(json(&broke)["error"]["code"], "insufficient_quota");
        let busy = ApiError::server_busy("full", 2);
        assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(json(&busy)["error"]["type"], "rate_limit_exceeded");
        assert_eq!(json(&busy)["error"]["code"], "server_busy");
        let response = busy.into_response();
        assert_eq!(response.headers()["retry-after"], "2");
        let ctx = ApiError::context_length_exceeded("messages", "too long");
        assert_eq!(ctx.status, StatusCode::BAD_REQUEST);
        assert_eq!(ctx.code, Some("context_length_exceeded"));
    }
}
