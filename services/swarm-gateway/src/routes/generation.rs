//! The two generation routes, `POST /v1/completions` and `POST /v1/chat/completions` (behind
//! the key check): each reads its request document, checks it into a plan, tokenises the
//! prompt, and hands the plan to [`answer_plan`].

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use neuroshard_common::Error;
use neuroshard_text::tokenizer::TextTokenizer;

use super::models::runnable_model;
use crate::answer::answer_plan;
use crate::api::chat::ChatRequest;
use crate::api::completions::CompletionRequest;
use crate::api::response::Endpoint;
use crate::http::api_keys::Account;
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::state::AppState;

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let card = runnable_model(&state, &request.model)?;
    request.check_unsupported()?;
    let prompt = tokenize(state.tokenizer(), request.prompt_text()?.to_owned()).await?;
    let plan = request
        .knobs()
        .plan(prompt, &card, &state.config().limits)?;
    answer_plan(&state, &account, Endpoint::Completion, plan).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let card = runnable_model(&state, &request.model)?;
    request.check_unsupported()?;
    let knobs = request.knobs()?;
    let prompt = tokenize(state.tokenizer(), request.prompt_text()?).await?;
    let plan = knobs.plan(prompt, &card, &state.config().limits)?;
    answer_plan(&state, &account, Endpoint::Chat, plan).await
}

/// Tokenises off the async threads: a prompt near the body limit takes a while.
async fn tokenize(tokenizer: &Arc<TextTokenizer>, text: String) -> Result<Vec<u32>, ApiError> {
    let tokenizer = tokenizer.clone();
    tokio::task::spawn_blocking(move || tokenizer.encode(&text))
        .await
        .map_err(|e| Error::internal(format!("tokenising the prompt: {e}")))?
        .map_err(|e| Error::internal(format!("tokenising the prompt: {e}")).into())
}
