//! Every error a client can receive, and its one rendering: an OpenAI error envelope
//! `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

use std::borrow::Cow;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::llm::BackendError;

/// An error that ends a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a parameter is out of range.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        /// The request field at fault (`temperature`, `messages[1].content`).
        param: Option<String>,
    },
    /// The body is larger than the configured limit.
    #[error("The request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    /// No API key was presented where one is required.
    #[error("Missing API key. Send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`.")]
    MissingApiKey,
    /// The presented key is unknown, revoked or expired.
    #[error("Incorrect API key provided.")]
    InvalidApiKey,
    /// The presented JWT failed verification.
    #[error("Invalid bearer token: {reason}")]
    InvalidToken { reason: String },
    /// The caller's key or token lacks the scope this route needs.
    #[error("This key lacks the `{scope}` scope this endpoint requires.")]
    ScopeForbidden { scope: passerelle_store::Scope },
    /// The caller's key is limited to other models.
    #[error("This key may not use the model `{model}`.")]
    ModelForbidden { model: String },
    /// A rate limit refused the request (or the limiter is down and fails closed).
    #[error("{0}")]
    RateLimited(crate::ratelimit::Refused),
    /// The key's budget for the current period is spent.
    #[error("{}", budget_message(.budget, *.resets_at))]
    BudgetExceeded {
        budget: passerelle_store::Budget,
        resets_at: Option<u64>,
    },
    /// The state store cannot be reached.
    #[error("The gateway's state store is unavailable; try again shortly.")]
    StoreUnavailable,
    /// The requested model is not served.
    #[error("The model `{model}` does not exist or is not served here.")]
    ModelNotFound { model: String },
    /// The caller has no document by this id.
    #[error("No such document: {id}.")]
    DocumentNotFound { id: String },
    /// No response by this id was answered to the caller.
    #[error("No response {id} was answered to you.")]
    ResponseNotFound { id: String },
    /// No stored API key has this id or display prefix.
    #[error("No API key with id or prefix `{id}`.")]
    KeyNotFound { id: String },
    /// The safety filter refused the prompt.
    #[error("The prompt was refused by the content filter ({}: {}).", .0.layer, .0.category)]
    ContentFiltered(crate::safety::Refusal),
    /// No route has this path.
    #[error("Unknown request URL: {method} {path}.")]
    RouteNotFound { method: String, path: String },
    /// The path exists, but not with this method.
    #[error("Method {method} is not allowed for {path}.")]
    MethodNotAllowed { method: String, path: String },
    /// The route belongs to a feature this gateway runs without.
    #[error("{feature} is not enabled on this gateway; {how}.")]
    FeatureDisabled {
        feature: &'static str,
        how: &'static str,
    },
    /// The gateway is at its concurrency limit.
    #[error("The gateway is at capacity; try again shortly.")]
    GatewayBusy,
    /// The model service failed or refused the request.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// No replica of an upstream model could be reached (connect errors, or every replica
    /// ejected after repeated failures).
    #[error("The upstream serving `{model}` is unavailable; try again shortly.")]
    UpstreamUnavailable {
        model: String,
        retry_after: Duration,
    },
    /// An upstream model failed (5xx, or a broken answer) on every attempt.
    #[error("The upstream serving `{model}` failed (HTTP {status}).")]
    UpstreamFailed { model: String, status: u16 },
    /// An upstream model did not answer in time.
    #[error("The upstream serving `{model}` did not answer in time.")]
    UpstreamTimeout { model: String },
    /// An upstream refused the request (a 4xx): its status and error, passed through.
    #[error("{}", .0.message)]
    UpstreamRejected(crate::routing::UpstreamRejection),
    /// The gateway itself failed: a bug or a broken local dependency (the key store).
    #[error("The server had an error while processing your request.")]
    Internal { detail: String },
}

/// What the envelope and headers say for one error.
struct Rendering {
    status: StatusCode,
    kind: Cow<'static, str>,
    code: Option<Cow<'static, str>>,
    param: Option<String>,
    retry_after: Option<Duration>,
}

impl Rendering {
    fn new(status: StatusCode, kind: &'static str, code: Option<&'static str>) -> Self {
        Self {
            status,
            kind: Cow::Borrowed(kind),
            code: code.map(Cow::Borrowed),
            param: None,
            retry_after: None,
        }
    }
}

const INVALID_REQUEST: &str = "invalid_request_error";
const SERVER_ERROR: &str = "server_error";
const PERMISSION: &str = "permission_error";
const RATE_LIMIT: &str = "rate_limit_error";

fn budget_message(budget: &passerelle_store::Budget, resets_at: Option<u64>) -> String {
    let limit = budget.limit_micro_usd as f64 / 1e6;
    match resets_at {
        Some(at) => format!(
            "The {} budget of ${limit:.2} for this key is spent; it resets in {} s.",
            budget.period.as_str(),
            at.saturating_sub(passerelle_store::unix_now())
        ),
        None => format!("The total budget of ${limit:.2} for this key is spent."),
    }
}

impl ApiError {
    /// A 400 for a bad parameter.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// A 400 not tied to one parameter.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.rendering().status
    }

    /// The one table from errors to HTTP statuses and OpenAI `type`/`code`.
    fn rendering(&self) -> Rendering {
        use ApiError as E;
        use StatusCode as S;
        match self {
            E::InvalidRequest { param, .. } => Rendering {
                param: param.clone(),
                ..Rendering::new(S::BAD_REQUEST, INVALID_REQUEST, None)
            },
            E::PayloadTooLarge { .. } => Rendering::new(
                S::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                Some("request_too_large"),
            ),
            E::MissingApiKey | E::InvalidApiKey => {
                Rendering::new(S::UNAUTHORIZED, INVALID_REQUEST, Some("invalid_api_key"))
            }
            E::InvalidToken { .. } => {
                Rendering::new(S::UNAUTHORIZED, INVALID_REQUEST, Some("invalid_token"))
            }
            E::ScopeForbidden { .. } => {
                Rendering::new(S::FORBIDDEN, PERMISSION, Some("insufficient_scope"))
            }
            E::ModelForbidden { .. } => Rendering {
                param: Some("model".to_owned()),
                ..Rendering::new(S::FORBIDDEN, PERMISSION, Some("model_not_allowed"))
            },
            E::RateLimited(refused) => {
                let retry_after = Some(std::time::Duration::from_secs(refused.retry_after_secs()));
                if refused.reason == crate::ratelimit::RefusalReason::BackendUnavailable {
                    Rendering {
                        retry_after,
                        ..Rendering::new(
                            S::SERVICE_UNAVAILABLE,
                            SERVER_ERROR,
                            Some("rate_limiter_unavailable"),
                        )
                    }
                } else {
                    Rendering {
                        retry_after,
                        ..Rendering::new(
                            S::TOO_MANY_REQUESTS,
                            RATE_LIMIT,
                            Some("rate_limit_exceeded"),
                        )
                    }
                }
            }
            E::BudgetExceeded { resets_at, .. } => Rendering {
                retry_after: resets_at.map(|at| {
                    Duration::from_secs(at.saturating_sub(passerelle_store::unix_now()).max(1))
                }),
                ..Rendering::new(S::TOO_MANY_REQUESTS, RATE_LIMIT, Some("budget_exceeded"))
            },
            E::StoreUnavailable => Rendering {
                retry_after: Some(Duration::from_secs(1)),
                ..Rendering::new(
                    S::SERVICE_UNAVAILABLE,
                    SERVER_ERROR,
                    Some("store_unavailable"),
                )
            },
            E::ModelNotFound { .. } => Rendering {
                param: Some("model".to_owned()),
                ..Rendering::new(S::NOT_FOUND, INVALID_REQUEST, Some("model_not_found"))
            },
            E::DocumentNotFound { .. } => Rendering {
                param: Some("id".to_owned()),
                ..Rendering::new(S::NOT_FOUND, INVALID_REQUEST, Some("document_not_found"))
            },
            E::ResponseNotFound { .. } => Rendering {
                param: Some("response_id".to_owned()),
                ..Rendering::new(S::NOT_FOUND, INVALID_REQUEST, Some("response_not_found"))
            },
            E::KeyNotFound { .. } => Rendering {
                param: Some("id".to_owned()),
                ..Rendering::new(S::NOT_FOUND, INVALID_REQUEST, Some("key_not_found"))
            },
            E::ContentFiltered(_) => {
                Rendering::new(S::BAD_REQUEST, INVALID_REQUEST, Some("content_filter"))
            }
            E::RouteNotFound { .. } => {
                Rendering::new(S::NOT_FOUND, INVALID_REQUEST, Some("unknown_url"))
            }
            E::MethodNotAllowed { .. } => Rendering::new(
                S::METHOD_NOT_ALLOWED,
                INVALID_REQUEST,
                Some("method_not_allowed"),
            ),
            E::FeatureDisabled { .. } => {
                Rendering::new(S::NOT_FOUND, INVALID_REQUEST, Some("feature_disabled"))
            }
            E::GatewayBusy => Rendering {
                retry_after: Some(Duration::from_secs(1)),
                ..Rendering::new(S::SERVICE_UNAVAILABLE, SERVER_ERROR, Some("server_busy"))
            },
            E::Backend(backend) => match backend {
                BackendError::InvalidArgument { param, .. } => Rendering {
                    param: param.clone(),
                    ..Rendering::new(S::BAD_REQUEST, INVALID_REQUEST, None)
                },
                BackendError::ModelNotFound { .. } => Rendering {
                    param: Some("model".to_owned()),
                    ..Rendering::new(S::NOT_FOUND, INVALID_REQUEST, Some("model_not_found"))
                },
                BackendError::Unsupported { .. } => {
                    Rendering::new(S::NOT_IMPLEMENTED, INVALID_REQUEST, Some("unsupported"))
                }
                BackendError::Overloaded { retry_after, .. } => Rendering {
                    retry_after: Some(*retry_after),
                    ..Rendering::new(
                        S::TOO_MANY_REQUESTS,
                        "rate_limit_error",
                        Some("rate_limit_exceeded"),
                    )
                },
                BackendError::Unavailable { retry_after, .. } => Rendering {
                    retry_after: Some(*retry_after),
                    ..Rendering::new(
                        S::SERVICE_UNAVAILABLE,
                        SERVER_ERROR,
                        Some("service_unavailable"),
                    )
                },
                BackendError::DeadlineExceeded => {
                    Rendering::new(S::GATEWAY_TIMEOUT, SERVER_ERROR, Some("timeout"))
                }
                BackendError::Upstream { .. } => {
                    Rendering::new(S::BAD_GATEWAY, SERVER_ERROR, Some("upstream_error"))
                }
            },
            E::UpstreamUnavailable { retry_after, .. } => Rendering {
                retry_after: Some(*retry_after),
                ..Rendering::new(
                    S::SERVICE_UNAVAILABLE,
                    SERVER_ERROR,
                    Some("upstream_unavailable"),
                )
            },
            E::UpstreamFailed { .. } => {
                Rendering::new(S::BAD_GATEWAY, SERVER_ERROR, Some("upstream_error"))
            }
            E::UpstreamTimeout { .. } => {
                Rendering::new(S::GATEWAY_TIMEOUT, SERVER_ERROR, Some("timeout"))
            }
            E::UpstreamRejected(rejection) => Rendering {
                status: rejection.status,
                kind: Cow::Owned(rejection.kind.clone()),
                code: rejection.code.clone().map(Cow::Owned),
                param: rejection.param.clone(),
                retry_after: rejection.retry_after,
            },
            E::Internal { .. } => Rendering::new(
                S::INTERNAL_SERVER_ERROR,
                SERVER_ERROR,
                Some("internal_error"),
            ),
        }
    }

    /// The envelope body, also sent as the data of an SSE error event.
    pub fn envelope(&self) -> ErrorEnvelope {
        let r = self.rendering();
        ErrorEnvelope {
            error: ErrorBody {
                message: self.to_string(),
                kind: r.kind,
                param: r.param,
                code: r.code,
            },
        }
    }

    /// Logs server-side failures once, where they are rendered; client mistakes stay at debug,
    /// without their message.
    pub(crate) fn log(&self) {
        match self {
            ApiError::Internal { detail } => tracing::error!(%detail, "internal error"),
            ApiError::Backend(BackendError::Upstream { message }) => {
                tracing::error!(%message, "model service error");
            }
            other if other.status().is_server_error() => {
                tracing::warn!(error = %other, "request failed")
            }
            // Not the message: serde's messages quote the offending value, which may be prompt
            // text, and prompts stay out of logs.
            other => {
                let r = other.rendering();
                tracing::debug!(
                    status = r.status.as_u16(),
                    code = r.code.as_deref(),
                    param = r.param.as_deref(),
                    "request rejected"
                );
            }
        }
    }
}

impl From<passerelle_store::StoreError> for ApiError {
    fn from(err: passerelle_store::StoreError) -> Self {
        use passerelle_store::StoreError as S;
        match err {
            err if err.is_unavailable() => {
                tracing::warn!(error = %err, "state store unavailable");
                ApiError::StoreUnavailable
            }
            S::InvalidName(_) | S::InvalidScope(_) | S::InvalidInput(_) => {
                ApiError::invalid_request(err.to_string())
            }
            S::KeyNotFound(id) => ApiError::KeyNotFound { id },
            err => ApiError::Internal {
                detail: format!("state store: {err}"),
            },
        }
    }
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// The OpenAI error object. `param` and `code` are always present, `null` when absent.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    pub param: Option<String>,
    pub code: Option<Cow<'static, str>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let rendering = self.rendering();
        let mut response = (rendering.status, Json(self.envelope())).into_response();
        let headers = response.headers_mut();
        if let Some(retry_after) = rendering.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        if rendering.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::RateLimited(refused) = &self {
            refused.headers.apply(headers);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn render(err: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = err.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn invalid_param_names_the_param() {
        let (status, _, body) = render(ApiError::invalid_param("temperature", "too hot")).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "too hot", "type": "invalid_request_error",
                "param": "temperature", "code": null
            }})
        );
    }

    #[tokio::test]
    async fn auth_errors_are_401_with_a_challenge() {
        for err in [ApiError::MissingApiKey, ApiError::InvalidApiKey] {
            let (status, headers, body) = render(err).await;
            assert_eq!(status, 401);
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            assert_eq!(body["error"]["code"], "invalid_api_key");
        }
    }

    #[tokio::test]
    async fn backend_errors_keep_their_meaning() {
        let cases = [
            (
                BackendError::InvalidArgument {
                    message: "m".into(),
                    param: Some("top_k".into()),
                },
                400,
                None,
            ),
            (
                BackendError::ModelNotFound {
                    message: "m".into(),
                },
                404,
                None,
            ),
            (
                BackendError::Unsupported {
                    message: "m".into(),
                },
                501,
                None,
            ),
            (
                BackendError::Overloaded {
                    message: "m".into(),
                    retry_after: Duration::from_secs(2),
                },
                429,
                Some("2"),
            ),
            (
                BackendError::Unavailable {
                    message: "m".into(),
                    retry_after: Duration::from_secs(5),
                },
                503,
                Some("5"),
            ),
            (BackendError::DeadlineExceeded, 504, None),
            (
                BackendError::Upstream {
                    message: "m".into(),
                },
                502,
                None,
            ),
        ];
        for (err, want_status, want_retry) in cases {
            let (status, headers, body) = render(ApiError::from(err)).await;
            assert_eq!(status, want_status);
            assert_eq!(
                headers
                    .get(header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap()),
                want_retry
            );
            assert!(body["error"]["message"].is_string());
            assert!(body["error"]["type"].is_string());
        }
    }

    #[tokio::test]
    async fn model_not_found_has_its_code_and_param() {
        let (status, _, body) = render(ApiError::ModelNotFound {
            model: "gpt-9".into(),
        })
        .await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert!(body["error"]["message"].as_str().unwrap().contains("gpt-9"));
    }

    #[tokio::test]
    async fn internal_detail_is_not_shown_to_clients() {
        let (status, _, body) = render(ApiError::Internal {
            detail: "disk on fire".into(),
        })
        .await;
        assert_eq!(status, 500);
        assert!(!body.to_string().contains("disk"));
    }

    #[tokio::test]
    async fn other_statuses() {
        let cases = [
            (
                ApiError::PayloadTooLarge { limit: 10 },
                413,
                Some("request_too_large"),
            ),
            (
                ApiError::RouteNotFound {
                    method: "GET".into(),
                    path: "/x".into(),
                },
                404,
                Some("unknown_url"),
            ),
            (
                ApiError::MethodNotAllowed {
                    method: "GET".into(),
                    path: "/x".into(),
                },
                405,
                Some("method_not_allowed"),
            ),
            (ApiError::GatewayBusy, 503, Some("server_busy")),
            (
                ApiError::DocumentNotFound { id: "doc_1".into() },
                404,
                Some("document_not_found"),
            ),
            (
                ApiError::ResponseNotFound {
                    id: "chatcmpl-1".into(),
                },
                404,
                Some("response_not_found"),
            ),
            (
                ApiError::from(passerelle_store::StoreError::KeyNotFound("k".into())),
                404,
                Some("key_not_found"),
            ),
        ];
        for (err, want_status, want_code) in cases {
            let (status, _, body) = render(err).await;
            assert_eq!(status, want_status);
            assert_eq!(body["error"]["code"].as_str(), want_code);
        }
    }
}
