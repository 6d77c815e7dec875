//! Shared fixtures: a model on disk, a running stack, SSE parsing.

use passerelle_testkit::{
    TinyQwen2,
    stack::{Stack, StackOptions},
};
use serde_json::{Value, json};

pub const MODEL_ID: &str = "tiny-qwen2";

/// Which on-disk format the stack serves.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    Gguf,
    Safetensors,
}

/// A model on disk and a stack serving it; the files live as long as this.
pub struct Served {
    pub stack: Stack,
    pub model: TinyQwen2,
}

impl Served {
    pub async fn start(format: Format) -> Self {
        Self::start_with(format, |_| {}).await
    }

    pub async fn start_with(format: Format, adjust: impl FnOnce(&mut StackOptions)) -> Self {
        let model = TinyQwen2::write(TinyQwen2::DEFAULT_SEED).expect("write tiny model");
        let path = match format {
            Format::Gguf => model.gguf_path(),
            Format::Safetensors => model.safetensors_dir(),
        };
        let mut options = StackOptions::new(path, MODEL_ID);
        adjust(&mut options);
        let stack = Stack::start(options).await.expect("start stack");
        Self { stack, model }
    }

    /// `<|im_end|>` and `<|endoftext|>`, the ids that end a Qwen2 generation.
    pub fn eos_ids(&self) -> [u32; 2] {
        let vocab = self.model.checkpoint().vocabulary();
        [vocab.im_end_id(), vocab.endoftext_id()]
    }

    /// A `logit_bias` object pushing every end-of-sequence token by `bias`.
    pub fn eos_bias(&self, bias: i32) -> Value {
        let mut map = serde_json::Map::new();
        for id in self.eos_ids() {
            map.insert(id.to_string(), json!(bias));
        }
        Value::Object(map)
    }

    pub fn client(&self) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: self.stack.base_url().to_owned(),
        }
    }
}

/// An HTTP client that sends the test key.
pub struct Client {
    pub http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(Stack::API_KEY)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(Stack::API_KEY)
    }

    /// POSTs `body` and returns the status and the parsed JSON answer.
    pub async fn post_json(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let response = self.post(path).json(body).send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, value)
    }

    /// POSTs a streaming request and returns every SSE `data:` payload, `[DONE]` included.
    pub async fn post_sse(&self, path: &str, body: &Value) -> Vec<String> {
        let response = self.post(path).json(body).send().await.expect("request");
        assert_eq!(response.status(), 200, "streaming request failed");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        parse_sse(&response.text().await.expect("body"))
    }
}

/// The `data:` payloads of an SSE body, in order.
pub fn parse_sse(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// SSE payloads parsed as JSON, checking the stream ended with `[DONE]`.
pub fn json_events(events: &[String]) -> Vec<Value> {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "stream must end with [DONE]: {events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event).unwrap_or_else(|_| panic!("not JSON: {event}")))
        .collect()
}
