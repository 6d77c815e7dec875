//! `POST /v1/embeddings`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::labelled;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{AppJson, RequestId};
use crate::llm::Usage;
use crate::meter::{Endpoint, Meter, Served};
use crate::openai::embeddings::{EmbeddingList, EmbeddingRequest};
use crate::openai::response_id;
use crate::state::AppState;

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    request_id: RequestId,
    body: Result<AppJson<EmbeddingRequest>, ApiError>,
) -> Response {
    let started_at = Instant::now();
    let requested = body.as_ref().ok().map(|AppJson(b)| b.model.clone());
    let result = match body {
        Ok(AppJson(body)) => match principal.check_model(&body.model) {
            Ok(()) => respond(&state, &principal, body, &request_id, started_at).await,
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    labelled(&state, requested.as_deref(), result)
}

async fn respond(
    state: &AppState,
    principal: &Principal,
    body: EmbeddingRequest,
    request_id: &str,
    started_at: Instant,
) -> Result<(Response, String), ApiError> {
    let plan = body.into_plan(request_id)?;
    // Without an embeddings service no embedding model exists here.
    let Some(embeddings) = state.embeddings() else {
        return Err(ApiError::ModelNotFound {
            model: plan.request.model,
        });
    };
    let expected = plan.request.inputs.len() + plan.request.token_inputs.len();
    let response = embeddings.embed(plan.request).await?;
    // The OpenAI response has no id; the usage record needs one to count the request once.
    let prompt_tokens = response.usage.map_or(0, |usage| usage.prompt_tokens);
    Meter::new(
        state,
        principal,
        Endpoint::Embeddings,
        &response_id("emb"),
        started_at,
    )
    .record(
        &response.model,
        Usage {
            prompt_tokens,
            completion_tokens: 0,
            total_tokens: prompt_tokens,
        },
        Served::Model,
        "",
    );
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
