//! The non-streamed answer (`stream` absent or false): waits for every choice, then answers
//! one JSON document with all their texts and the request's usage.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use neuroshard_common::Error;
use tokio::sync::mpsc;

use super::decode::{ChoiceEvent, Tagged};
use crate::api::response::{FinishedChoice, ResponseMeta};
use crate::api::wire::Usage;
use crate::billing::{Bill, Cost};
use crate::http::error::ApiError;

/// Answers the `n` choices whose events arrive on `events` as one document.
pub async fn answer_whole(
    meta: &ResponseMeta,
    n: u32,
    prompt_tokens: u32,
    events: mpsc::Receiver<Tagged>,
    mut bill: Option<Bill>,
) -> Result<Response, ApiError> {
    // Dropped with `bill` if the client leaves first: then nothing was delivered.
    let (choices, per_choice) = collect(events, n).await?;
    let completion_tokens = per_choice.iter().sum();
    let cost = bill.as_mut().map(|bill| {
        for (index, tokens) in (0u32..).zip(&per_choice) {
            bill.delivered(index, *tokens);
        }
        bill.cost()
    });
    let usage = Usage::new(prompt_tokens, completion_tokens).with_cost(cost);
    let mut response = Json(meta.response(choices, usage)).into_response();
    if let Some(cost) = cost {
        cost_headers(response.headers_mut(), &cost);
    }
    Ok(response)
}

/// Waits for every choice; the first failure answers the request (and, by dropping the
/// receiver, cancels the other choices).
async fn collect(
    mut events: mpsc::Receiver<Tagged>,
    n: u32,
) -> Result<(Vec<FinishedChoice>, Vec<u32>), ApiError> {
    let mut texts = vec![String::new(); n as usize];
    let mut finishes = vec![None; n as usize];
    let mut completion_tokens = vec![0; n as usize];
    while let Some((index, event)) = events.recv().await {
        let i = index as usize;
        match event {
            ChoiceEvent::Text { text, .. } => texts[i].push_str(&text),
            ChoiceEvent::Done {
                finish,
                completion_tokens: count,
            } => {
                finishes[i] = Some(finish);
                completion_tokens[i] = count;
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

/// The charge of a billed request, beside its usage: nano-NEURO per token, tokens charged,
/// and nano-NEURO charged.
fn cost_headers(headers: &mut HeaderMap, cost: &Cost) {
    headers.insert(
        "x-neuroshard-price-per-token",
        HeaderValue::from(cost.price_per_token),
    );
    headers.insert(
        "x-neuroshard-tokens-charged",
        HeaderValue::from(cost.tokens),
    );
    headers.insert("x-neuroshard-charged", HeaderValue::from(cost.charged));
}
