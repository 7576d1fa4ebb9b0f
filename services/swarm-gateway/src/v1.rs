//! The handlers of the OpenAI-compatible `/v1` routes (behind the API-key middleware).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use neuroshard_common::Error;
use neuroshard_text::tokenizer::TextTokenizer;

use crate::app::AppState;
use crate::chat::ChatRequest;
use crate::completions::CompletionRequest;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::flavor::Flavor;
use crate::generator::ModelCard;
use crate::openai::{ModelList, ModelObject};
use crate::respond::respond;

/// `GET /v1/models`.
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelObject::from(&state.generator().model())],
    })
}

/// `GET /v1/models/{model}`.
pub async fn get_model(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let card = served(&state, &model)?;
    Ok(Json(ModelObject::from(&card)))
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let card = served(&state, &request.model)?;
    request.check_unsupported()?;
    let prompt = tokenize(state.tokenizer(), request.prompt_text()?.to_owned()).await?;
    let plan = request
        .knobs()
        .plan(prompt, &card, &state.config().limits)?;
    respond(&state, Flavor::Completion, plan).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let card = served(&state, &request.model)?;
    request.check_unsupported()?;
    let knobs = request.knobs()?;
    let prompt = tokenize(state.tokenizer(), request.prompt_text()?).await?;
    let plan = knobs.plan(prompt, &card, &state.config().limits)?;
    respond(&state, Flavor::Chat, plan).await
}

/// The model card, if `model` is the one served.
fn served(state: &AppState, model: &str) -> Result<ModelCard, ApiError> {
    let card = state.generator().model();
    if card.id == model {
        Ok(card)
    } else {
        Err(ApiError::model_not_found(model))
    }
}

/// Tokenises off the async threads: a prompt near the body limit takes a while.
async fn tokenize(tokenizer: &Arc<TextTokenizer>, text: String) -> Result<Vec<u32>, ApiError> {
    let tokenizer = tokenizer.clone();
    tokio::task::spawn_blocking(move || tokenizer.encode(&text))
        .await
        .map_err(|e| Error::internal(format!("tokenising the prompt: {e}")))?
        .map_err(|e| Error::internal(format!("tokenising the prompt: {e}")).into())
}
