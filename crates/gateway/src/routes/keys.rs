//! `/admin/keys`: create, list, show and revoke stored API keys. Secrets appear once, in the
//! creation response; every change is written to the audit log.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use passerelle_store::{AuditAction, KeyRecord, unix_now};
use serde::Deserialize;

use super::{path_param, query_param};
use crate::admin::AdminAudit;
use crate::admin::keys::{CreateKeyRequest, CreatedKey, KeyList, KeyOut};
use crate::auth::{ClientAddr, Principal};
use crate::error::ApiError;
use crate::extract::AppJson;
use crate::state::AppState;

/// `GET /admin/keys?owner=`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    owner: Option<String>,
}

/// `POST /admin/keys`: 201 with the key and its secret, which is never shown again.
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    client: ClientAddr,
    AppJson(body): AppJson<CreateKeyRequest>,
) -> Result<Response, ApiError> {
    let new = body.into_new_key(unix_now())?;
    let (record, secret) = state.store().create(new).await?;
    state.audit(
        AdminAudit::new(&principal, &client)
            .event(AuditAction::KeyCreated)
            .target(&record.id)
            .detail(describe(&record)),
    );
    let body = CreatedKey {
        record: KeyOut::new(record, unix_now()),
        key: secret.expose().to_owned(),
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    // The body holds a secret: no cache along the way may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /admin/keys`: every stored key (revoked and expired ones included), oldest first, or
/// only those of `?owner=`. Operator keys from the configuration are not stored, so not listed.
pub(crate) async fn list(
    State(state): State<AppState>,
    _principal: Principal,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyList>, ApiError> {
    let ListQuery { owner } = query_param(query, None)?;
    let owner = owner.as_deref().map(str::trim).filter(|o| !o.is_empty());
    let now = unix_now();
    let keys = state
        .store()
        .list()
        .await?
        .into_iter()
        .filter(|key| owner.is_none_or(|owner| key.owner == owner))
        .map(|key| KeyOut::new(key, now))
        .collect();
    Ok(Json(KeyList::new(keys)))
}

/// `GET /admin/keys/{id}`: one key by id or display prefix, or 404 `key_not_found`.
pub(crate) async fn get(
    State(state): State<AppState>,
    _principal: Principal,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<KeyOut>, ApiError> {
    let id = path_param(id)?;
    let record = state.store().get(&id).await?;
    Ok(Json(KeyOut::new(record, unix_now())))
}

/// `DELETE /admin/keys/{id}`: revokes the key and answers its record. Revoking a revoked key
/// changes nothing and answers the same record (first revocation time kept, no new audit
/// event); an unknown key is 404 `key_not_found`.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    client: ClientAddr,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<KeyOut>, ApiError> {
    let id = path_param(id)?;
    let store = state.store();
    let current = store.get(&id).await?;
    if current.is_revoked() {
        return Ok(Json(KeyOut::new(current, unix_now())));
    }
    let record = store.revoke(&current.id).await?;
    state.audit(
        AdminAudit::new(&principal, &client)
            .event(AuditAction::KeyRevoked)
            .target(&record.id),
    );
    Ok(Json(KeyOut::new(record, unix_now())))
}

/// The audit detail of a new key. Not its name or owner: erasure pseudonymizes actors and
/// targets, not free text, so a principal's id written here would outlive its erasure.
fn describe(record: &KeyRecord) -> String {
    let scopes: Vec<&str> = record.scopes.iter().map(|scope| scope.as_str()).collect();
    format!("prefix={} scopes={}", record.prefix, scopes.join(","))
}
