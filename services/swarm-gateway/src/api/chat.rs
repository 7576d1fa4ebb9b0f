//! `POST /v1/chat/completions`: the request (its messages become the prompt through the
//! [chat template](super::chat_template)), and the response and stream-chunk documents.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat_template::{ChatMessage, TURN_END, prompt_text};
use crate::api::params::Knobs;
use crate::api::wire::{Finish, Neutral, StopParam, StreamOptions, Usage, unsupported};
use crate::http::error::ApiError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Replaces `max_tokens` in OpenAI's current API; either may be given.
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
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
    // Accepted and ignored: identify the end user or a cache bucket, change no output.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub safety_identifier: Option<String>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    /// Only matters with `tools`, which are refused.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    // Defined by OpenAI, not implemented here: accepted only at their defaults.
    #[serde(default)]
    pub frequency_penalty: Option<Value>,
    #[serde(default)]
    pub presence_penalty: Option<Value>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub top_logprobs: Option<Value>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub functions: Option<Value>,
    #[serde(default)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub modalities: Option<Value>,
    #[serde(default)]
    pub audio: Option<Value>,
    #[serde(default)]
    pub prediction: Option<Value>,
    #[serde(default)]
    pub reasoning_effort: Option<Value>,
    #[serde(default)]
    pub verbosity: Option<Value>,
    #[serde(default)]
    pub web_search_options: Option<Value>,
    #[serde(default)]
    pub store: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub service_tier: Option<Value>,
}

impl ChatRequest {
    /// Refuses the OpenAI parameters this server does not implement when they ask for
    /// something.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        let absent = Neutral::Null;
        unsupported("frequency_penalty", &self.frequency_penalty, Neutral::Zero)?;
        unsupported("presence_penalty", &self.presence_penalty, Neutral::Zero)?;
        unsupported("logit_bias", &self.logit_bias, Neutral::Empty)?;
        unsupported("logprobs", &self.logprobs, Neutral::False)?;
        unsupported("top_logprobs", &self.top_logprobs, Neutral::Zero)?;
        unsupported("tools", &self.tools, Neutral::Empty)?;
        unsupported("tool_choice", &self.tool_choice, Neutral::OneOf(&["none"]))?;
        unsupported("functions", &self.functions, Neutral::Empty)?;
        unsupported(
            "function_call",
            &self.function_call,
            Neutral::OneOf(&["none"]),
        )?;
        unsupported(
            "response_format",
            &self.response_format,
            Neutral::TypeOneOf(&["text"]),
        )?;
        unsupported("modalities", &self.modalities, Neutral::OneOf(&["text"]))?;
        unsupported("audio", &self.audio, absent)?;
        unsupported("prediction", &self.prediction, absent)?;
        unsupported("reasoning_effort", &self.reasoning_effort, absent)?;
        unsupported("verbosity", &self.verbosity, absent)?;
        unsupported("web_search_options", &self.web_search_options, absent)?;
        unsupported("store", &self.store, Neutral::False)?;
        unsupported("metadata", &self.metadata, Neutral::Empty)?;
        unsupported(
            "service_tier",
            &self.service_tier,
            Neutral::OneOf(&["auto", "default"]),
        )?;
        Ok(())
    }

    pub fn knobs(&self) -> Result<Knobs, ApiError> {
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::invalid_param(
                    "max_completion_tokens",
                    format!(
                        "'max_completion_tokens' ({a}) and 'max_tokens' ({b}) disagree; send one of them."
                    ),
                ));
            }
            (Some(a), _) => Some(("max_completion_tokens", a)),
            (None, Some(b)) => Some(("max_tokens", b)),
            (None, None) => None,
        };
        Ok(Knobs {
            prompt_param: "messages",
            max_tokens,
            default_max_tokens: None,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            n: self.n,
            stop: self.stop.clone(),
            implicit_stop: Some(TURN_END),
            trim_start: true,
            seed: self.seed,
            stream: self.stream,
            stream_options: self.stream_options.clone(),
        })
    }

    /// The prompt text of the conversation, in the [chat template](super::chat_template).
    pub fn prompt_text(&self) -> Result<String, ApiError> {
        prompt_text(&self.messages)
    }
}

/// The non-streamed answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    /// Always null: log-probabilities are not offered.
    pub logprobs: Option<()>,
    pub finish_reason: Finish,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
    pub refusal: Option<()>,
}

/// One event of a streamed answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A choice's part of a chunk: its first chunk carries the role, the next ones text, the last
/// one the finish reason with an empty delta.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<()>,
    pub finish_reason: Option<Finish>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

pub const OBJECT: &str = "chat.completion";
pub const CHUNK_OBJECT: &str = "chat.completion.chunk";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn template_is_a_script_ending_with_the_assistant_turn() {
        let r = request(json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello.", "refusal": null, "tool_calls": null},
            {"role": "user", "content": "Bye?"},
        ]}));
        assert_eq!(
            r.prompt_text().unwrap(),
            "System:\nBe brief.\n\nUser (ann):\nHi there\n\nAssistant:\nHello.\n\nUser:\nBye?\n\nAssistant:\n"
        );
    }

    #[test]
    fn bad_messages_are_named() {
        let cases = [
            (json!([]), "messages"),
            (
                json!([{"role": "tool", "content": "x"}]),
                "messages[0].role",
            ),
            (json!([{"role": "user"}]), "messages[0].content"),
            (
                json!([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]),
                "messages[1].content[0].type",
            ),
            (
                json!([{"role": "assistant", "content": "a", "tool_calls": [{"id": "x"}]}]),
                "messages[0].tool_calls",
            ),
        ];
        for (messages, param) in cases {
            let e = request(json!({"model": "m", "messages": messages}))
                .prompt_text()
                .unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{e:?}");
            assert_eq!(e.status.as_u16(), 400);
        }
    }

    #[test]
    fn max_completion_tokens_and_max_tokens() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        let k = request(json!({"model": "m", "messages": msgs, "max_tokens": 5}))
            .knobs()
            .unwrap();
        assert_eq!(k.max_tokens, Some(("max_tokens", 5)));
        let k = request(json!({"model": "m", "messages": msgs, "max_completion_tokens": 6}))
            .knobs()
            .unwrap();
        assert_eq!(k.max_tokens, Some(("max_completion_tokens", 6)));
        let e = request(
            json!({"model": "m", "messages": msgs, "max_completion_tokens": 6, "max_tokens": 7}),
        )
        .knobs()
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
    }

    #[test]
    fn unsupported_parameters_are_refused_by_name() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        let ok = request(
            json!({"model": "m", "messages": msgs, "tools": [], "tool_choice": "none",
            "response_format": {"type": "text"}, "logprobs": false, "presence_penalty": 0,
            "user": "u", "parallel_tool_calls": true, "store": false}),
        );
        ok.check_unsupported().unwrap();
        for (field, value) in [
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            ),
            ("response_format", json!({"type": "json_object"})),
            ("logprobs", json!(true)),
            ("presence_penalty", json!(1.0)),
            ("tool_choice", json!("auto")),
        ] {
            let mut body = json!({"model": "m", "messages": msgs});
            body[field] = value;
            let e = request(body).check_unsupported().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field));
        }
    }
}
