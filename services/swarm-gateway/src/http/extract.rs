//! The JSON body extractor of the API: `Content-Type: application/json` only, size-limited by
//! the router's `DefaultBodyLimit`, and every failure answered as an OpenAI error document that
//! names the problem and, where there is one, the field (`messages[0].role`, `temprature`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;

/// A request body parsed as `T`; see the module docs for how failures are answered.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large(state.config().limits.max_body_bytes)
            } else {
                ApiError::malformed_body(None, rejection.body_text())
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as `T`, naming the field at fault in `param`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => value,
        Err(err) => {
            let path = err.path().to_string();
            return Err(explain(&path, err.into_inner()));
        }
    };
    de.end()
        .map_err(|e| ApiError::malformed_body(None, format!("The body is not valid JSON: {e}")))?;
    Ok(value)
}

fn explain(path: &str, err: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = err.to_string();
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::malformed_body(None, format!("The body is not valid JSON: {message}"))
        }
        Category::Data => {
            // serde names unknown and missing fields in backquotes; the path stops at their
            // parent for missing ones.
            let named = between_backquotes(&message);
            if message.starts_with("unknown field")
                && let Some(field) = named
            {
                return ApiError::unknown_param(join(parent_of(path, field), field));
            }
            if message.starts_with("missing field")
                && let Some(field) = named
            {
                let param = join(path, field);
                return ApiError::invalid_param(
                    param.clone(),
                    format!("Missing required parameter: '{param}'."),
                );
            }
            let param = if path == "." {
                None
            } else {
                Some(path.to_owned())
            };
            let message = match &param {
                Some(p) => format!("Invalid value for '{p}': {message}"),
                None => format!("Invalid request body: {message}"),
            };
            ApiError::malformed_body(param, message)
        }
    }
}

fn between_backquotes(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// For an unknown field the path may already end with the field itself.
fn parent_of<'a>(path: &'a str, field: &str) -> &'a str {
    path.strip_suffix(field)
        .map(|p| p.strip_suffix('.').unwrap_or(p))
        .unwrap_or(path)
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() || parent == "." {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        model: String,
        #[serde(default)]
        messages: Vec<Message>,
        #[serde(default)]
        temperature: Option<f32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Message {
        role: String,
    }

    fn err(body: &str) -> ApiError {
        parse::<Outer>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn unknown_fields_are_named_at_any_depth() {
        let e = err(r#"{"model":"m","temprature":1}"#);
        assert_eq!(e.param.as_deref(), Some("temprature"));
        assert_eq!(e.code, Some("unknown_parameter"));
        let e = err(r#"{"model":"m","messages":[{"role":"user","x":1}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].x"), "{e:?}");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let e = err(r#"{"messages":[]}"#);
        assert_eq!(e.param.as_deref(), Some("model"));
        assert!(e.message.contains("Missing required parameter"), "{e:?}");
        let e = err(r#"{"model":"m","messages":[{}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{e:?}");
        let e = err(r#"{"model":"m","temperature":"hot"}"#);
        assert_eq!(e.param.as_deref(), Some("temperature"), "{e:?}");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn broken_json_is_a_clear_400() {
        for body in [r#"{"model":"#, "not json", r#"{"model":"m"} trailing"#] {
            let e = err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains("not valid JSON"), "{body}: {e:?}");
        }
    }

    #[test]
    fn content_types() {
        let ok = |s: &str| is_json(Some(&header::HeaderValue::from_str(s).unwrap()));
        assert!(ok("application/json"));
        assert!(ok("application/json; charset=utf-8"));
        assert!(ok("Application/JSON"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!is_json(None));
    }
}
