//! `GET /v1/models` and `GET /v1/models/{model}` (behind the key check): the one model this
//! gateway serves.

use axum::Json;
use axum::extract::{Path, State};

use crate::api::wire::{ModelList, ModelObject};
use crate::generator::ModelCard;
use crate::http::error::ApiError;
use crate::http::state::AppState;

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
    let card = served_model(&state, &model)?;
    Ok(Json(ModelObject::from(&card)))
}

/// The model card, if `model` is the one served.
pub fn served_model(state: &AppState, model: &str) -> Result<ModelCard, ApiError> {
    let card = state.generator().model();
    if card.id == model {
        Ok(card)
    } else {
        Err(ApiError::model_not_found(model))
    }
}

/// The model card for a generation request: the served model, with something to run it on.
/// Before the swarm has an architecture that is 503, not a context-length error.
pub fn runnable_model(state: &AppState, model: &str) -> Result<ModelCard, ApiError> {
    let card = served_model(state, model)?;
    if card.runnable() {
        Ok(card)
    } else {
        Err(ApiError::model_not_ready(&card.id))
    }
}
