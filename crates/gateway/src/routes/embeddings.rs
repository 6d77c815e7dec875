//! `POST /v1/embeddings`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::labelled;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{AppJson, RequestId};
use crate::openai::embeddings::{EmbeddingList, EmbeddingRequest};
use crate::state::AppState;

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    RequestId(request_id): RequestId,
    body: Result<AppJson<EmbeddingRequest>, ApiError>,
) -> Response {
    let requested = body.as_ref().ok().map(|AppJson(b)| b.model.clone());
    let result = match body {
        Ok(AppJson(body)) => match principal.check_model(&body.model) {
            Ok(()) => respond(&state, body, &request_id).await,
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    labelled(&state, requested.as_deref(), result)
}

async fn respond(
    state: &AppState,
    body: EmbeddingRequest,
    request_id: &str,
) -> Result<(Response, String), ApiError> {
    let plan = body.into_plan(request_id)?;
    // Without an embeddings service no embedding model exists here.
    let Some(embeddings) = state.embeddings() else {
        return Err(ApiError::ModelNotFound {
            model: plan.request.model,
        });
    };
    let expected = plan.request.inputs.len();
    let response = embeddings.embed(plan.request).await?;
    let label = crate::generation::model_label(state, &response.model);
    let list = EmbeddingList::new(response, plan.encoding);
    if list.len() != expected {
        return Err(crate::backend::BackendError::protocol(format!(
            "asked for {expected} embeddings, got {}",
            list.len()
        ))
        .into());
    }
    Ok((Json(list).into_response(), label))
}
