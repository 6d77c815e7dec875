//! `/admin/*`: operator endpoints.

use axum::Json;
use axum::extract::State;
use passerelle_store::AuditAction;

use crate::admin::AdminAudit;
use crate::auth::{ClientAddr, Principal};
use crate::drift::DriftReport;
use crate::error::ApiError;
use crate::state::AppState;

const DRIFT_DISABLED: ApiError = ApiError::FeatureDisabled {
    feature: "Drift monitoring",
    how: "start it with an embedding model and --drift",
};

/// `GET /admin/drift`: the drift of recent prompts against the baseline, computed now.
pub(crate) async fn drift(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<Json<DriftReport>, ApiError> {
    let drift = state.drift().ok_or(DRIFT_DISABLED)?;
    Ok(Json(drift.report()))
}

/// `POST /admin/drift/baseline`: accept the recent window as the new baseline.
pub(crate) async fn rebase_drift(
    State(state): State<AppState>,
    principal: Principal,
    client: ClientAddr,
) -> Result<Json<DriftReport>, ApiError> {
    let drift = state.drift().ok_or(DRIFT_DISABLED)?;
    let report = drift.rebase();
    state.audit(
        AdminAudit::new(&principal, &client)
            .event(AuditAction::AdminAction)
            .target("drift baseline")
            .detail("the recent window became the baseline"),
    );
    Ok(Json(report))
}
