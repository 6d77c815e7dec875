//! `GET /v1/models` and `GET /v1/models/{id}`, from the llm service's model list.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::llm::ModelEntry;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub(crate) struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Model {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: String,
}

impl From<&ModelEntry> for Model {
    fn from(m: &ModelEntry) -> Self {
        Model {
            id: m.id.clone(),
            object: "model",
            created: m.created,
            owned_by: m.owned_by.clone(),
        }
    }
}

pub(crate) async fn list(
    State(state): State<AppState>,
    _: Principal,
) -> Result<Json<ModelList>, ApiError> {
    let models = state.catalog().models().await?;
    Ok(Json(ModelList {
        object: "list",
        data: models.iter().map(Model::from).collect(),
    }))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    _: Principal,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Model>, ApiError> {
    // Only a path that does not decode to UTF-8 gets here as an error.
    let Path(id) =
        id.map_err(|rejection| ApiError::invalid_param("model", rejection.body_text()))?;
    let models = state.catalog().models().await?;
    models
        .iter()
        .find(|m| m.id == id)
        .map(|m| Json(Model::from(m)))
        .ok_or(ApiError::ModelNotFound { model: id })
}
