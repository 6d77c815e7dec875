//! The gateway over real HTTP on loopback, for everything that needs no model: auth, the error
//! envelope, limits, health, metrics, and answers when the llm service is down. The llm
//! endpoint points at a port nobody listens on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use passerelle_gateway::{AppState, GatewayConfig};
use passerelle_store::{ApiKeySecret, AuditLog, EmbeddedStore, KeyStore, NewKey, StaticKeys};
use reqwest::StatusCode;
use serde_json::{Value, json};

const STATIC_KEY: &str = "static-test-key";

/// Answers that need the (absent) llm service must still come back this fast.
const PROMPT: Duration = Duration::from_secs(3);

struct Gateway {
    base: String,
    http: reqwest::Client,
    store: Option<EmbeddedStore>,
    stored_secret: Option<ApiKeySecret>,
    registry: prometheus::Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _data_dir: tempfile::TempDir,
}

/// A port with nothing behind it: bound, then released.
async fn closed_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

impl Gateway {
    /// A gateway with a static key and a stored key.
    async fn start(adjust: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_with_keys(true, adjust).await
    }

    async fn start_with_keys(with_keys: bool, adjust: impl FnOnce(&mut GatewayConfig)) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let opened = EmbeddedStore::open(data_dir.path()).unwrap();
        let (static_keys, store, stored_secret) = if with_keys {
            let (_, secret) = opened.create(NewKey::new("tests", "tests")).await.unwrap();
            (
                StaticKeys::from_plaintext([STATIC_KEY]),
                Some(opened.clone()),
                Some(secret),
            )
        } else {
            (StaticKeys::default(), None, None)
        };
        let mut config = GatewayConfig::new(closed_endpoint().await);
        adjust(&mut config);
        let registry = prometheus::Registry::new();
        let state = AppState::new(config, Arc::new(opened), static_keys, &registry).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(passerelle_gateway::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Self {
            base,
            http: reqwest::Client::new(),
            store,
            stored_secret,
            registry,
            stop: Some(stop),
            server,
            _data_dir: data_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(STATIC_KEY)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(STATIC_KEY)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// Status, headers and JSON body of a response.
async fn read(response: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, headers, body)
}

/// The body is an OpenAI error envelope of `kind`, with `param` and `code` present.
fn assert_envelope(body: &Value, kind: &str) {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no envelope: {body}"));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert!(
        error.contains_key("param") && error.contains_key("code"),
        "{body}"
    );
}

fn chat_body() -> Value {
    json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn missing_key_is_401_with_a_challenge() {
    let gw = Gateway::start(|_| {}).await;
    let (status, headers, body) =
        read(gw.http.get(gw.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_envelope(&body, "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    gw.shutdown().await;
}

#[tokio::test]
async fn wrong_keys_are_401_in_both_header_styles() {
    let gw = Gateway::start(|_| {}).await;
    let url = gw.url("/v1/chat/completions");
    let attempts = [
        gw.http.post(&url).bearer_auth("psk-wrong"),
        gw.http.post(&url).header("x-api-key", "psk-wrong"),
        gw.http
            .post(&url)
            .header("authorization", "Basic c3RhdGljLXRlc3Qta2V5"),
        gw.http.post(&url).bearer_auth(format!("{STATIC_KEY}x")),
    ];
    for attempt in attempts {
        let (status, headers, body) = read(attempt.json(&chat_body()).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn valid_keys_pass_in_both_header_styles_and_revoked_ones_do_not() {
    let gw = Gateway::start(|_| {}).await;
    let stored = gw.stored_secret.clone().unwrap();
    let url = gw.url("/v1/models");
    // Past auth, the absent service answers 503: proof the key was accepted.
    for attempt in [
        gw.http.get(&url).bearer_auth(STATIC_KEY),
        gw.http.get(&url).header("x-api-key", STATIC_KEY),
        gw.http.get(&url).bearer_auth(stored.expose()),
        gw.http.get(&url).header("x-api-key", stored.expose()),
    ] {
        let response = attempt.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let store = gw.store.as_ref().unwrap();
    let record = store.list().await.unwrap().remove(0);
    store.revoke(&record.prefix).await.unwrap();
    let response = gw
        .http
        .get(&url)
        .bearer_auth(stored.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    gw.shutdown().await;
}

#[tokio::test]
async fn blocked_requests_are_audited_with_the_peer_or_the_forwarded_address() {
    let gw = Gateway::start(|c| c.trust_forwarded_for = true).await;
    let user_key = gw.stored_secret.clone().unwrap();
    // A user key on an admin route: refused for its scope, and audited.
    for forwarded in [Some("203.0.113.7, 10.0.0.1"), None] {
        let mut request = gw
            .http
            .get(gw.url("/admin/keys"))
            .bearer_auth(user_key.expose());
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let store = gw.store.as_ref().unwrap();
    let deadline = Instant::now() + PROMPT;
    let addresses = loop {
        let events = store.audit_events(None, 100).await.unwrap();
        let addresses: Vec<Option<String>> = events
            .into_iter()
            .filter(|e| e.target.as_deref() == Some("/admin/keys"))
            .map(|e| e.client_addr)
            .collect();
        if addresses.len() == 2 || Instant::now() > deadline {
            break addresses;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        addresses,
        [Some("203.0.113.7".to_owned()), Some("127.0.0.1".to_owned())]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn without_keys_the_gateway_is_open_unless_auth_is_required() {
    let open = Gateway::start_with_keys(false, |_| {}).await;
    let response = open
        .http
        .get(open.url("/v1/models"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = open.http.get(open.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    open.shutdown().await;

    let closed = Gateway::start_with_keys(false, |c| c.require_auth = true).await;
    let response = closed
        .http
        .get(closed.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    closed.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_400() {
    let gw = Gateway::start(|_| {}).await;
    for raw in [
        r#"{"model": "#,
        "not json",
        r#"{"model":"m","messages":[]} extra"#,
    ] {
        let response = gw
            .post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let (status, _, body) = read(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw}: {body}");
        assert_envelope(&body, "invalid_request_error");
        assert_eq!(body["error"]["param"], Value::Null);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn wrong_types_and_missing_fields_are_400_naming_the_field() {
    let gw = Gateway::start(|_| {}).await;
    let cases = [
        (json!({"model": 5, "messages": []}), "model"),
        (json!({"model": "m", "messages": "hi"}), "messages"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": -1}),
            "n",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (json!([]), ""),
    ];
    for (request, param) in cases {
        let (status, _, body) = read(
            gw.post("/v1/chat/completions")
                .json(&request)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        assert_envelope(&body, "invalid_request_error");
        if !param.is_empty() {
            assert_eq!(body["error"]["param"], param, "{body}");
        }
    }
    let (status, _, body) = read(
        gw.post("/v1/completions")
            .json(&json!({"model": "m", "prompt": 3}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "prompt");
    gw.shutdown().await;
}

#[tokio::test]
async fn out_of_range_parameters_are_400_before_reaching_the_service() {
    let gw = Gateway::start(|_| {}).await;
    let with = |extra: Value| {
        let mut body = chat_body();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (with(json!({"temperature": 2.5})), "temperature"),
        (with(json!({"top_p": -0.1})), "top_p"),
        (with(json!({"n": 0})), "n"),
        (with(json!({"max_tokens": 0})), "max_tokens"),
        (with(json!({"presence_penalty": 3})), "presence_penalty"),
        (with(json!({"frequency_penalty": -3})), "frequency_penalty"),
        (with(json!({"logit_bias": {"12": 101}})), "logit_bias"),
        (with(json!({"top_logprobs": 3})), "top_logprobs"),
        (with(json!({"stop": ["a", "b", "c", "d", "e"]})), "stop"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}),
            "messages[0].content[0].type",
        ),
    ];
    for (request, param) in cases {
        let (status, _, body) = read(
            gw.post("/v1/chat/completions")
                .json(&request)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{param}: {body}");
        assert_envelope(&body, "invalid_request_error");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    for (request, param) in [
        (json!({"model": "m", "prompt": ["a", "b"]}), "prompt"),
        (
            json!({"model": "m", "prompt": "a", "suffix": "b"}),
            "suffix",
        ),
        (
            json!({"model": "m", "prompt": "a", "logprobs": 9}),
            "logprobs",
        ),
    ] {
        let (status, _, body) = read(
            gw.post("/v1/completions")
                .json(&request)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{param}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_non_json_content_type_is_400() {
    let gw = Gateway::start(|_| {}).await;
    let response = gw
        .post("/v1/chat/completions")
        .header("content-type", "text/plain")
        .body(chat_body().to_string())
        .send()
        .await
        .unwrap();
    let (status, _, body) = read(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_envelope(&body, "invalid_request_error");
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_with_or_without_a_length() {
    let gw = Gateway::start(|c| c.body_limit_bytes = 1024).await;
    let big = json!({"model": "m", "prompt": "x".repeat(4096)}).to_string();
    let sized = gw
        .post("/v1/completions")
        .header("content-type", "application/json")
        .body(big.clone());
    let (status, _, body) = read(sized.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_envelope(&body, "invalid_request_error");
    assert_eq!(body["error"]["code"], "request_too_large");

    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(512)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let chunked = gw
        .post("/v1/completions")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
    let (status, _, body) = read(chunked.send().await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_envelope(&body, "invalid_request_error");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_the_envelope() {
    let gw = Gateway::start(|_| {}).await;
    let (status, _, body) = read(gw.get("/v1/nothing-here").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_envelope(&body, "invalid_request_error");
    assert_eq!(body["error"]["code"], "unknown_url");

    let (status, headers, body) = read(gw.get("/v1/chat/completions").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&body, "invalid_request_error");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert!(
        headers
            .get("allow")
            .is_some_and(|v| v.to_str().unwrap().contains("POST")),
        "{headers:?}"
    );

    let (status, _, _) = read(gw.http.delete(gw.url("/health/live")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // The completion routes are served without the router, on their exact paths only.
    for path in [
        "/v1/chat/completions/",
        "/v1/completions/extra",
        "/V1/completions",
    ] {
        let (status, _, body) = read(gw.post(path).json(&chat_body()).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "unknown_url", "{path}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_service_is_a_prompt_503_with_retry_after() {
    let gw = Gateway::start(|_| {}).await;
    let mut stream_body = chat_body();
    stream_body["stream"] = json!(true);
    let requests = [
        gw.get("/v1/models"),
        gw.get("/v1/models/tiny"),
        gw.post("/v1/chat/completions").json(&chat_body()),
        gw.post("/v1/chat/completions").json(&stream_body),
        gw.post("/v1/completions")
            .json(&json!({"model": "tiny", "prompt": "x", "stream": true})),
    ];
    for request in requests {
        let started = Instant::now();
        let (status, headers, body) = read(request.send().await.unwrap()).await;
        assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            headers["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        assert_envelope(&body, "server_error");
        assert!(
            !body["error"]["message"].as_str().unwrap().contains("tcp"),
            "{body}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn health_live_is_200_and_ready_is_503_without_the_service() {
    let gw = Gateway::start(|_| {}).await;
    // Neither needs a key.
    let (status, _, body) = read(gw.http.get(gw.url("/health/live")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");

    let started = Instant::now();
    let (status, _, body) = read(gw.http.get(gw.url("/health/ready")).send().await.unwrap()).await;
    assert!(started.elapsed() < PROMPT);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["dependencies"]["llm"]["ready"], false);
    assert!(body["dependencies"]["llm"]["status"].is_string());
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_use_route_templates_and_closed_labels() {
    let gw = Gateway::start(|_| {}).await;
    gw.get("/v1/models/some/nested/id").send().await.unwrap();
    gw.get("/no/such/path/42").send().await.unwrap();
    gw.post("/v1/chat/completions")
        .json(&chat_body())
        .send()
        .await
        .unwrap();
    gw.http.get(gw.url("/v1/models")).send().await.unwrap();

    let response = gw.http.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for expected in [
        r#"passerelle_http_requests_total{model="none",route="/v1/models/{*id}",status="5xx"} 1"#,
        r#"passerelle_http_requests_total{model="none",route="unmatched",status="4xx"} 1"#,
        r#"passerelle_http_requests_total{model="unknown",route="/v1/chat/completions",status="5xx"} 1"#,
        r#"passerelle_http_requests_total{model="none",route="/v1/models",status="4xx"} 1"#,
        "passerelle_http_request_duration_seconds_bucket",
        // Only this scrape is in flight. (The per-model series appear once a model served
        // tokens; the whole-stack tests cover them.)
        "passerelle_http_requests_in_flight 1",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(
        !text.contains("/no/such/path"),
        "raw path leaked into labels"
    );
    assert!(!text.contains("some/nested"), "raw path leaked into labels");
    // The registry handed in is the one rendered.
    assert!(!gw.registry.gather().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let gw = Gateway::start(|_| {}).await;
    let response = gw
        .http
        .get(gw.url("/health/live"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let response = gw.http.get(gw.url("/health/live")).send().await.unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36, "{generated}");
    let response = gw
        .http
        .get(gw.url("/health/live"))
        .header("x-request-id", "x".repeat(500))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"].len(),
        36,
        "unfit ids are replaced"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_beyond_the_concurrency_bound_get_503() {
    let gw = Gateway::start(|c| c.max_concurrent_requests = 1).await;
    // A request whose body never finishes holds the only permit.
    let (hold, held) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
    hold.send(Ok("{\"model\":".to_owned())).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(held));
    let holder = tokio::spawn(
        gw.post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body)
            .send(),
    );
    // Poll until the holder is admitted; health routes are outside the bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, headers, body) = read(gw.get("/v1/models").send().await.unwrap()).await;
        if status == StatusCode::SERVICE_UNAVAILABLE && body["error"]["code"] == "server_busy" {
            assert_eq!(headers["retry-after"], "1");
            break;
        }
        assert!(Instant::now() < deadline, "the bound never applied: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, _) = read(gw.http.get(gw.url("/health/live")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    drop(hold);
    let _ = holder.await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_without_a_scheme_is_refused_at_startup() {
    let config = GatewayConfig::new("127.0.0.1:50051");
    let registry = prometheus::Registry::new();
    let data_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(data_dir.path()).unwrap());
    let err = AppState::new(config, store, StaticKeys::default(), &registry).unwrap_err();
    assert!(err.to_string().contains("http://"), "{err}");
}

#[tokio::test]
async fn serve_returns_promptly_once_shutdown_is_signalled() {
    let gw = Gateway::start(|c| c.shutdown_grace = Duration::from_secs(1)).await;
    let response = gw.http.get(gw.url("/health/live")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    gw.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn shutdown_stops_waiting_for_stuck_requests_after_the_grace_period() {
    let gw = Gateway::start(|c| c.shutdown_grace = Duration::from_millis(500)).await;
    // A request whose body never finishes stays in flight until its connection is closed.
    let (hold, held) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
    hold.send(Ok("{\"model\":".to_owned())).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(held));
    let stuck = tokio::spawn(
        gw.post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body)
            .send(),
    );
    // Wait until the gateway counts it (the scrape itself is the other request in flight).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = gw
            .http
            .get(gw.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("passerelle_http_requests_in_flight 2") {
            break;
        }
        assert!(Instant::now() < deadline, "the stuck request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    gw.shutdown().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    drop(hold);
    let _ = stuck.await;
}
