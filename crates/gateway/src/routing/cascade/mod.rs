//! Cascades: a virtual model (`auto`) answered by a small model first, and by a large one when
//! the small answer is not confident (its mean token log-probability under the threshold, or a
//! refusal).
//!
//! The small model is asked non-streamed with log-probabilities, whatever the client asked, so
//! its answer can be judged before anything is sent; a kept answer is then passed on as JSON or
//! replayed as an SSE stream, without the log-probabilities the client did not ask for. An
//! escalated request goes to the large model as the client sent it, streamed or not. Both calls
//! run the ordinary path of their model (safety, usage accounting, fallbacks), so both are
//! metered. `policy` is the pure judgement; `answer` reads it from the JSON; `replay` makes the
//! stream.

mod answer;
pub(crate) mod policy;
mod replay;

use std::future::Future;

use axum::Json;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::config::CascadeConfig;
use super::dispatch::{self, Api, KeyCheck, Routable, Routed};
use super::forward::ForwardBody;
use super::table::RouteTable;
use crate::error::ApiError;
use crate::extract::parse_json;
use policy::{Policy, Reason, Verdict};

/// Response header: `small` when the small model's answer was kept, else `escalated`.
pub(crate) const CASCADE_HEADER: &str = "x-passerelle-cascade";
/// Response header: why (`confident`, `low_logprob`, `refusal`, `no_logprobs`, `small_failed`).
pub(crate) const REASON_HEADER: &str = "x-passerelle-cascade-reason";
/// Response header: the small answer's mean token log-probability, when it had tokens.
pub(crate) const MEAN_LOGPROB_HEADER: &str = "x-passerelle-cascade-mean-logprob";
/// Response header: the model that answered, as the routing table names it.
pub(crate) const MODEL_HEADER: &str = "x-passerelle-cascade-model";

/// Largest small answer read for judging. Far above any real answer; a bound all the same.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// A cascade of the routing table, its members' aliases resolved.
#[derive(Debug)]
pub(crate) struct Cascade {
    pub(crate) name: String,
    pub(crate) small: String,
    pub(crate) large: String,
    policy: Policy,
}

impl Cascade {
    pub(crate) fn new(name: &str, small: &str, large: &str, config: &CascadeConfig) -> Self {
        Self {
            name: name.to_owned(),
            small: small.to_owned(),
            large: large.to_owned(),
            policy: Policy::new(config),
        }
    }
}

/// Answers `routed` through `cascade`. The key was checked for the cascade's name; its members
/// are not checked again.
pub(crate) async fn respond<T, F, Fut>(
    routed: &Routed<'_>,
    table: &RouteTable,
    cascade: &Cascade,
    local: &F,
) -> Result<(Response, String), ApiError>
where
    T: Routable,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(Response, String), ApiError>>,
{
    let body: Map<String, Value> = parse_json(routed.body)?;
    let streaming = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let wanted = Wanted {
        api: routed.api,
        streaming,
        usage: streaming && dispatch::wants_usage(&body),
        logprobs: asks_logprobs(routed.api, &body),
    };
    let small_body = small_request(&body, &cascade.small, wanted)?;
    let small = Routed {
        body: &small_body,
        forward: ForwardBody::parse(&small_body).ok(),
        requested: Some(cascade.small.clone()),
        ..routed.clone()
    };
    let answered =
        dispatch::serve_chain(&small, table, &cascade.small, KeyCheck::Done, local).await;
    let verdict = match answered {
        Ok((response, label)) => match judge(cascade, response, &label, wanted).await {
            Judged::Kept(response, verdict) => {
                count(routed, cascade, "small", verdict.reason);
                return Ok((with_headers(response, "small", verdict, &label), label));
            }
            Judged::Escalate(verdict) => verdict,
        },
        Err(err) if dispatch::calls_for_fallback(&err) => {
            tracing::warn!(
                cascade = %cascade.name,
                model = %cascade.small,
                error = %err,
                "cascade's small model failed; escalating"
            );
            Verdict {
                reason: Reason::SmallFailed,
                mean_logprob: None,
            }
        }
        Err(err) => return Err(err),
    };
    count(routed, cascade, "escalated", verdict.reason);
    // Both paths put the model they serve into the body they send, so the client's goes as is.
    let large = Routed {
        requested: Some(cascade.large.clone()),
        ..routed.clone()
    };
    let (response, label) =
        dispatch::serve_chain(&large, table, &cascade.large, KeyCheck::Done, local).await?;
    Ok((with_headers(response, "escalated", verdict, &label), label))
}

/// What the client asked of the answer's shape.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    api: Api,
    streaming: bool,
    usage: bool,
    logprobs: bool,
}

enum Judged {
    Kept(Response, Verdict),
    Escalate(Verdict),
}

/// Reads the small answer whole and judges it; a kept one is made into the client's response.
async fn judge(cascade: &Cascade, response: Response, label: &str, wanted: Wanted) -> Judged {
    let unreadable = |why: &str| {
        tracing::warn!(cascade = %cascade.name, model = %label, "cascade's small answer {why}; escalating");
        Judged::Escalate(Verdict {
            reason: Reason::SmallFailed,
            mean_logprob: None,
        })
    };
    if !response.status().is_success() {
        return unreadable("is not a success");
    }
    let Ok(bytes) = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES).await else {
        return unreadable("could not be read");
    };
    let Ok(mut answer) = serde_json::from_slice::<Value>(&bytes) else {
        return unreadable("is not JSON");
    };
    let choices = answer::choices(wanted.api, &answer);
    let views: Vec<_> = choices.iter().map(answer::ChoiceRead::view).collect();
    let verdict = cascade.policy.judge(&views);
    if verdict.reason.escalates() {
        return Judged::Escalate(verdict);
    }
    if !wanted.logprobs {
        answer::strip_logprobs(&mut answer);
    }
    let response = if wanted.streaming {
        replay::response(wanted.api, &answer, wanted.usage)
    } else {
        Json(answer).into_response()
    };
    Judged::Kept(response, verdict)
}

/// Whether the client asked for log-probabilities: chat's `logprobs: true`, or any number of
/// alternatives in the completions API's `logprobs`.
fn asks_logprobs(api: Api, body: &Map<String, Value>) -> bool {
    match (api, body.get("logprobs")) {
        (Api::Chat, Some(Value::Bool(asked))) => *asked,
        (Api::Completions, Some(Value::Number(_))) => true,
        _ => false,
    }
}

/// The client's request as the small model gets it: that model, not streamed, with token
/// log-probabilities (as many alternatives as the client asked, or none).
fn small_request(
    body: &Map<String, Value>,
    small: &str,
    wanted: Wanted,
) -> Result<Bytes, ApiError> {
    let mut body = body.clone();
    body.insert("model".to_owned(), Value::from(small));
    body.insert("stream".to_owned(), Value::Bool(false));
    body.remove("stream_options");
    if !wanted.logprobs {
        let logprobs = match wanted.api {
            Api::Chat => Value::Bool(true),
            Api::Completions => Value::from(0),
        };
        body.insert("logprobs".to_owned(), logprobs);
    }
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|err| ApiError::Internal {
            detail: format!("cascade request not serialisable: {err}"),
        })
}

fn count(routed: &Routed<'_>, cascade: &Cascade, outcome: &str, reason: Reason) {
    routed
        .state
        .metrics()
        .cascade(&cascade.name, outcome, reason.as_str());
}

fn with_headers(
    mut response: Response,
    outcome: &'static str,
    verdict: Verdict,
    model: &str,
) -> Response {
    let headers = response.headers_mut();
    headers.insert(CASCADE_HEADER, HeaderValue::from_static(outcome));
    headers.insert(
        REASON_HEADER,
        HeaderValue::from_static(verdict.reason.as_str()),
    );
    if let Some(mean) = verdict.mean_logprob
        && let Ok(value) = HeaderValue::from_str(&format!("{mean:.4}"))
    {
        headers.insert(MEAN_LOGPROB_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(model) {
        headers.insert(MODEL_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn wanted(api: Api, logprobs: bool) -> Wanted {
        Wanted {
            api,
            streaming: true,
            usage: true,
            logprobs,
        }
    }

    #[test]
    fn the_small_model_is_asked_whole_with_logprobs() {
        let body = map(json!({"model": "auto", "stream": true,
                              "stream_options": {"include_usage": true}, "messages": []}));
        let sent: Value = serde_json::from_slice(
            &small_request(&body, "qwen", wanted(Api::Chat, false)).unwrap(),
        )
        .unwrap();
        assert_eq!(sent["model"], "qwen");
        assert_eq!(sent["stream"], false);
        assert_eq!(sent["logprobs"], true);
        assert!(sent.get("stream_options").is_none());
        let sent: Value = serde_json::from_slice(
            &small_request(&body, "qwen", wanted(Api::Completions, false)).unwrap(),
        )
        .unwrap();
        assert_eq!(sent["logprobs"], 0);
    }

    #[test]
    fn a_client_asking_logprobs_keeps_its_own_options() {
        let body = map(json!({"logprobs": 3}));
        assert!(asks_logprobs(Api::Completions, &body));
        let sent: Value = serde_json::from_slice(
            &small_request(&body, "qwen", wanted(Api::Completions, true)).unwrap(),
        )
        .unwrap();
        assert_eq!(sent["logprobs"], 3);
        assert!(asks_logprobs(Api::Chat, &map(json!({"logprobs": true}))));
        assert!(!asks_logprobs(Api::Chat, &map(json!({"logprobs": false}))));
        assert!(!asks_logprobs(
            Api::Completions,
            &map(json!({"logprobs": null}))
        ));
    }
}
