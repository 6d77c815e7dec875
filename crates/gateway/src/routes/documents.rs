//! `/v1/documents`: the caller's document store (ingest, list, get, delete, search), kept by
//! the embeddings service in the caller's own namespace.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::Principal;
use crate::backend::BackendError;
use crate::documents::{DocumentsBackend, rename_param};
use crate::error::ApiError;
use crate::extract::{AppJson, RequestId};
use crate::openai::documents::{
    CreateDocumentsRequest, CreatedDocument, CreatedDocuments, DeletedDocument, DocumentList,
    DocumentOut, EmbeddingUsage, SearchRequest, SearchResults, ingest_param,
};
use crate::state::AppState;

/// `POST /v1/documents`: 201 with the stored document, or a list for a `documents` batch. A
/// batch is stored in order and stops at the first failure; the documents before it stay.
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    request_id: RequestId,
    AppJson(body): AppJson<CreateDocumentsRequest>,
) -> Result<Response, ApiError> {
    let backend = backend(&state)?;
    let plan = body.into_plan(principal.tenant(), &request_id)?;
    let mut usage = EmbeddingUsage::default();
    let mut created = Vec::with_capacity(plan.requests.len());
    for (prefix, request) in plan.requests {
        let response = backend
            .ingest(request)
            .await
            .map_err(|err| rename_param(err, |param| ingest_param(&prefix, param)))?;
        let tokens = response.usage.map_or(0, |u| u.prompt_tokens);
        usage.add(tokens);
        let document = response
            .document
            .ok_or_else(|| BackendError::protocol("IngestDocument answered no document"))?;
        created.push(DocumentOut::from(document));
    }
    let body = if plan.batch {
        Json(CreatedDocuments::new(created, usage)).into_response()
    } else {
        let document = created
            .pop()
            .ok_or_else(|| BackendError::protocol("no document was stored"))?;
        Json(CreatedDocument { document, usage }).into_response()
    };
    Ok((StatusCode::CREATED, body).into_response())
}

/// `GET /v1/documents`: the caller's documents, oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<DocumentList>, ApiError> {
    let documents = backend(&state)?.list(principal.tenant().to_owned()).await?;
    Ok(Json(DocumentList::new(documents)))
}

/// `GET /v1/documents/{id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DocumentOut>, ApiError> {
    let id = document_id(id)?;
    backend(&state)?
        .get(principal.tenant().to_owned(), id.clone())
        .await?
        .map(|document| Json(DocumentOut::from(document)))
        .ok_or(ApiError::DocumentNotFound { id })
}

/// `DELETE /v1/documents/{id}`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeletedDocument>, ApiError> {
    let id = document_id(id)?;
    backend(&state)?
        .delete(principal.tenant().to_owned(), id.clone())
        .await?
        .map(|deleted| Json(DeletedDocument::from(deleted)))
        .ok_or(ApiError::DocumentNotFound { id })
}

/// `POST /v1/documents/search`: the caller's chunks closest to a query, best first.
pub(crate) async fn search(
    State(state): State<AppState>,
    principal: Principal,
    request_id: RequestId,
    AppJson(body): AppJson<SearchRequest>,
) -> Result<Json<SearchResults>, ApiError> {
    let backend = backend(&state)?;
    let request = body.into_request(principal.tenant(), &request_id)?;
    let found = backend.retrieve(request).await?;
    Ok(Json(SearchResults::from(found)))
}

/// The document store lives in the embeddings service.
fn backend(state: &AppState) -> Result<DocumentsBackend, ApiError> {
    state
        .embeddings()
        .map(DocumentsBackend::new)
        .ok_or_else(|| {
            BackendError::Unsupported {
                message: "Documents need an embeddings service, and none is configured \
                          (set an embedding model or embeddings_endpoint)."
                    .to_owned(),
            }
            .into()
        })
}

fn document_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    // Only a path that does not decode to UTF-8 gets here as an error.
    let Path(id) = id.map_err(|rejection| ApiError::invalid_param("id", rejection.body_text()))?;
    Ok(id)
}
