//! Sending one request to an upstream model: a replica picked by the pool, retried on another
//! after a connect error or a 5xx, all before any byte of the answer was read.

use std::sync::Arc;
use std::time::Duration;

use super::client::{UpstreamClient, UpstreamResponse};
use super::deadline::Deadline;
use super::forward::ForwardBody;
use super::table::{Lease, Pool, Replica};
use crate::body::read_all;
use crate::extract::REQUEST_ID_HEADER;
use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

/// Retry hint when every replica is ejected or unreachable and no better one is known.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// An upstream's 4xx, as the client receives it: the upstream's status and error fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRejection {
    pub status: StatusCode,
    pub message: String,
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
    pub retry_after: Option<Duration>,
}

impl UpstreamRejection {
    /// Reads an upstream's error body: OpenAI's envelope when it sent one, else its text.
    fn read(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Body,
        }
        #[derive(Deserialize)]
        struct Body {
            message: Option<String>,
            #[serde(rename = "type")]
            kind: Option<String>,
            param: Option<serde_json::Value>,
            code: Option<serde_json::Value>,
        }
        let text = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error }) => Self {
                status,
                message: error.message.unwrap_or_default(),
                kind: error
                    .kind
                    .unwrap_or_else(|| "invalid_request_error".to_owned()),
                param: text(error.param),
                code: text(error.code),
                retry_after,
            },
            Err(_) => Self {
                status,
                message: String::from_utf8_lossy(body).chars().take(1000).collect(),
                kind: "invalid_request_error".to_owned(),
                param: None,
                code: None,
                retry_after,
            },
        }
    }

    /// Whether the upstream refused the prompt as longer than its context, which a model with
    /// a larger one may still answer.
    pub(crate) fn is_context_length(&self) -> bool {
        if self.code.as_deref() == Some("context_length_exceeded") {
            return true;
        }
        let message = self.message.to_ascii_lowercase();
        ["context length", "context window", "context_length"]
            .iter()
            .any(|needle| message.contains(needle))
    }
}

/// Why no answer came from an upstream model.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No replica could be reached, or every one is ejected.
    Unavailable { retry_after: Duration },
    /// Every attempt got a 5xx; the last status.
    Failed { status: StatusCode },
    /// The request deadline passed.
    TimedOut,
    /// The upstream refused the request.
    Rejected(UpstreamRejection),
}

/// A request ready to send to any replica of one model.
pub(crate) struct Outgoing<'a> {
    pub(crate) client: &'a UpstreamClient,
    pub(crate) pool: &'a Arc<Pool>,
    pub(crate) api: super::dispatch::Api,
    /// The client's JSON, whose `model` is replaced by each replica's upstream name.
    pub(crate) body: &'a ForwardBody<'a>,
    /// Whether to ask for the usage chunk of a stream the client did not ask for.
    pub(crate) ask_usage: bool,
    pub(crate) request_id: &'a http::HeaderValue,
    pub(crate) retries: u32,
}

impl Outgoing<'_> {
    /// Sends until a replica answers with a 2xx head (returned with its lease, to be held
    /// while the body is read) or a 4xx (passed on), or the retries run out. Nothing of any
    /// answer has been read when a retry is made. All of it is bounded by `deadline`.
    pub(crate) async fn send(
        self,
        deadline: &mut Deadline,
    ) -> Result<(UpstreamResponse, Lease), SendError> {
        // The replicas that failed this request; empty (and unallocated) unless one did.
        let mut tried = Vec::new();
        let mut last = SendError::Unavailable {
            retry_after: UNAVAILABLE_RETRY,
        };
        for attempt in 0..=self.retries {
            let lease = match self.pool.lease(&tried) {
                Ok(lease) => lease,
                Err(all_ejected) => {
                    // Nothing to try now; what the earlier attempts saw says more, if any.
                    if attempt == 0 {
                        last = SendError::Unavailable {
                            retry_after: all_ejected.retry_after.max(UNAVAILABLE_RETRY),
                        };
                    }
                    break;
                }
            };
            let replica = lease.replica();
            let response = match deadline
                .within(self.client.send(self.request(replica)))
                .await
            {
                Err(_) => {
                    lease.failed();
                    return Err(SendError::TimedOut);
                }
                Ok(Err(err)) => {
                    lease.failed();
                    tracing::warn!(
                        model = %self.pool.model,
                        upstream = %replica.base_url,
                        attempt,
                        error = %err,
                        "upstream unreachable"
                    );
                    last = SendError::Unavailable {
                        retry_after: UNAVAILABLE_RETRY,
                    };
                    tried.push(lease.index());
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if status.is_server_error() {
                lease.failed();
                tracing::warn!(
                    model = %self.pool.model,
                    upstream = %replica.base_url,
                    attempt,
                    status = status.as_u16(),
                    "upstream failed"
                );
                last = SendError::Failed { status };
                tried.push(lease.index());
                continue;
            }
            lease.succeeded();
            if status.is_success() {
                return Ok((response, lease));
            }
            return Err(SendError::Rejected(
                self.rejection(response, deadline).await,
            ));
        }
        Err(last)
    }

    /// The request for one replica. Built field by field: `http::request::Builder` would
    /// parse each header name and value again, and copy the static ones.
    fn request(&self, replica: &Replica) -> http::Request<Full<Bytes>> {
        let body = self
            .body
            .to_upstream(&replica.upstream_model, self.ask_usage);
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = replica.endpoint(self.api).clone();
        let headers = request.headers_mut();
        headers.reserve(4);
        headers.insert(http::header::HOST, replica.host.clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(&REQUEST_ID_HEADER, self.request_id.clone());
        if let Some(key) = &replica.authorization {
            headers.insert(http::header::AUTHORIZATION, key.clone());
        }
        request
    }

    async fn rejection(
        &self,
        response: UpstreamResponse,
        deadline: &mut Deadline,
    ) -> UpstreamRejection {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = deadline
            .within(read_all(response.into_body()))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        UpstreamRejection::read(status, retry_after, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_envelopes_are_read_field_by_field() {
        let body = br#"{"error": {"message": "This model's maximum context length is 2048 tokens.",
            "type": "BadRequestError", "param": null, "code": 400}}"#;
        let rejection = UpstreamRejection::read(StatusCode::BAD_REQUEST, None, body);
        assert_eq!(rejection.kind, "BadRequestError");
        assert_eq!(rejection.code.as_deref(), Some("400"));
        assert!(rejection.is_context_length());
    }

    #[test]
    fn other_bodies_become_the_message() {
        let rejection = UpstreamRejection::read(StatusCode::NOT_FOUND, None, b"no such route");
        assert_eq!(rejection.message, "no such route");
        assert_eq!(rejection.kind, "invalid_request_error");
        assert!(!rejection.is_context_length());
        let coded = UpstreamRejection::read(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error": {"message": "too long", "code": "context_length_exceeded"}}"#,
        );
        assert!(coded.is_context_length());
    }
}
