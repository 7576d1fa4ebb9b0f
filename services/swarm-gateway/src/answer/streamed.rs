//! Streamed answers (`stream: true`): server-sent events, one `data: {chunk}` per released
//! piece of text as soon as its choice produces it, then each choice's finish chunk, the usage
//! chunk when asked for, and `data: [DONE]`. An error after the stream started is sent as a
//! `data: {"error": …}` event, and the stream ends there.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use neuroshard_common::Error;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::Stream;

use super::decode::{ChoiceEvent, Tagged};
use crate::api::response::ResponseMeta;
use crate::api::wire::Usage;
use crate::billing::Bill;
use crate::http::error::ApiError;

/// Comment lines keep proxies from closing a stream while a long prompt is processed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a streamed response needs besides its events.
#[derive(Debug)]
pub struct StreamSpec {
    pub meta: ResponseMeta,
    pub n: u32,
    pub prompt_tokens: u32,
    pub include_usage: bool,
}

/// Answers with an event stream over `events`. The first event is awaited before answering,
/// so that a failure known before any token (no route, prompt too long for the swarm) gets
/// its own HTTP status instead of a 200 stream holding only an error.
pub async fn answer_streamed(
    spec: StreamSpec,
    mut events: mpsc::Receiver<Tagged>,
    bill: Option<Bill>,
) -> Result<Response, ApiError> {
    let first = match events.recv().await {
        Some((_, ChoiceEvent::Failed(e))) => return Err(e),
        Some(first) => first,
        None => return Err(Error::internal("every choice ended without a result").into()),
    };
    let escrowed = bill.as_ref().map(Bill::escrowed);
    let mut state = StreamState {
        started: vec![false; spec.n as usize],
        spec,
        events: Some(events),
        outbox: VecDeque::new(),
        completion_tokens: 0,
        bill,
    };
    state.handle(first);
    let mut response = Sse::new(state.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // The final charge is in the usage chunk (`usage.cost`); the headers go first.
    if let Some(e) = escrowed {
        let headers = response.headers_mut();
        headers.insert(
            "x-neuroshard-price-per-token",
            HeaderValue::from(e.price_per_token),
        );
        headers.insert("x-neuroshard-escrowed", HeaderValue::from(e.escrowed));
    }
    Ok(response)
}

struct StreamState {
    spec: StreamSpec,
    /// `None` once the stream has ended (all choices done, or an error).
    events: Option<mpsc::Receiver<Tagged>>,
    /// Events made from one choice event but not yet sent, each with the (choice, tokens
    /// generated) it delivers.
    outbox: VecDeque<(Event, Option<(u32, u32)>)>,
    /// Whether each choice has sent its first chunk.
    started: Vec<bool>,
    completion_tokens: u32,
    /// Settles what was delivered when the stream ends or is dropped (the client gone).
    bill: Option<Bill>,
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

impl StreamState {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut state| async move {
            let event = state.next_event().await?;
            Some((Ok(event), state))
        })
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some((event, delivers)) = self.outbox.pop_front() {
                if let (Some(bill), Some((index, tokens))) = (self.bill.as_mut(), delivers) {
                    bill.delivered(index, tokens);
                }
                return Some(event);
            }
            let events = self.events.as_mut()?;
            match events.recv().await {
                Some(tagged) => self.handle(tagged),
                None => self.finish(),
            }
        }
    }

    /// Turns one choice event into outgoing events.
    fn handle(&mut self, (index, event): Tagged) {
        let meta = &self.spec.meta;
        let Some(started) = self.started.get_mut(index as usize) else {
            return;
        };
        let first = !*started;
        match event {
            ChoiceEvent::Text { text, tokens } => {
                *started = true;
                self.outbox.push_back((
                    data(&meta.chunk(index, text, None, first)),
                    Some((index, tokens)),
                ));
            }
            ChoiceEvent::Done {
                finish,
                completion_tokens,
            } => {
                *started = true;
                self.completion_tokens += completion_tokens;
                self.outbox.push_back((
                    data(&meta.chunk(index, String::new(), Some(finish), first)),
                    Some((index, completion_tokens)),
                ));
            }
            ChoiceEvent::Failed(error) => {
                let body = serde_json::to_value(error.body()).unwrap_or(Value::Null);
                self.outbox.push_back((data(&body), None));
                // Dropping the receiver stops the other choices.
                self.events = None;
            }
        }
    }

    /// Every choice is done: usage if asked for, then `[DONE]`.
    fn finish(&mut self) {
        if self.spec.include_usage {
            // The charge once the finish chunks ahead of it are delivered.
            let cost = self
                .bill
                .as_ref()
                .map(|bill| bill.cost_for(u64::from(self.completion_tokens)));
            let usage = Usage::new(self.spec.prompt_tokens, self.completion_tokens).with_cost(cost);
            self.outbox
                .push_back((data(&self.spec.meta.usage_chunk(usage)), None));
        }
        self.outbox
            .push_back((Event::default().data("[DONE]"), None));
        self.events = None;
    }
}
