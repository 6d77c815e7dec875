//! The HTTP routes, one module per resource.

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod documents;
pub(crate) mod embeddings;
pub(crate) mod feedback;
pub(crate) mod health;
pub(crate) mod keys;
pub(crate) mod metrics;
pub(crate) mod models;
pub(crate) mod moderations;
pub(crate) mod tokenize;
pub(crate) mod usage;
pub(crate) mod users;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{Method, Uri};

use crate::error::ApiError;

/// Any path no route has.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// A known path with the wrong method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// A `{id}` path segment. Only a segment that does not decode to UTF-8 fails, as a 400.
fn path_param(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|rejection| ApiError::invalid_param("id", rejection.body_text()))?;
    Ok(id)
}

/// A query string in our error envelope; `param` is named when it is the only one that can be
/// at fault.
fn query_param<T>(
    query: Result<Query<T>, QueryRejection>,
    param: Option<&str>,
) -> Result<T, ApiError> {
    let Query(value) = query.map_err(|rejection| ApiError::InvalidRequest {
        message: format!("Invalid query string: {}", rejection.body_text()),
        param: param.map(str::to_owned),
    })?;
    Ok(value)
}

/// A generation route's response with its metric model label: the model the service named on
/// success, else the requested id when the service lists it, else "unknown".
fn labelled(
    state: &crate::state::AppState,
    requested: Option<&str>,
    result: Result<(axum::response::Response, String), ApiError>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut response, label) = match result {
        Ok(ok) => ok,
        Err(err) => {
            let label = match requested {
                Some(model) => crate::generation::model_label(state, model),
                None => crate::metrics::UNKNOWN_MODEL.to_owned(),
            };
            (err.into_response(), label)
        }
    };
    response
        .extensions_mut()
        .insert(crate::metrics::ModelLabel(label));
    response
}
