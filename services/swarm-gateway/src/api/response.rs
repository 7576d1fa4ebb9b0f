//! The two generation endpoints differ only in their documents: [`Endpoint`] renders a finished
//! request, or one streamed event, as a text completion or as a chat completion.

use serde_json::Value;

use crate::api::chat::{
    self, AssistantMessage, ChatChoice, ChatChunk, ChatCompletion, ChunkChoice, Delta,
};
use crate::api::completions::{self, Completion, CompletionChoice};
use crate::api::wire::{Finish, Usage};

/// Which endpoint a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completion,
    Chat,
}

/// What every document of one response shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseMeta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A finished choice of a non-streamed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedChoice {
    pub text: String,
    pub finish: Finish,
}

impl Endpoint {
    /// The prefix of response ids.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Self::Completion => "cmpl-",
            Self::Chat => "chatcmpl-",
        }
    }

    /// The route's path, the `endpoint` label of metrics.
    pub fn path(self) -> &'static str {
        match self {
            Self::Completion => "/v1/completions",
            Self::Chat => "/v1/chat/completions",
        }
    }
}

impl ResponseMeta {
    /// The whole non-streamed response.
    pub fn response(&self, choices: Vec<FinishedChoice>, usage: Usage) -> Value {
        let indexed = choices.into_iter().zip(0u32..);
        let document = match self.endpoint {
            Endpoint::Completion => serde_json::to_value(Completion {
                id: self.id.clone(),
                object: completions::OBJECT,
                created: self.created,
                model: self.model.clone(),
                choices: indexed
                    .map(|(c, index)| CompletionChoice {
                        index,
                        text: c.text,
                        logprobs: None,
                        finish_reason: Some(c.finish),
                    })
                    .collect(),
                usage: Some(usage),
            }),
            Endpoint::Chat => serde_json::to_value(ChatCompletion {
                id: self.id.clone(),
                object: chat::OBJECT,
                created: self.created,
                model: self.model.clone(),
                choices: indexed
                    .map(|(c, index)| ChatChoice {
                        index,
                        message: AssistantMessage {
                            role: "assistant",
                            content: c.text,
                            refusal: None,
                        },
                        logprobs: None,
                        finish_reason: c.finish,
                    })
                    .collect(),
                usage,
            }),
        };
        document.unwrap_or(Value::Null)
    }

    /// A stream chunk for choice `index`: new `text`, or its end (`finish`). `first` marks
    /// the choice's first chunk, which for chat carries the assistant role.
    pub fn chunk(&self, index: u32, text: String, finish: Option<Finish>, first: bool) -> Value {
        match self.endpoint {
            Endpoint::Completion => self.completion_chunk(
                vec![CompletionChoice {
                    index,
                    text,
                    logprobs: None,
                    finish_reason: finish,
                }],
                None,
            ),
            Endpoint::Chat => {
                let delta = Delta {
                    role: first.then_some("assistant"),
                    content: (first || !text.is_empty()).then_some(text),
                };
                self.chat_chunk(
                    vec![ChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: finish,
                    }],
                    None,
                )
            }
        }
    }

    /// The last chunk when usage was asked for: no choices, the request's usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        match self.endpoint {
            Endpoint::Completion => self.completion_chunk(Vec::new(), Some(usage)),
            Endpoint::Chat => self.chat_chunk(Vec::new(), Some(usage)),
        }
    }

    fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Value {
        serde_json::to_value(Completion {
            id: self.id.clone(),
            object: completions::OBJECT,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
        .unwrap_or(Value::Null)
    }

    fn chat_chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Value {
        serde_json::to_value(ChatChunk {
            id: self.id.clone(),
            object: chat::CHUNK_OBJECT,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
        .unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(endpoint: Endpoint) -> ResponseMeta {
        ResponseMeta {
            endpoint,
            id: "x-1".into(),
            created: 5,
            model: "m".into(),
        }
    }

    #[test]
    fn completion_documents() {
        let m = meta(Endpoint::Completion);
        let done = FinishedChoice {
            text: "hi".into(),
            finish: Finish::Length,
        };
        assert_eq!(
            m.response(vec![done], Usage::new(2, 1)),
            json!({"id": "x-1", "object": "text_completion", "created": 5, "model": "m",
                "choices": [{"index": 0, "text": "hi", "logprobs": null, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
        );
        assert_eq!(
            m.chunk(1, "a".into(), None, true)["choices"],
            json!([{"index": 1, "text": "a", "logprobs": null, "finish_reason": null}])
        );
        assert_eq!(m.usage_chunk(Usage::new(1, 1))["choices"], json!([]));
    }

    #[test]
    fn chat_documents() {
        let m = meta(Endpoint::Chat);
        let done = FinishedChoice {
            text: "hi".into(),
            finish: Finish::Stop,
        };
        let r = m.response(vec![done], Usage::new(2, 1));
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(
            r["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi", "refusal": null})
        );
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        let first = m.chunk(0, "a".into(), None, true);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": "a"})
        );
        assert_eq!(
            m.chunk(0, "b".into(), None, false)["choices"][0]["delta"],
            json!({"content": "b"})
        );
        let end = m.chunk(0, String::new(), Some(Finish::Stop), false);
        assert_eq!(end["choices"][0]["delta"], json!({}));
        assert_eq!(end["choices"][0]["finish_reason"], "stop");
        assert!(end.get("usage").is_none());
        assert_eq!(m.usage_chunk(Usage::new(1, 2))["usage"]["total_tokens"], 3);
    }
}
