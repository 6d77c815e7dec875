//! A real OpenAI-compatible HTTP server on loopback whose behaviour each test controls: plain
//! answers, SSE streams (optionally held after their first chunk until the test says so),
//! 500s, context-length refusals and streams cut short. Answers carry token log-probabilities
//! (all the same value, set by the test) when the request asks for them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// What the next requests get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Answer,
    /// 500 with an error body.
    Fail,
    /// 400: the prompt is longer than the model's context.
    ContextTooLong,
    /// 404 with an OpenAI envelope.
    NotFound,
    /// A stream that stops, connection closed, after its first content chunk (once released,
    /// when streams are held).
    BreakMidStream,
    /// A plain answer whose head comes after `head`, and the second half of its body `body`
    /// after the first.
    Slow {
        head: Duration,
        body: Duration,
    },
}

/// Prompt 5 tokens, completion 3.
pub const USAGE: (u64, u64) = (5, 3);

struct Inner {
    name: String,
    behaviour: Mutex<Behaviour>,
    hits: AtomicUsize,
    /// The client address of every connection a request came on.
    peers: Mutex<HashSet<SocketAddr>>,
    bodies: Mutex<Vec<Value>>,
    /// The `x-request-id` of every request, in order (empty when it had none).
    request_ids: Mutex<Vec<String>>,
    /// When set, streams wait after their first content chunk until notified.
    hold: Mutex<Option<Arc<Notify>>>,
    /// The log-probability of every token, when the request asks for them.
    logprob: Mutex<f64>,
    /// The answer's text, when not the default `hello from <name>`.
    text: Mutex<Option<String>>,
    /// A stream's first content, when not the default `hello`.
    opening: Mutex<Option<String>>,
    /// When set, chat answers call a tool with these arguments instead of saying anything.
    tool_arguments: Mutex<Option<String>>,
}

impl Inner {
    fn note_request_id(&self, headers: &HeaderMap) {
        let id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        self.request_ids.lock().unwrap().push(id.to_owned());
    }
}

/// A running mock upstream. Dropping it stops the server.
pub struct Upstream {
    inner: Arc<Inner>,
    pub base_url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            behaviour: Mutex::new(Behaviour::Answer),
            hits: AtomicUsize::new(0),
            peers: Mutex::new(HashSet::new()),
            bodies: Mutex::new(Vec::new()),
            request_ids: Mutex::new(Vec::new()),
            hold: Mutex::new(None),
            logprob: Mutex::new(-0.1),
            text: Mutex::new(None),
            opening: Mutex::new(None),
            tool_arguments: Mutex::new(None),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        Self {
            inner,
            base_url,
            server,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.inner.behaviour.lock().unwrap() = behaviour;
    }

    /// Streams stop after their first content chunk until the returned notify is signalled.
    pub fn hold_streams(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        *self.inner.hold.lock().unwrap() = Some(notify.clone());
        notify
    }

    /// Every token of the following answers gets this log-probability (default -0.1).
    pub fn set_logprob(&self, logprob: f64) {
        *self.inner.logprob.lock().unwrap() = logprob;
    }

    /// The following non-streamed answers say `text`.
    pub fn set_text(&self, text: &str) {
        *self.inner.text.lock().unwrap() = Some(text.to_owned());
    }

    /// The following streams open with `text` as their first content chunk.
    #[allow(dead_code, reason = "only the stack tests' screened streams use it")]
    pub fn set_stream_opening(&self, text: &str) {
        *self.inner.opening.lock().unwrap() = Some(text.to_owned());
    }

    /// The following chat answers call the tool `lookup` with `arguments` (streamed in two
    /// halves) and say nothing.
    #[allow(dead_code, reason = "only the stack tests' screened answers use it")]
    pub fn set_tool_call(&self, arguments: &str) {
        *self.inner.tool_arguments.lock().unwrap() = Some(arguments.to_owned());
    }

    pub fn hits(&self) -> usize {
        self.inner.hits.load(Ordering::SeqCst)
    }

    /// How many connections the requests so far came on.
    #[allow(dead_code, reason = "only the upstream tests count connections")]
    pub fn connections(&self) -> usize {
        self.inner.peers.lock().unwrap().len()
    }

    /// The `x-request-id` of every request received, in order.
    pub fn request_ids(&self) -> Vec<String> {
        self.inner.request_ids.lock().unwrap().clone()
    }

    /// The JSON bodies received, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.inner.bodies.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The URL of a port nobody listens on.
pub async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

async fn chat(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    inner.peers.lock().unwrap().insert(peer);
    inner.note_request_id(&headers);
    let behaviour = *inner.behaviour.lock().unwrap();
    if let Behaviour::Slow { head, .. } = behaviour {
        tokio::time::sleep(head).await;
    }
    answer(inner, body, true)
}

async fn completions(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    inner.peers.lock().unwrap().insert(peer);
    inner.note_request_id(&headers);
    answer(inner, body, false)
}

fn answer(inner: Arc<Inner>, body: Value, chat: bool) -> Response {
    inner.hits.fetch_add(1, Ordering::SeqCst);
    inner.bodies.lock().unwrap().push(body.clone());
    let behaviour = *inner.behaviour.lock().unwrap();
    match behaviour {
        Behaviour::Fail => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "boom", "type": "server_error"}})),
            )
                .into_response();
        }
        Behaviour::ContextTooLong => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {
                    "message": "This model's maximum context length is 16 tokens.",
                    "type": "invalid_request_error", "param": "messages",
                    "code": "context_length_exceeded"
                }})),
            )
                .into_response();
        }
        Behaviour::NotFound => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {
                    "message": "The model does not exist.", "type": "invalid_request_error",
                    "param": "model", "code": "model_not_found"
                }})),
            )
                .into_response();
        }
        Behaviour::Answer | Behaviour::BreakMidStream | Behaviour::Slow { .. } => {}
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let id = format!("up-{}", inner.name);
    let text = format!("hello from {}", inner.name);
    let usage = json!({"prompt_tokens": USAGE.0, "completion_tokens": USAGE.1,
                       "total_tokens": USAGE.0 + USAGE.1});
    let tool_arguments = inner
        .tool_arguments
        .lock()
        .unwrap()
        .clone()
        .filter(|_| chat);
    if let Some(arguments) = tool_arguments {
        return tool_call(
            &id,
            &model,
            &arguments,
            body["stream"] == json!(true),
            &usage,
        );
    }
    if body["stream"] != json!(true) {
        let text = inner.text.lock().unwrap().clone().unwrap_or(text);
        let logprob = *inner.logprob.lock().unwrap();
        let tokens: Vec<&str> = text.split_inclusive(' ').collect();
        let choice = if chat {
            let logprobs = (body["logprobs"] == json!(true)).then(|| {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        json!({"token": t, "logprob": logprob, "bytes": t.as_bytes(),
                                    "top_logprobs": []})
                    })
                    .collect();
                json!({"content": content})
            });
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": logprobs, "finish_reason": "stop"})
        } else {
            let logprobs = body["logprobs"]
                .is_number()
                .then(|| json!({"tokens": tokens, "token_logprobs": vec![logprob; tokens.len()]}));
            json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "stop"})
        };
        let answer = json!({"id": id, "object": "chat.completion", "model": model,
                            "choices": [choice], "usage": usage});
        if let Behaviour::Slow { body: pause, .. } = behaviour {
            let text = answer.to_string();
            let (first, second) = text.split_at(text.len() / 2);
            let (first, second) = (first.to_owned(), second.to_owned());
            let halves = async_stream::stream! {
                yield Ok::<_, std::io::Error>(first);
                tokio::time::sleep(pause).await;
                yield Ok(second);
            };
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(halves))
                .unwrap();
        }
        return Json(answer).into_response();
    }
    let include_usage = body["stream_options"]["include_usage"] == json!(true);
    let hold = inner.hold.lock().unwrap().clone();
    let piece = move |content: &str, finish: Option<&str>| {
        let choice = if chat {
            json!({"index": 0, "delta": {"content": content}, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": content, "finish_reason": finish})
        };
        let chunk = json!({"id": id, "object": "chat.completion.chunk", "model": model,
                           "choices": [choice]});
        format!("data: {chunk}\n\n")
    };
    let usage_chunk = {
        let chunk = json!({"id": format!("up-{}", inner.name), "object": "chat.completion.chunk",
                           "choices": [], "usage": usage});
        format!("data: {chunk}\n\n")
    };
    let opening = inner
        .opening
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| "hello".to_owned());
    let events = async_stream::stream! {
        yield Ok::<_, std::io::Error>(piece(&opening, None));
        if let Some(hold) = hold {
            hold.notified().await;
        }
        if behaviour == Behaviour::BreakMidStream {
            yield Err(std::io::Error::other("upstream died"));
            return;
        }
        yield Ok(piece(" from", None));
        yield Ok(piece(&format!(" {}", text.rsplit(' ').next().unwrap_or_default()), Some("stop")));
        if include_usage {
            yield Ok(usage_chunk);
        }
        yield Ok("data: [DONE]\n\n".to_owned());
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap()
}

/// A chat answer that calls the tool `lookup` with `arguments`, whole or streamed in two halves.
fn tool_call(id: &str, model: &str, arguments: &str, stream: bool, usage: &Value) -> Response {
    let call = |arguments: &str| {
        json!({"index": 0, "id": "call_1", "type": "function",
               "function": {"name": "lookup", "arguments": arguments}})
    };
    if !stream {
        let message =
            json!({"role": "assistant", "content": null, "tool_calls": [call(arguments)]});
        return Json(
            json!({"id": id, "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
            "usage": usage}),
        )
        .into_response();
    }
    let (first, second) = arguments.split_at(arguments.len() / 2);
    let chunk = |delta: Value, finish: Option<&str>| {
        let chunk = json!({"id": id, "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    };
    let body = [
        chunk(
            json!({"role": "assistant", "tool_calls": [call(first)]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": second}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}
