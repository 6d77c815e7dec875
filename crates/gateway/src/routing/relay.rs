//! Relaying an upstream's answer to the client: a JSON body as received, or its SSE stream
//! event by event as each arrives (nothing is held back to batch). Usage is read from the
//! answer on the way through and accounted like any other answer's.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use http_body_util::BodyDataStream;
use serde::Deserialize;

use super::client::UpstreamResponse;
use super::deadline::Deadline;
use super::inspect::Inspector;
use super::sse_split::SseSplitter;
use super::table::Lease;
use crate::body::read_all;
use crate::error::ApiError;
use crate::llm::Usage;
use crate::meter::{Meter, Served};
use crate::metrics::GatewayMetrics;

/// The parts of an answer or chunk the gateway reads; everything else passes untouched.
/// Read once per streamed event, so nothing is allocated for the fields it only looks at.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    choices: Option<AnyElement>,
    usage: Option<UsageIn>,
}

/// Whether a JSON array has an element, read without building any.
struct AnyElement(bool);

impl<'de> Deserialize<'de> for AnyElement {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AnyElement;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AnyElement, A::Error> {
                let mut any = false;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(AnyElement(any))
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

#[derive(Deserialize, Default)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    total_tokens: Option<u32>,
}

impl From<UsageIn> for Usage {
    fn from(u: UsageIn) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u
                .total_tokens
                .unwrap_or(u.prompt_tokens.saturating_add(u.completion_tokens)),
        }
    }
}

/// The first choice's text, read only for the prompt log.
#[derive(Deserialize)]
struct TextPeek {
    #[serde(default)]
    choices: Vec<ChoiceText>,
}

#[derive(Deserialize)]
struct ChoiceText {
    #[serde(default)]
    index: u32,
    text: Option<String>,
    message: Option<Content>,
    delta: Option<Content>,
}

#[derive(Deserialize)]
struct Content {
    content: Option<String>,
}

fn first_choice_text(json: &[u8]) -> String {
    let Ok(peek) = serde_json::from_slice::<TextPeek>(json) else {
        return String::new();
    };
    peek.choices
        .into_iter()
        .filter(|c| c.index == 0)
        .filter_map(|c| {
            c.text
                .or(c.message.and_then(|m| m.content))
                .or(c.delta.and_then(|d| d.content))
        })
        .collect()
}

/// What one relayed answer consumed. Accounted once, when the answer ends or is dropped (a
/// client gone mid-stream): with the upstream's usage when it came, else no prompt tokens and
/// one completion token per content chunk relayed.
pub(crate) struct Account {
    meter: Option<Meter>,
    metrics: GatewayMetrics,
    model: String,
    started_at: Instant,
    usage: Option<Usage>,
    content_chunks: u32,
    completion: String,
}

impl Account {
    pub(crate) fn new(
        meter: Meter,
        metrics: GatewayMetrics,
        model: &str,
        started_at: Instant,
    ) -> Self {
        Self {
            meter: Some(meter),
            metrics,
            model: model.to_owned(),
            started_at,
            usage: None,
            content_chunks: 0,
            completion: String::new(),
        }
    }

    fn wants_completion(&self) -> bool {
        self.meter.as_ref().is_some_and(Meter::wants_completion)
    }

    fn set_response_id(&mut self, id: Option<std::borrow::Cow<'_, str>>) {
        if let (Some(meter), Some(id)) = (&mut self.meter, id) {
            meter.set_response_id(id.into_owned());
        }
    }

    /// The upstream's usage when it came, else no prompt tokens and one completion token per
    /// content chunk relayed.
    fn usage(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.content_chunks,
            total_tokens: self.content_chunks,
        })
    }

    fn finish(&mut self) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        let usage = self.usage();
        self.metrics.prompt_tokens(&self.model, usage.prompt_tokens);
        self.metrics
            .completion_tokens(&self.model, usage.completion_tokens);
        meter.record(&self.model, usage, Served::Model, &self.completion);
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A non-streaming answer, read whole (bounded by `deadline`) and passed on as received, or
/// as `inspector` leaves it.
pub(crate) async fn json(
    response: UpstreamResponse,
    lease: Lease,
    mut account: Account,
    mut deadline: Deadline,
    inspector: Option<Box<Inspector>>,
) -> Result<Response, ApiError> {
    let status = response.status();
    let failed = |account: &Account| ApiError::UpstreamFailed {
        model: account.model.clone(),
        status: StatusCode::BAD_GATEWAY.as_u16(),
    };
    let body = match deadline.within(read_all(response.into_body())).await {
        Err(_) => {
            lease.failed();
            return Err(ApiError::UpstreamTimeout {
                model: account.model.clone(),
            });
        }
        Ok(Err(err)) => {
            lease.failed();
            tracing::warn!(model = %account.model, error = %err, "upstream answer cut short");
            return Err(failed(&account));
        }
        Ok(Ok(body)) => body,
    };
    let Ok(peek) = serde_json::from_slice::<Peek<'_>>(&body) else {
        lease.failed();
        tracing::warn!(model = %account.model, "upstream answer is not JSON");
        return Err(failed(&account));
    };
    drop(lease);
    account.usage = peek.usage.map(Usage::from);
    account.set_response_id(peek.id);
    if account.wants_completion() {
        account.completion = first_choice_text(&body);
    }
    account.finish();
    let body = match inspector {
        // Boxed: only cached or screened answers are inspected (see `dispatch::respond`).
        Some(mut inspector) => Box::pin(inspector.json(body, account.usage())).await,
        None => body,
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The most an upstream may send after `[DONE]` before its connection is given up.
const MAX_AFTER_DONE: usize = 64 * 1024;

/// A streaming answer, relayed event by event, each as it is or as `inspector` leaves it.
/// `client_wants_usage`: whether the client asked for the usage chunk; when it did not, the one
/// the gateway asked for is not passed on.
pub(crate) fn stream(
    response: UpstreamResponse,
    lease: Lease,
    mut account: Account,
    mut deadline: Deadline,
    client_wants_usage: bool,
    mut inspector: Option<Box<Inspector>>,
) -> Response {
    let mut upstream = BodyDataStream::new(response.into_body());
    let events = async_stream::stream! {
        let mut splitter = SseSplitter::default();
        // The events of one read from the upstream, passed on together as one frame.
        let mut out = BytesMut::new();
        let mut done = false;
        // Every choice was ended by the output screen: the rest is not wanted.
        let mut ended_early = false;
        let mut first = true;
        'read: loop {
            let read = tokio::select! {
                biased;
                read = upstream.next() => read,
                () = deadline.passed() => {
                    lease.failed();
                    let err = ApiError::UpstreamTimeout { model: account.model.clone() };
                    out.extend_from_slice(&error_event(&err));
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    yield Ok::<_, Infallible>(out.split().freeze());
                    return;
                }
            };
            let bytes = match read {
                Some(Ok(bytes)) => bytes,
                None => break,
                Some(Err(err)) => {
                    tracing::warn!(model = %account.model, error = %err, "upstream stream broke");
                    break;
                }
            };
            splitter.push(bytes);
            while let Some(event) = splitter.next_event() {
                match event.data().as_deref() {
                    Some("[DONE]") => {
                        done = true;
                        if let Some(inspector) = &mut inspector {
                            for event in inspector.completed(account.usage()).await {
                                out.extend_from_slice(&event);
                            }
                        }
                        out.extend_from_slice(&event.raw);
                        break 'read;
                    }
                    Some(data) => {
                        if let Ok(peek) = serde_json::from_str::<Peek<'_>>(data) {
                            let has_choices = peek.choices.is_some_and(|c| c.0);
                            if first {
                                first = false;
                                account.set_response_id(peek.id);
                            }
                            if has_choices {
                                if account.content_chunks == 0 {
                                    account.metrics.time_to_first_token(
                                        &account.model,
                                        account.started_at.elapsed(),
                                    );
                                }
                                account.content_chunks = account.content_chunks.saturating_add(1);
                                if account.wants_completion() {
                                    let text = first_choice_text(data.as_bytes());
                                    account.completion.push_str(&text);
                                }
                            }
                            if let Some(usage) = peek.usage {
                                account.usage = Some(usage.into());
                                if !has_choices && !client_wants_usage {
                                    continue;
                                }
                            }
                        }
                        let Some(inspector) = &mut inspector else {
                            out.extend_from_slice(&event.raw);
                            continue;
                        };
                        // The inspector may wait (on the safety service): what came before
                        // goes out first.
                        if !out.is_empty() {
                            yield Ok(out.split().freeze());
                        }
                        for event in inspector.event(data, event.raw.clone()).await {
                            yield Ok(event);
                        }
                        for event in inspector.ended_by_filter() {
                            yield Ok(event);
                        }
                        if inspector.all_ended_early() {
                            ended_early = true;
                            break 'read;
                        }
                    }
                    None => out.extend_from_slice(&event.raw),
                }
            }
            if !out.is_empty() {
                yield Ok(out.split().freeze());
            }
        }
        if !out.is_empty() {
            yield Ok(out.split().freeze());
        }
        if ended_early {
            // The upstream did nothing wrong: its connection is dropped, its replica kept.
            drop(upstream);
            drop(lease);
            let usage = account.usage();
            account.finish();
            if client_wants_usage && let Some(inspector) = &inspector {
                yield Ok(inspector.usage_event(usage));
            }
            yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        } else if done {
            account.finish();
            // The upstream ends its body right after `[DONE]`: read that end, so that its
            // connection goes back to the pool instead of being closed.
            let mut after_done = 0usize;
            while after_done <= MAX_AFTER_DONE
                && let Ok(Some(Ok(bytes))) = deadline.within(upstream.next()).await
            {
                after_done += bytes.len();
            }
            drop(lease);
        } else {
            // The upstream stopped before `[DONE]`: the answer is incomplete, and the client
            // must hear so rather than take it for whole.
            lease.failed();
            drop(lease);
            let err = ApiError::UpstreamFailed {
                model: account.model.clone(),
                status: StatusCode::BAD_GATEWAY.as_u16(),
            };
            account.finish();
            yield Ok(error_event(&err));
            yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        }
    };
    event_stream(Body::from_stream(events))
}

/// A response carrying SSE events, with the headers every stream of ours has.
pub(super) fn event_stream(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // As for our own streams: nginx must not buffer the events.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.into_response()
}

fn error_event(err: &ApiError) -> Bytes {
    err.log();
    let json = serde_json::to_string(&err.envelope()).unwrap_or_default();
    Bytes::from(format!("data: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_choice_text_is_read_from_any_shape() {
        let chat = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"}}]}"#;
        assert_eq!(first_choice_text(chat), "Hi");
        let delta = br#"{"choices":[{"index":1,"delta":{"content":"x"}},{"index":0,"delta":{"content":"y"}}]}"#;
        assert_eq!(first_choice_text(delta), "y");
        let text = br#"{"choices":[{"index":0,"text":"once"}]}"#;
        assert_eq!(first_choice_text(text), "once");
    }

    #[test]
    fn usage_fills_in_a_missing_total() {
        let usage: Usage =
            serde_json::from_str::<UsageIn>(r#"{"prompt_tokens":3,"completion_tokens":4}"#)
                .unwrap()
                .into();
        assert_eq!(usage.total_tokens, 7);
    }
}
