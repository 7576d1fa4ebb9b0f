//! Wire types shared by the OpenAI endpoints: `stop`, `stream_options`, `usage`, finish
//! reasons, the model list, ids, and the check for parameters OpenAI defines but this server
//! does not implement (accepted only when absent, null or at their default).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::generator::ModelCard;
use crate::http::error::ApiError;

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StopParam {
    One(String),
    Many(Vec<String>),
}

impl StopParam {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `choices: []` and the request's usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
    /// OpenAI pads chunks against length side channels; there is nothing to pad here.
    #[serde(default)]
    pub include_obfuscation: Option<bool>,
}

/// Token counts of a request: the prompt once, the completions of every choice summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// With billing: what the request was charged (nano-NEURO per token, the tokens charged,
    /// and their product). A NeuroShard field; absent when inference is free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<crate::billing::Cost>,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            cost: None,
        }
    }

    pub fn with_cost(self, cost: Option<crate::billing::Cost>) -> Self {
        Self { cost, ..self }
    }
}

/// Why a choice ended, as OpenAI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// End of sequence, or a stop sequence was found.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// One entry of the model list, and `GET /v1/models/{model}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

impl From<&ModelCard> for ModelObject {
    fn from(card: &ModelCard) -> Self {
        Self {
            id: card.id.clone(),
            object: "model",
            created: card.created,
            owned_by: "neuroshard",
        }
    }
}

/// A fresh response id: `prefix` then 24 random letters and digits.
pub fn new_id(prefix: &str) -> String {
    use rand::Rng;
    let tail: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{tail}")
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What counts as "not asking for the feature" for an unsupported parameter.
#[derive(Debug, Clone, Copy)]
pub enum Neutral {
    /// Only null (or absence).
    Null,
    /// `false`.
    False,
    /// The number 0.
    Zero,
    /// The number 1.
    One,
    /// `{}`, `[]` or `""`.
    Empty,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// An object `{"type": <one of these>}`.
    TypeOneOf(&'static [&'static str]),
}

impl Neutral {
    fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Self::False, Value::Bool(b)) => !b,
            (Self::Zero, Value::Number(n)) => n.as_f64() == Some(0.0),
            (Self::One, Value::Number(n)) => n.as_f64() == Some(1.0),
            (Self::Empty, Value::Object(o)) => o.is_empty(),
            (Self::Empty, Value::Array(a)) => a.is_empty(),
            (Self::Empty, Value::String(s)) => s.is_empty(),
            (Self::OneOf(allowed), Value::String(s)) => allowed.contains(&s.as_str()),
            (Self::TypeOneOf(allowed), Value::Object(o)) => {
                o.len() == 1
                    && o.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| allowed.contains(&t))
            }
            (Self::OneOf(allowed), Value::Array(items)) => items
                .iter()
                .all(|i| i.as_str().is_some_and(|s| allowed.contains(&s))),
            _ => false,
        }
    }
}

/// Refuses `value` for the unsupported parameter `param` unless it is absent or `default`.
pub fn unsupported(param: &str, value: &Option<Value>, default: Neutral) -> Result<(), ApiError> {
    match value {
        Some(v) if !default.admits(v) => Err(ApiError::unsupported_param(
            param,
            &format!(" (only {} is accepted)", describe(default)),
        )),
        _ => Ok(()),
    }
}

fn describe(default: Neutral) -> String {
    match default {
        Neutral::Null => "null".into(),
        Neutral::False => "false or null".into(),
        Neutral::Zero => "0 or null".into(),
        Neutral::One => "1 or null".into(),
        Neutral::Empty => "an empty value or null".into(),
        Neutral::OneOf(v) => format!("null or {}", v.join(", ")),
        Neutral::TypeOneOf(v) => format!("null or {{\"type\": {}}}", v.join(" | ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stop_is_a_string_or_a_list() {
        let one: StopParam = serde_json::from_value(json!("\n")).unwrap();
        assert_eq!(one.into_vec(), ["\n"]);
        let many: StopParam = serde_json::from_value(json!(["a", "b"])).unwrap();
        assert_eq!(many.into_vec(), ["a", "b"]);
        assert!(serde_json::from_value::<StopParam>(json!(3)).is_err());
    }

    #[test]
    fn unsupported_parameters_pass_only_at_their_default() {
        assert!(unsupported("echo", &None, Neutral::False).is_ok());
        assert!(unsupported("echo", &Some(json!(null)), Neutral::False).is_ok());
        assert!(unsupported("echo", &Some(json!(false)), Neutral::False).is_ok());
        let e = unsupported("echo", &Some(json!(true)), Neutral::False).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("echo"));
        assert_eq!(e.code, Some("unsupported_parameter"));
        assert!(unsupported("p", &Some(json!(0.0)), Neutral::Zero).is_ok());
        assert!(unsupported("p", &Some(json!(0.5)), Neutral::Zero).is_err());
        assert!(unsupported("b", &Some(json!(1)), Neutral::One).is_ok());
        assert!(unsupported("b", &Some(json!(2)), Neutral::One).is_err());
        assert!(unsupported("t", &Some(json!([])), Neutral::Empty).is_ok());
        assert!(unsupported("t", &Some(json!([{"type": "function"}])), Neutral::Empty).is_err());
        let text = Neutral::TypeOneOf(&["text"]);
        assert!(unsupported("r", &Some(json!({"type": "text"})), text).is_ok());
        assert!(unsupported("r", &Some(json!({"type": "json_object"})), text).is_err());
        let modes = Neutral::OneOf(&["text"]);
        assert!(unsupported("m", &Some(json!(["text"])), modes).is_ok());
        assert!(unsupported("m", &Some(json!(["text", "audio"])), modes).is_err());
    }

    #[test]
    fn ids_and_usage() {
        let id = new_id("cmpl-");
        assert!(id.starts_with("cmpl-") && id.len() == 29, "{id}");
        assert_ne!(new_id("cmpl-"), id);
        assert_eq!(Usage::new(3, 4).total_tokens, 7);
        assert_eq!(
            serde_json::to_value(Finish::Length).unwrap(),
            json!("length")
        );
    }
}
