//! `GET /admin/audit`: the audit log, paged forward by event id.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};

use super::query_param;
use crate::admin::audit::{AuditPage, AuditQuery};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /admin/audit?since_id=&limit=`: the events after `since_id`, oldest first, or the
/// latest `limit` (default 100, at most 1000) without it. Events reach the log through the
/// gateway's write-behind queue, so one may appear a moment after the request that caused it.
pub(crate) async fn list(
    State(state): State<AppState>,
    _principal: Principal,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let asked = query_param(query, None)?.page()?;
    let events = state
        .store()
        .audit_events(asked.since_id, asked.limit)
        .await?;
    Ok(Json(AuditPage::new(events, asked)))
}
