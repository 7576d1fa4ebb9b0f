//! From a validated [`Plan`] to the HTTP answer: one generator job per choice, all started at
//! once, their events merged into one channel, then answered whole (JSON) or streamed (SSE).
//! Both paths consume the same events, so a request gives the same text either way.

use axum::Json;
use axum::response::{IntoResponse, Response};
use neuroshard_common::Error;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::choice::{self, ChoiceEvent, ChoiceRules, Tagged};
use crate::error::ApiError;
use crate::flavor::{FinishedChoice, Flavor, Meta};
use crate::generator::GenerationJob;
use crate::openai::{Usage, new_id, unix_now};
use crate::params::Plan;
use crate::sse::{self, StreamSpec};
use crate::telemetry::{PROMPT_TOKENS, RequestClock};

/// Events a choice may queue before it waits for the client to read (backpressure).
const EVENTS_PER_CHOICE: usize = 32;

/// Runs `plan` and answers it.
pub async fn respond(state: &AppState, flavor: Flavor, plan: Plan) -> Result<Response, ApiError> {
    let model = state.generator().model();
    let meta = Meta {
        flavor,
        id: new_id(flavor.id_prefix()),
        created: unix_now(),
        model: model.id,
    };
    let prompt_tokens = u32::try_from(plan.prompt.len()).unwrap_or(u32::MAX);
    metrics::counter!(PROMPT_TOKENS).increment(u64::from(prompt_tokens));
    let events = start_choices(state, &meta, &plan);
    if plan.stream {
        let spec = StreamSpec {
            meta,
            n: plan.n,
            prompt_tokens,
            include_usage: plan.include_usage,
        };
        sse::respond(spec, events).await
    } else {
        let (choices, completion_tokens) = collect(events, plan.n).await?;
        let usage = Usage::new(prompt_tokens, completion_tokens);
        Ok(Json(meta.response(choices, usage)).into_response())
    }
}

/// Starts every choice. With several choices each job is named `<id>-<index>`, so their
/// sessions on the workers stay apart.
fn start_choices(state: &AppState, meta: &Meta, plan: &Plan) -> mpsc::Receiver<Tagged> {
    let clock = RequestClock::start(meta.flavor.endpoint());
    let (tx, rx) = mpsc::channel(EVENTS_PER_CHOICE * plan.n as usize);
    for index in 0..plan.n {
        let request_id = if plan.n == 1 {
            meta.id.clone()
        } else {
            format!("{}-{index}", meta.id)
        };
        let job = GenerationJob {
            request_id,
            prompt: plan.prompt.clone(),
            max_tokens: plan.max_tokens,
            sampling: plan.sampling_for(index),
        };
        let tokens = state.generator().generate(job);
        let rules = ChoiceRules {
            index,
            max_tokens: plan.max_tokens,
            stops: plan.stops.clone(),
            trim_start: plan.trim_start,
        };
        choice::spawn(
            state.tokenizer().clone(),
            tokens,
            rules,
            clock.clone(),
            tx.clone(),
        );
    }
    rx
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
