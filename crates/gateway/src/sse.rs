//! Server-sent events for streaming completions, in OpenAI's framing: `data: <chunk>` events,
//! then `data: [DONE]`.
//!
//! The body stream owns the [`Answer`], whose live generation owns the gRPC response stream. When the client
//! disconnects, hyper drops the body, the generation is dropped with it and the service sees the
//! call cancelled. Nothing is spawned and nothing is buffered in between, so nothing can keep a
//! generation alive for a client that has gone.

use std::convert::Infallible;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::answer::Answer;
use crate::error::ApiError;
use crate::generation::Progress;
use crate::llm::{Delta, Finished, Usage};

/// Turns generation progress into the chunks of one API's stream.
pub(crate) trait ChunkEncoder: Send + 'static {
    /// Chunks sent as soon as the stream opens (chat: the assistant role of each choice).
    fn opening(&mut self, choices: u32) -> Vec<Event>;
    /// The chunks for new text and tool calls; none when there is nothing to send (no text,
    /// no logprobs, no calls).
    fn delta(&mut self, delta: Delta) -> Vec<Event>;
    /// The chunk that closes one choice with its finish reason.
    fn finished(&mut self, finished: &Finished) -> Event;
    /// The final usage chunk (`"choices": []`), sent when the client asked for usage.
    fn usage(&mut self, usage: Usage) -> Event;
}

/// The SSE response for a started generation.
pub(crate) fn stream<E: ChunkEncoder>(
    mut generation: Answer,
    mut encoder: E,
    include_usage: bool,
) -> Response {
    let events = async_stream::stream! {
        for event in encoder.opening(generation.choices()) {
            yield Ok::<_, Infallible>(event);
        }
        let mut failed = false;
        while let Some(progress) = generation.next().await {
            match progress {
                Ok(Progress::Delta(delta)) => {
                    for event in encoder.delta(delta) {
                        yield Ok(event);
                    }
                }
                Ok(Progress::Finished(finished)) => yield Ok(encoder.finished(&finished)),
                Err(err) => {
                    let err = ApiError::from(err);
                    err.log();
                    yield Ok(json_event(&err.envelope()));
                    failed = true;
                    break;
                }
            }
        }
        if include_usage && !failed {
            yield Ok(encoder.usage(generation.usage()));
        }
        // Release the service's stream before the final event: the work is over either way.
        drop(generation);
        yield Ok(Event::default().data("[DONE]"));
    };
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    // nginx (our TLS front) buffers proxied responses unless told not to, which would hold
    // tokens back until its buffer fills.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A `data:` event holding `value` as JSON.
pub(crate) fn json_event<T: Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(json) => Event::default().data(json),
        // Our chunk types serialise infallibly (no maps with non-string keys, no custom
        // serialisers); this arm exists so a future mistake shows as an error event, not a panic.
        Err(err) => {
            let err = ApiError::Internal {
                detail: format!("serialising a stream chunk: {err}"),
            };
            err.log();
            Event::default().data(serde_json::to_string(&err.envelope()).unwrap_or_default())
        }
    }
}

/// The JSON of an SSE event, read back through its wire form (`data: {...}`).
#[cfg(test)]
pub(crate) fn event_json(event: Event) -> serde_json::Value {
    let stream = futures::stream::iter([Ok::<_, Infallible>(event)]);
    let response = Sse::new(stream).into_response();
    let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let data = text
        .trim()
        .strip_prefix("data: ")
        .expect("a single data line");
    serde_json::from_str(data).unwrap()
}
