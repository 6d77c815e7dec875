//! `POST /v1/feedback`: a caller rates one of its own answers, thumbs up (`1`) or down (`-1`).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use passerelle_store::{FeedbackRecord, MAX_COMMENT_CHARS, Rating, unix_now};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::AppJson;
use crate::state::AppState;

/// The window of the satisfaction gauge.
const SATISFACTION_WINDOW_SECS: u64 = 24 * 3600;
/// How long a rating of a response whose usage record is still queued waits for it. Usage is
/// written behind the response, so a client that rates at once can be a few milliseconds early.
const PENDING_USAGE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackRequest {
    response_id: String,
    rating: i64,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct FeedbackResponse {
    object: &'static str,
    response_id: String,
    rating: Rating,
    comment: Option<String>,
    created: u64,
}

pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<AppJson<FeedbackRequest>, ApiError>,
) -> Result<(StatusCode, Json<FeedbackResponse>), ApiError> {
    let AppJson(body) = body?;
    let rating = Rating::try_from(body.rating)
        .map_err(|_| ApiError::invalid_param("rating", "rating must be 1 (up) or -1 (down)"))?;
    if body
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
    {
        return Err(ApiError::invalid_param(
            "comment",
            format!("comment must be at most {MAX_COMMENT_CHARS} characters"),
        ));
    }
    check_owner(&state, &principal, &body.response_id).await?;
    let record = FeedbackRecord {
        response_id: body.response_id,
        principal: principal.id().to_owned(),
        rating,
        comment: body.comment,
        at: unix_now(),
    };
    state.store().record_feedback(&record).await?;
    state.metrics().feedback(match rating {
        Rating::Up => "up",
        Rating::Down => "down",
    });
    refresh_satisfaction(&state, record.at).await;
    Ok((
        StatusCode::CREATED,
        Json(FeedbackResponse {
            object: "feedback",
            response_id: record.response_id,
            rating: record.rating,
            comment: record.comment,
            created: record.at,
        }),
    ))
}

/// A caller rates only answers it was given. Someone else's response is "not found" too, so
/// response ids cannot be probed.
async fn check_owner(
    state: &AppState,
    principal: &Principal,
    response_id: &str,
) -> Result<(), ApiError> {
    let not_found = || ApiError::ResponseNotFound {
        id: response_id.to_owned(),
    };
    if response_id.is_empty() || response_id.len() > 128 {
        return Err(ApiError::invalid_param(
            "response_id",
            "response_id must be the id of a response, 1 to 128 characters",
        ));
    }
    let mut record = state.store().usage_by_response(response_id).await?;
    if record.is_none() {
        state.ledger().flush(PENDING_USAGE_WAIT).await;
        record = state.store().usage_by_response(response_id).await?;
    }
    match record {
        Some(usage) if usage.principal == principal.id() => Ok(()),
        _ => Err(not_found()),
    }
}

async fn refresh_satisfaction(state: &AppState, now: u64) {
    match state
        .store()
        .feedback_counts(now.saturating_sub(SATISFACTION_WINDOW_SECS))
        .await
    {
        Ok(counts) if counts.up + counts.down > 0 => {
            state
                .metrics()
                .satisfaction(counts.up as f64 / (counts.up + counts.down) as f64);
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot refresh the satisfaction gauge"),
    }
}
