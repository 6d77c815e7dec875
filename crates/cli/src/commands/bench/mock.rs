//! The mock upstream: `POST /v1/chat/completions` answered at once from bytes prepared at
//! start, so that what a benchmark measures is the hop in front of it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use serde::Deserialize;

use crate::args::MockUpstreamArgs;

/// The answers, serialised once.
struct Answers {
    json: Bytes,
    /// Each SSE event of a streamed answer, the usage event and `[DONE]` excluded.
    events: Vec<Bytes>,
    usage_event: Bytes,
    delay: Duration,
}

const ID: &str = "chatcmpl-mock";
const MODEL: &str = "mock";
const CREATED: u64 = 1_700_000_000;

impl Answers {
    fn new(chunks: u32, delay: Duration) -> Self {
        let json = serde_json::json!({
            "id": ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
        });
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            event(&serde_json::json!({
                "id": ID,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            }))
        };
        let mut events = vec![chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        )];
        for n in 0..chunks {
            events.push(chunk(
                serde_json::json!({"content": format!("word{n} ")}),
                None,
            ));
        }
        events.push(chunk(serde_json::json!({}), Some("stop")));
        let usage_event = event(&serde_json::json!({
            "id": ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": 9 + chunks}
        }));
        Self {
            json: Bytes::from(json.to_string()),
            events,
            usage_event,
            delay,
        }
    }
}

fn event(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// The request fields the mock reads; the rest is ignored.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Serves until the process is stopped.
pub async fn serve(args: MockUpstreamArgs) -> anyhow::Result<()> {
    let answers = Arc::new(Answers::new(
        args.chunks,
        Duration::from_micros(args.chunk_delay_us),
    ));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(answers);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    eprintln!("mock upstream listening on http://{}/v1", args.listen);
    axum::serve(listener, app)
        .await
        .context("mock upstream failed")
}

async fn chat(State(answers): State<Arc<Answers>>, body: Bytes) -> Response {
    let Ok(peek) = serde_json::from_slice::<Peek>(&body) else {
        let mut response =
            Body::from(r#"{"error":{"message":"not JSON","type":"invalid_request_error"}}"#)
                .into_response();
        *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
        return response;
    };
    if !peek.stream {
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            answers.json.clone(),
        )
            .into_response();
    }
    let include_usage = peek.stream_options.is_some_and(|o| o.include_usage);
    let events = async_stream::stream! {
        for event in &answers.events {
            if !answers.delay.is_zero() {
                tokio::time::sleep(answers.delay).await;
            }
            yield Ok::<_, Infallible>(event.clone());
        }
        if include_usage {
            yield Ok(answers.usage_event.clone());
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(events),
    )
        .into_response()
}
