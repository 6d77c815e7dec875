//! `/v1/users/{id}`: what the gateway keeps about one principal (a key's owner or a JWT
//! subject), for answering erasure requests.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use passerelle_store::keys::validate_label;
use passerelle_store::{AuditAction, pseudonym};

use super::{path_param, query_param};
use crate::admin::AdminAudit;
use crate::admin::erasure::{ErasureOut, ErasureQuery};
use crate::auth::{ClientAddr, Principal};
use crate::error::ApiError;
use crate::state::AppState;

/// How long an erasure waits for audit events still queued for the store, so that those about
/// the principal are written before, and pseudonymized by, the erasure.
const QUEUED_EVENTS_WAIT: Duration = Duration::from_secs(2);

/// `DELETE /v1/users/{id}/data[?revoke_keys=true]`: deletes the principal's logged prompts and
/// feedback and replaces it by its pseudonym in the audit log (usage totals stay: they hold no
/// text). With `revoke_keys=true` its active keys are revoked too. Erasing again finds nothing
/// more to do. The `DataErased` event names the principal by its pseudonym only.
pub(crate) async fn erase(
    State(state): State<AppState>,
    principal: Principal,
    client: ClientAddr,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<ErasureQuery>, QueryRejection>,
) -> Result<Json<ErasureOut>, ApiError> {
    let id = path_param(id)?;
    let subject = validate_label("principal", &id)
        .map_err(|err| ApiError::invalid_param("id", err.to_string()))?
        .to_owned();
    let ErasureQuery { revoke_keys } = query_param(query, Some("revoke_keys"))?;
    let audit = AdminAudit::new(&principal, &client);
    let store = state.store();

    let mut keys_revoked = 0;
    if revoke_keys {
        for key in store.list().await? {
            if key.owner == subject && !key.is_revoked() {
                store.revoke(&key.id).await?;
                keys_revoked += 1;
                state.audit(
                    audit
                        .event(AuditAction::KeyRevoked)
                        .target(&key.id)
                        .detail("revoked with the erasure of its owner's data"),
                );
            }
        }
    }

    let left = state.ledger().flush(QUEUED_EVENTS_WAIT).await;
    if left > 0 {
        tracing::warn!(
            left,
            "erasing while audit events are still queued; any about this principal stay unpseudonymized"
        );
    }
    let report = store.erase_principal(&subject).await?;
    let alias = pseudonym(&subject);
    state.audit(
        audit
            .event(AuditAction::DataErased)
            .target(&alias)
            .detail(format!(
                "prompts={} feedback={} audit_entries={} keys_revoked={keys_revoked}",
                report.prompts_removed, report.feedback_removed, report.audit_entries_anonymized
            )),
    );
    Ok(Json(ErasureOut::new(alias, report, keys_revoked)))
}
