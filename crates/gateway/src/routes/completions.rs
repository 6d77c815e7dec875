//! `POST /v1/completions`.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::labelled;
use crate::answer::Answer;
use crate::auth::{ClientAddr, Principal};
use crate::error::ApiError;
use crate::extract::{RawJson, RequestId};
use crate::meter::{Endpoint, Meter};
use crate::openai::completion_response::{TextChunks, TextCompletion};
use crate::openai::completions::CompletionRequest;
use crate::openai::{ResponseMeta, response_id};
use crate::routing::dispatch::{self, Api, Routed};
use crate::safety::{self, Reporter, Screening};
use crate::sse;
use crate::state::AppState;

const ROUTE: &str = "/v1/completions";

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    client: ClientAddr,
    request_id: RequestId,
    body: Result<RawJson, ApiError>,
) -> Response {
    let started_at = Instant::now();
    let RawJson(body) = match body {
        Ok(body) => body,
        Err(err) => return labelled(&state, None, Err(err)),
    };
    let (forward, requested) = dispatch::read_body(&body);
    let routed = Routed {
        state: &state,
        principal: &principal,
        client: &client,
        request_id: &request_id,
        started_at,
        api: Api::Completions,
        body: &body,
        forward,
        requested: requested.clone(),
    };
    let result = dispatch::respond(routed, |body: CompletionRequest| {
        respond(&state, &principal, &client, body, &request_id, started_at)
    })
    .await;
    labelled(&state, requested.as_deref(), result)
}

async fn respond(
    state: &AppState,
    principal: &Principal,
    client: &ClientAddr,
    body: CompletionRequest,
    request_id: &str,
    started_at: Instant,
) -> Result<(Response, String), ApiError> {
    let plan = body.into_plan(request_id)?;
    let id = response_id("cmpl");
    let meter = Meter::new(state, principal, Endpoint::Completions, &id, started_at)
        .with_prompt(&plan.request);
    let screening = Screening::of(state, principal, &plan.request)?;
    let start = async {
        let answer = Answer::start(state, principal, plan.request, started_at).await?;
        Ok(answer.metered(meter))
    };
    let reporter = Reporter::new(state, principal, client, ROUTE);
    let answer = safety::screened(reporter, screening, start).await?;
    let label = answer.model_label().to_owned();
    let cache_headers = answer.cache_headers();
    let meta = ResponseMeta::new(id, answer.model());
    let response = match plan.stream {
        Some(stream) => {
            let chunks = TextChunks::new(meta, stream.include_usage, plan.logprobs);
            sse::stream(answer, chunks, stream.include_usage)
        }
        None => {
            let collected = answer.collect().await?;
            Json(TextCompletion::new(&meta, collected, plan.logprobs)).into_response()
        }
    };
    Ok(((cache_headers, response).into_response(), label))
}
