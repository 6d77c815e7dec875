//! `POST /v1/chat/completions`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::labelled;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{AppJson, RequestId};
use crate::generation::Generation;
use crate::openai::ResponseMeta;
use crate::openai::chat::ChatCompletionRequest;
use crate::openai::chat_response::{ChatChunks, ChatCompletion};
use crate::sse;
use crate::state::AppState;

pub(crate) async fn create(
    State(state): State<AppState>,
    _: Principal,
    RequestId(request_id): RequestId,
    body: Result<AppJson<ChatCompletionRequest>, ApiError>,
) -> Response {
    let started_at = Instant::now();
    let requested = body.as_ref().ok().map(|AppJson(b)| b.model.clone());
    let result = match body {
        Ok(AppJson(body)) => respond(&state, body, &request_id, started_at).await,
        Err(err) => Err(err),
    };
    labelled(&state, requested.as_deref(), result)
}

async fn respond(
    state: &AppState,
    body: ChatCompletionRequest,
    request_id: &str,
    started_at: Instant,
) -> Result<(Response, String), ApiError> {
    let plan = body.into_plan(request_id)?;
    let generation = Generation::start(state, plan.request, started_at).await?;
    let label = generation.model_label().to_owned();
    let meta = ResponseMeta::new("chatcmpl", generation.model());
    let response = match plan.stream {
        Some(stream) => {
            let chunks = ChatChunks::new(meta, stream.include_usage, plan.logprobs);
            sse::stream(generation, chunks, stream.include_usage)
        }
        None => {
            let collected = generation.collect().await?;
            Json(ChatCompletion::new(meta, collected, plan.logprobs)).into_response()
        }
    };
    Ok((response, label))
}
