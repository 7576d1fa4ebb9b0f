//! The non-streamed answer (`stream` absent or false): waits for every choice, then answers
//! one JSON document with all their texts and the request's usage.

use axum::Json;
use axum::response::{IntoResponse, Response};
use neuroshard_common::Error;
use tokio::sync::mpsc;

use super::decode::{ChoiceEvent, Tagged};
use crate::api::response::{FinishedChoice, ResponseMeta};
use crate::api::wire::Usage;
use crate::http::error::ApiError;

/// Answers the `n` choices whose events arrive on `events` as one document.
pub async fn answer_whole(
    meta: &ResponseMeta,
    n: u32,
    prompt_tokens: u32,
    events: mpsc::Receiver<Tagged>,
) -> Result<Response, ApiError> {
    let (choices, completion_tokens) = collect(events, n).await?;
    let usage = Usage::new(prompt_tokens, completion_tokens);
    Ok(Json(meta.response(choices, usage)).into_response())
}

/// Waits for every choice; the first failure answers the request (and, by dropping the
/// receiver, cancels the other choices).
async fn collect(
    mut events: mpsc::Receiver<Tagged>,
    n: u32,
) -> Result<(Vec<FinishedChoice>, u32), ApiError> {
    let mut texts = vec![String::new(); n as usize];
    let mut finishes = vec![None; n as usize];
    let mut completion_tokens = 0;
    while let Some((index, event)) = events.recv().await {
        let i = index as usize;
        match event {
            ChoiceEvent::Text(text) => texts[i].push_str(&text),
            ChoiceEvent::Done {
                finish,
                completion_tokens: count,
            } => {
                finishes[i] = Some(finish);
                completion_tokens += count;
            }
            ChoiceEvent::Failed(e) => return Err(e),
        }
    }
    let choices = texts
        .into_iter()
        .zip(finishes)
        .map(|(text, finish)| {
            finish
                .map(|finish| FinishedChoice { text, finish })
                .ok_or_else(|| Error::internal("a choice ended without a result"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((choices, completion_tokens))
}
