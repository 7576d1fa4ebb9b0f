//! `POST /v1/completions`: the request (OpenAI's fields plus `top_k`), its prompt rules, and
//! the response and stream-chunk documents.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::params::Knobs;
use crate::api::wire::{Finish, Neutral, StopParam, StreamOptions, Usage, unsupported};
use crate::http::error::ApiError;

/// OpenAI's default `max_tokens` for completions.
pub const DEFAULT_MAX_TOKENS: u32 = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, or a list holding exactly one string.
    pub prompt: Value,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Not in OpenAI's API: keep only the k most likely tokens (0 = all).
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stop: Option<StopParam>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Accepted and ignored: an end-user id for abuse monitoring.
    #[serde(default)]
    pub user: Option<String>,
    // Defined by OpenAI, not implemented here: accepted only at their defaults.
    #[serde(default)]
    pub best_of: Option<Value>,
    #[serde(default)]
    pub echo: Option<Value>,
    #[serde(default)]
    pub frequency_penalty: Option<Value>,
    #[serde(default)]
    pub presence_penalty: Option<Value>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub suffix: Option<Value>,
}

impl CompletionRequest {
    /// Refuses the OpenAI parameters this server does not implement when they ask for
    /// something.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        unsupported("best_of", &self.best_of, Neutral::One)?;
        unsupported("echo", &self.echo, Neutral::False)?;
        unsupported("frequency_penalty", &self.frequency_penalty, Neutral::Zero)?;
        unsupported("presence_penalty", &self.presence_penalty, Neutral::Zero)?;
        unsupported("logit_bias", &self.logit_bias, Neutral::Empty)?;
        // For completions `logprobs` is a count, and even 0 asks for the sampled token's.
        unsupported("logprobs", &self.logprobs, Neutral::Null)?;
        unsupported("suffix", &self.suffix, Neutral::Empty)?;
        Ok(())
    }

    /// The prompt text: a string, or a list of exactly one string.
    pub fn prompt_text(&self) -> Result<&str, ApiError> {
        let bad = |m: &str| ApiError::invalid_param("prompt", m);
        match &self.prompt {
            Value::String(s) => Ok(s),
            Value::Array(items) => match items.as_slice() {
                [Value::String(s)] => Ok(s),
                [] => Err(bad("'prompt' is an empty list; send one prompt string.")),
                [Value::Number(_), ..] | [Value::Array(_), ..] => Err(bad(
                    "Token-id prompts are not supported; send the prompt as a string.",
                )),
                [_] => Err(bad("'prompt' must be a string or a list of one string.")),
                _ => Err(bad(
                    "Batches of prompts are not supported: send one prompt per request (a string, or a list of exactly one string).",
                )),
            },
            _ => Err(bad("'prompt' must be a string or a list of one string.")),
        }
    }

    pub fn knobs(&self) -> Knobs {
        Knobs {
            prompt_param: "prompt",
            max_tokens: self.max_tokens.map(|v| ("max_tokens", v)),
            default_max_tokens: Some(DEFAULT_MAX_TOKENS),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            n: self.n,
            stop: self.stop.clone(),
            implicit_stop: None,
            trim_start: false,
            seed: self.seed,
            stream: self.stream,
            stream_options: self.stream_options.clone(),
        }
    }
}

/// The non-streamed answer.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice; in a stream chunk, `text` is the new text and `finish_reason` is set on the
/// choice's last chunk only.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    /// Always null: log-probabilities are not offered.
    pub logprobs: Option<()>,
    pub finish_reason: Option<Finish>,
}

/// `object` of completions, streamed or not.
pub const OBJECT: &str = "text_completion";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(prompt: Value) -> CompletionRequest {
        serde_json::from_value(json!({"model": "m", "prompt": prompt})).unwrap()
    }

    #[test]
    fn prompt_is_one_string() {
        assert_eq!(request(json!("hi")).prompt_text().unwrap(), "hi");
        assert_eq!(request(json!(["hi"])).prompt_text().unwrap(), "hi");
        let batch = request(json!(["a", "b"])).prompt_text().unwrap_err();
        assert!(
            batch
                .message
                .contains("Batches of prompts are not supported")
        );
        assert_eq!(batch.param.as_deref(), Some("prompt"));
        let ids = request(json!([1, 2])).prompt_text().unwrap_err();
        assert!(ids.message.contains("Token-id"));
        assert!(request(json!([])).prompt_text().is_err());
        assert!(request(json!(5)).prompt_text().is_err());
    }

    #[test]
    fn unsupported_fields_are_named() {
        let r: CompletionRequest = serde_json::from_value(
            json!({"model": "m", "prompt": "p", "echo": false, "best_of": 1, "logprobs": null, "suffix": ""}),
        )
        .unwrap();
        r.check_unsupported().unwrap();
        for (field, value) in [
            ("echo", json!(true)),
            ("best_of", json!(3)),
            ("logprobs", json!(0)),
            ("suffix", json!("end")),
            ("frequency_penalty", json!(0.5)),
            ("logit_bias", json!({"1": 5})),
        ] {
            let mut body = json!({"model": "m", "prompt": "p"});
            body[field] = value;
            let r: CompletionRequest = serde_json::from_value(body).unwrap();
            let e = r.check_unsupported().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field));
        }
    }
}
