//! Answers relayed from an upstream (the mock OpenAI server) get what our own models' answers
//! get: the semantic cache (real MiniLM embeddings) and the output checks of the safety service
//! (its real rule layer), in the same shapes.

use std::time::Duration;

use passerelle_gateway::{SemanticCacheConfig, UpstreamConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mock::{USAGE, Upstream};
use crate::support::{Format, Served, json_events, parse_sse};

const REMOTE: &str = "remote";
/// Everything a test waits for must happen well within this.
const BOUND: Duration = Duration::from_secs(20);

fn ask(question: &str) -> Value {
    json!({"model": REMOTE, "messages": [{"role": "user", "content": question}],
           "temperature": 0})
}

async fn post(served: &Served, body: &Value) -> reqwest::Response {
    served
        .client()
        .post("/v1/chat/completions")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn cache_header(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-passerelle-cache")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_cached_upstream_answer_is_served_without_calling_the_upstream_again() {
    let upstream = Upstream::start("a").await;
    let url = upstream.base_url.clone();
    let served = Served::start_with(Format::Gguf, move |options| {
        options.embedding_model = Some(passerelle_testkit::minilm::minilm_dir().to_path_buf());
        options.gateway.semantic_cache = Some(SemanticCacheConfig {
            min_similarity: 0.9,
            ..SemanticCacheConfig::default()
        });
        options
            .gateway
            .routing
            .upstreams
            .push(UpstreamConfig::new(REMOTE, url));
    })
    .await;

    let first = post(&served, &ask("How do I reset my password?")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["choices"][0]["message"]["content"], "hello from a");
    assert_eq!(upstream.hits(), 1);

    // The answer is stored in the background: every miss until then calls the upstream.
    let deadline = tokio::time::Instant::now() + BOUND;
    let hit = loop {
        let response = post(&served, &ask("How can I reset my password?")).await;
        assert_eq!(response.status(), StatusCode::OK);
        if cache_header(&response).as_deref() == Some("hit") {
            break response.json::<Value>().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never answered from the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let calls = upstream.hits();
    assert_eq!(hit["object"], "chat.completion");
    assert_eq!(hit["choices"][0]["message"]["content"], "hello from a");
    assert_eq!(hit["choices"][0]["finish_reason"], "stop");
    assert_eq!(hit["usage"]["prompt_tokens"], USAGE.0);
    assert_eq!(hit["usage"]["completion_tokens"], USAGE.1);

    // Again, and streamed: both from the cache, the upstream not called.
    let again = post(&served, &ask("How do I reset my password?")).await;
    assert_eq!(cache_header(&again).as_deref(), Some("hit"));
    let mut streaming = ask("How do I reset my password?");
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let streamed = post(&served, &streaming).await;
    assert_eq!(cache_header(&streamed).as_deref(), Some("hit"));
    let events = json_events(&parse_sse(&streamed.text().await.unwrap()));
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "hello from a");
    assert_eq!(
        events.last().unwrap()["usage"]["total_tokens"],
        USAGE.0 + USAGE.1
    );
    assert_eq!(upstream.hits(), calls, "the upstream was not called again");

    // Another question, or parameters that change the answer, go to the upstream.
    let other = post(&served, &ask("What is the capital of France?")).await;
    assert_eq!(cache_header(&other).as_deref(), Some("miss"));
    let mut warmer = ask("How do I reset my password?");
    warmer["temperature"] = json!(0.7);
    let warmer = post(&served, &warmer).await;
    assert_eq!(cache_header(&warmer).as_deref(), Some("miss"));
    assert_eq!(upstream.hits(), calls + 2);
    assert!(
        served.stack.metric(
            "passerelle_semantic_cache_saved_tokens_total",
            &[("model", REMOTE)]
        ) >= 3.0 * (USAGE.0 + USAGE.1) as f64
    );
}

/// A safety service whose one rule flags every answer that matches `pattern`.
fn flag_answers_matching(pattern: &str) -> passerelle_safety::SafetyServiceConfig {
    let rule = passerelle_safety::Rule {
        id: "test.any_answer".to_owned(),
        category: "test_output".to_owned(),
        stages: passerelle_safety::Stages::Output,
        matcher: passerelle_safety::Matcher::Pattern(pattern.to_owned()),
    };
    passerelle_safety::SafetyServiceConfig {
        rules: Some(passerelle_safety::RuleSet::new(vec![rule], "test").unwrap()),
        ..Default::default()
    }
}

/// A stack relaying to `upstream` whose output checks flag every answer with a letter or
/// digit in it.
async fn screened_stack(upstream: &Upstream) -> Served {
    screened_stack_flagging(upstream, r"\w").await
}

async fn screened_stack_flagging(upstream: &Upstream, pattern: &str) -> Served {
    let url = upstream.base_url.clone();
    let safety = flag_answers_matching(pattern);
    Served::start_with(Format::Gguf, move |options| {
        options.safety = Some(safety);
        options
            .gateway
            .routing
            .upstreams
            .push(UpstreamConfig::new(REMOTE, url));
    })
    .await
}

/// The first choice's finish reasons that the streamed events carry.
fn finish_reasons(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|r| !r.is_null())
        .collect()
}

fn output_blocked(served: &Served) -> f64 {
    served.stack.metric(
        "passerelle_safety_blocked_total",
        &[("stage", "output"), ("category", "test_output")],
    )
}

#[tokio::test]
async fn output_checks_end_relayed_answers_with_content_filter_streamed_or_not() {
    let upstream = Upstream::start("a").await;
    let served = screened_stack(&upstream).await;

    let plain = post(&served, &ask("Hi")).await;
    assert_eq!(plain.status(), StatusCode::OK);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(
        plain["choices"][0]["finish_reason"], "content_filter",
        "{plain}"
    );
    assert_eq!(plain["id"], "up-a", "otherwise the upstream's answer");
    assert_eq!(plain["usage"]["completion_tokens"], USAGE.1);

    let events = streamed_events(&served, "Hi").await;
    assert_eq!(
        finish_reasons(&events),
        vec![&json!("content_filter")],
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.get("usage").is_none_or(Value::is_null)),
        "the usage chunk the gateway asked for is not passed on"
    );

    let deadline = tokio::time::Instant::now() + BOUND;
    while output_blocked(&served) < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.hits(), 2);

    // A key that has its answers unchecked gets the upstream's answer as it is.
    let mut new = passerelle_store::NewKey::new("input only", "evals");
    new.safety = Some(passerelle_store::SafetyChecks::Input);
    let (_, unchecked) = passerelle_store::KeyStore::create(served.stack.store(), new)
        .await
        .unwrap();
    let passed = served
        .client()
        .http
        .post(served.stack.url("/v1/chat/completions"))
        .bearer_auth(unchecked.expose())
        .json(&ask("Hi"))
        .send()
        .await
        .unwrap();
    let passed: Value = passed.json().await.unwrap();
    assert_eq!(passed["choices"][0]["finish_reason"], "stop", "{passed}");
}

#[tokio::test]
async fn tool_call_arguments_are_screened_like_text() {
    let upstream = Upstream::start("a").await;
    let served = screened_stack_flagging(&upstream, "(?i)password").await;
    upstream.set_tool_call(r#"{"query": "the weather in Lyon"}"#);
    assert_eq!(finish_whole_and_streamed(&served).await, ["tool_calls"; 2]);
    // Streamed, the arguments come in two halves, "password" cut across them.
    upstream.set_tool_call(r#"{"q": "password"}"#);
    assert_eq!(
        finish_whole_and_streamed(&served).await,
        ["content_filter"; 2]
    );
}

/// The JSON events of a streamed answer to `question`.
async fn streamed_events(served: &Served, question: &str) -> Vec<Value> {
    let mut streaming = ask(question);
    streaming["stream"] = json!(true);
    let events = served
        .client()
        .post_sse("/v1/chat/completions", &streaming)
        .await;
    json_events(&events)
}

/// How the first choice of an answer to "Hi" finishes, asked whole and then streamed.
async fn finish_whole_and_streamed(served: &Served) -> [String; 2] {
    let plain: Value = post(served, &ask("Hi")).await.json().await.unwrap();
    let events = streamed_events(served, "Hi").await;
    let streamed = finish_reasons(&events);
    assert_eq!(streamed.len(), 1, "{events:?}");
    [
        plain["choices"][0]["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        streamed[0].as_str().unwrap_or_default().to_owned(),
    ]
}

#[tokio::test]
async fn a_relayed_stream_is_cut_once_a_window_is_found_unsafe() {
    let upstream = Upstream::start("a").await;
    // Longer than a window: checked as soon as it passes.
    upstream.set_stream_opening(&"word ".repeat(60));
    let release = upstream.hold_streams();
    let served = screened_stack(&upstream).await;

    let mut streaming = ask("Hi");
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let response = post(&served, &streaming).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let mut received = String::new();
    // The opening is relayed at once, not held for its verdict.
    while !received.contains("word word") {
        let bytes = tokio::time::timeout(BOUND, futures::StreamExt::next(&mut body))
            .await
            .expect("the opening came in time")
            .expect("the stream went on")
            .unwrap();
        received.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    // The service found the window unsafe; the upstream's next chunk ends the choice.
    let violations = |served: &Served| {
        served
            .stack
            .metric("passerelle_safety_violations_total", &[("stage", "output")])
    };
    let deadline = tokio::time::Instant::now() + BOUND;
    while violations(&served) < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no verdict came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.notify_one();
    while let Some(bytes) = tokio::time::timeout(BOUND, futures::StreamExt::next(&mut body))
        .await
        .expect("the stream ended in time")
    {
        received.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
    }
    let events = json_events(&parse_sse(&received));
    assert_eq!(
        finish_reasons(&events),
        vec![&json!("content_filter")],
        "{events:?}"
    );
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        !text.ends_with(" a"),
        "the upstream's last chunk was not relayed: {text}"
    );
    let usage = &events.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 1, "{usage}");
    assert_eq!(events.last().unwrap()["choices"], json!([]));
}
