//! From a validated [`Plan`] to the HTTP answer, the last stage of a generation request:
//!
//! 1. [`answer_plan`] waits for the request's turn (admission, 429 when the gateway is full),
//!    then starts one generator job per choice, all at once, each holding the turn;
//! 2. each choice runs as a task ([`decode`]) that turns its sampled tokens into released text,
//!    cutting at stop sequences ([`stop`]), and sends its events into one shared channel;
//! 3. the events are answered [`whole`] (one JSON document once every choice is done) or
//!    [`streamed`] (server-sent events as the text is released).
//!
//! Both answers consume the same events, so a request gives the same text either way.
//!
//! With billing, a [`Bill`] is opened between admission and the first choice (the escrow:
//! a short balance is 429 `insufficient_quota` before any compute) and travels with the
//! answer, which tells it what each choice delivered; it settles when the answer ends or
//! is dropped (the client gone).

pub mod decode;
pub mod stop;
pub mod streamed;
pub mod whole;

use axum::response::Response;
use neuroshard_runtime::telemetry::names::gateway;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use decode::{ChoiceRules, Tagged};
use streamed::StreamSpec;

use crate::api::params::Plan;
use crate::api::response::{Endpoint, ResponseMeta};
use crate::api::wire::{new_id, unix_now};
use crate::billing::{Bill, BillRequest};
use crate::generator::{GenerationJob, TokenStream};
use crate::http::admission::Turn;
use crate::http::api_keys::Account;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::http::telemetry::RequestClock;

/// Events a choice may queue before it waits for the client to read (backpressure).
const EVENTS_PER_CHOICE: usize = 32;

/// Runs `plan` and answers it, in the documents of `endpoint`.
pub async fn answer_plan(
    state: &AppState,
    account: &Account,
    endpoint: Endpoint,
    plan: Plan,
) -> Result<Response, ApiError> {
    let model = state.generator().model();
    let meta = ResponseMeta {
        endpoint,
        id: new_id(endpoint.id_prefix()),
        created: unix_now(),
        model: model.id,
    };
    let turn = state.admission().admit().await?;
    let prompt_tokens = u32::try_from(plan.prompt.len()).unwrap_or(u32::MAX);
    metrics::counter!(gateway::PROMPT_TOKENS).increment(u64::from(prompt_tokens));
    let bill = match state.ledger() {
        Some(ledger) => Some(
            Bill::open(
                ledger,
                state.generator().clone(),
                BillRequest {
                    request_id: meta.id.clone(),
                    payer: account.0.clone(),
                    choices: choice_ids(&meta.id, plan.n),
                    prompt_tokens,
                    max_tokens: plan.max_tokens,
                    utilisation_ppm: state.admission().utilisation_ppm(),
                },
            )
            .await
            .map_err(|e| {
                if e.kind == neuroshard_common::ErrorKind::ResourceExhausted {
                    ApiError::insufficient_quota(e.message)
                } else {
                    ApiError::from(e)
                }
            })?,
        ),
        None => None,
    };
    let events = start_choices(state, &meta, &plan, &turn);
    if plan.stream {
        let spec = StreamSpec {
            meta,
            n: plan.n,
            prompt_tokens,
            include_usage: plan.include_usage,
        };
        streamed::answer_streamed(spec, events, bill).await
    } else {
        whole::answer_whole(&meta, plan.n, prompt_tokens, events, bill).await
    }
}

/// Starts every choice. With several choices each job is named `<id>-<index>`, so their
/// sessions on the workers stay apart. Each choice's token stream holds `turn` until it ends.
fn start_choices(
    state: &AppState,
    meta: &ResponseMeta,
    plan: &Plan,
    turn: &Turn,
) -> mpsc::Receiver<Tagged> {
    let clock = RequestClock::start(meta.endpoint.path());
    let (tx, rx) = mpsc::channel(EVENTS_PER_CHOICE * plan.n as usize);
    for (index, request_id) in (0..plan.n).zip(choice_ids(&meta.id, plan.n)) {
        let job = GenerationJob {
            request_id,
            prompt: plan.prompt.clone(),
            max_tokens: plan.max_tokens,
            sampling: plan.sampling_for(index),
        };
        let tokens = holding(turn.clone(), state.generator().generate(job));
        let rules = ChoiceRules {
            index,
            max_tokens: plan.max_tokens,
            stops: plan.stops.clone(),
            trim_start: plan.trim_start,
        };
        decode::spawn_choice(
            state.tokenizer().clone(),
            tokens,
            rules,
            clock.clone(),
            tx.clone(),
        );
    }
    rx
}

/// The generation ids of a request's `n` choices: its id, or `<id>-<index>` for several.
fn choice_ids(id: &str, n: u32) -> Vec<String> {
    if n == 1 {
        vec![id.to_string()]
    } else {
        (0..n).map(|index| format!("{id}-{index}")).collect()
    }
}

/// `tokens`, keeping `turn` until the stream is dropped (finished, failed or cancelled).
fn holding(turn: Turn, tokens: TokenStream) -> TokenStream {
    Box::pin(tokens.map(move |step| {
        let _held = &turn;
        step
    }))
}
