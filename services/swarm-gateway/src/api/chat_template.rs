//! The chat template: how a conversation (`messages`) becomes the plain-text prompt the model
//! continues, and where the assistant's turn ends.
//!
//! NeuroLLM is a plain language model with no special chat tokens, so a conversation becomes
//! text in the layout of a play script:
//!
//! ```text
//! System:
//! You are terse.
//!
//! User:
//! Hello.
//!
//! Assistant:
//! ```
//!
//! Each message is its speaker (`System`, `User` or `Assistant`, followed by ` (name)` when the
//! message has a `name`), a colon and a newline, the content, and a blank line. The prompt ends
//! with `Assistant:` and a newline: the model continues as the assistant. The assistant's turn
//! ends where the template would start the next message, at a blank line ([`TURN_END`], an
//! implicit stop sequence), and whitespace before the reply's first character is dropped.
//! `developer` messages are shown as `System`.

use serde::Deserialize;
use serde_json::Value;

use super::wire::{Neutral, unsupported};
use crate::http::error::ApiError;

/// Ends the assistant's turn: the separator between messages in the template.
pub const TURN_END: &str = "\n\n";

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    // Fields of assistant and tool messages that a client may send back as null.
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_call_id: Option<Value>,
    #[serde(default)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub refusal: Option<Value>,
    #[serde(default)]
    pub audio: Option<Value>,
    #[serde(default)]
    pub annotations: Option<Value>,
}

/// A message's content: a string or a list of text parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    // Parts of other types, named so the answer can say they are not supported.
    #[serde(default)]
    pub image_url: Option<Value>,
    #[serde(default)]
    pub input_audio: Option<Value>,
    #[serde(default)]
    pub file: Option<Value>,
    #[serde(default)]
    pub refusal: Option<Value>,
}

/// The prompt text of a conversation; see the module docs for the template.
pub fn prompt_text(messages: &[ChatMessage]) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must hold at least one message.",
        ));
    }
    let mut prompt = String::new();
    for (i, message) in messages.iter().enumerate() {
        let speaker = match message.role.as_str() {
            "system" | "developer" => "System",
            "user" => "User",
            "assistant" => "Assistant",
            other => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].role"),
                    format!(
                        "Role '{other}' is not supported; use 'system', 'developer', 'user' or 'assistant'."
                    ),
                ));
            }
        };
        for (field, value) in [
            ("tool_calls", &message.tool_calls),
            ("function_call", &message.function_call),
            ("audio", &message.audio),
        ] {
            unsupported(&format!("messages[{i}].{field}"), value, Neutral::Empty)?;
        }
        let content = message_text(i, message)?;
        prompt.push_str(speaker);
        if let Some(name) = message.name.as_deref().filter(|n| !n.is_empty()) {
            prompt.push_str(" (");
            prompt.push_str(name);
            prompt.push(')');
        }
        prompt.push_str(":\n");
        prompt.push_str(&content);
        prompt.push_str(TURN_END);
    }
    prompt.push_str("Assistant:\n");
    Ok(prompt)
}

fn message_text(i: usize, message: &ChatMessage) -> Result<String, ApiError> {
    match &message.content {
        Some(MessageContent::Text(text)) => Ok(text.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => text.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::invalid_param(
                            format!("messages[{i}].content[{j}].text"),
                            "A text part needs 'text'.",
                        ));
                    }
                    (other, _) => {
                        return Err(ApiError::invalid_param(
                            format!("messages[{i}].content[{j}].type"),
                            format!(
                                "Content parts of type '{other}' are not supported; only 'text' parts are."
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
        None => Err(ApiError::invalid_param(
            format!("messages[{i}].content"),
            "Every message needs text 'content'.",
        )),
    }
}
