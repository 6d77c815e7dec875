//! Cascades over real upstreams: the small model's answer kept when confident, the large
//! model's when not (low log-probabilities, a refusal, a failure), streamed or not, with both
//! calls accounted and the outcome counted and named in the response.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::mock::{Behaviour, USAGE, Upstream, dead_url};
use super::{BOUND, Gateway, KEY, ask, data_of, routing};
use passerelle_gateway::{CascadeConfig, RoutingConfig, UpstreamConfig};

/// A gateway with `auto` = `small-remote` then `large-remote`, escalating under -1.5.
async fn cascade_over(small_url: &str, large: &Upstream) -> Gateway {
    Gateway::start(cascade_config(small_url, large)).await
}

fn cascade_config(small_url: &str, large: &Upstream) -> RoutingConfig {
    let mut config = routing(vec![
        UpstreamConfig::new("small-remote", small_url),
        UpstreamConfig::new("large-remote", &large.base_url),
    ]);
    config.cascades.insert(
        "auto".into(),
        CascadeConfig {
            min_mean_logprob: -1.5,
            ..CascadeConfig::new("small-remote", "large-remote")
        },
    );
    config
}

struct Answer {
    status: reqwest::StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }

    /// The stream's JSON chunks, `[DONE]` last and left out.
    fn chunks(&self) -> Vec<Value> {
        let data: Vec<&str> = self.text.split("\n\n").filter_map(data_of).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{}", self.text);
        data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    /// The streamed chat content, concatenated.
    fn streamed_content(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }
}

async fn post(gateway: &Gateway, path: &str, key: &str, body: &Value) -> Answer {
    let response = tokio::time::timeout(BOUND, gateway.post(path, key).json(body).send())
        .await
        .expect("answered in time")
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Answer {
        status,
        headers,
        text,
    }
}

async fn chat(gateway: &Gateway, body: &Value) -> Answer {
    post(gateway, "/v1/chat/completions", KEY, body).await
}

fn cascades(gateway: &Gateway, outcome: &str, reason: &str) -> f64 {
    gateway.metric(
        "passerelle_cascade_total",
        &[
            ("cascade", "auto"),
            ("outcome", outcome),
            ("reason", reason),
        ],
    )
}

#[tokio::test]
async fn a_confident_small_answer_is_kept_without_the_logprobs_it_was_asked_for() {
    let small = Upstream::start("small").await;
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&small.base_url, &large).await;

    let answer = chat(&gateway, &ask("auto")).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let body = answer.json();
    assert_eq!(body["choices"][0]["message"]["content"], "hello from small");
    assert_eq!(body["choices"][0]["logprobs"], Value::Null, "not leaked");
    assert_eq!(body["model"], "small-remote");
    assert_eq!(answer.header("x-passerelle-cascade"), Some("small"));
    assert_eq!(
        answer.header("x-passerelle-cascade-reason"),
        Some("confident")
    );
    assert_eq!(
        answer.header("x-passerelle-cascade-model"),
        Some("small-remote")
    );
    assert_eq!(
        answer.header("x-passerelle-cascade-mean-logprob"),
        Some("-0.1000")
    );
    assert_eq!(large.hits(), 0, "the large model was never asked");
    let sent = &small.bodies()[0];
    assert_eq!(sent["logprobs"], true);
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["model"], "small-remote");

    assert_eq!(cascades(&gateway, "small", "confident"), 1.0);
    let report = gateway.usage(1).await;
    assert_eq!(report["data"][0]["model"], "small-remote", "{report}");
}

#[tokio::test]
async fn a_client_that_asks_for_logprobs_gets_the_small_models() {
    let small = Upstream::start("small").await;
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&small.base_url, &large).await;
    let mut body = ask("auto");
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let answer = chat(&gateway, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let logprobs = &answer.json()["choices"][0]["logprobs"]["content"];
    assert_eq!(
        logprobs.as_array().map(Vec::len),
        Some(3),
        "{}",
        answer.text
    );
    assert_eq!(
        small.bodies()[0]["top_logprobs"],
        2,
        "the client's options kept"
    );
}

#[tokio::test]
async fn a_low_confidence_answer_escalates_and_both_calls_are_accounted() {
    let small = Upstream::start("small").await;
    small.set_logprob(-3.0);
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&small.base_url, &large).await;

    let answer = chat(&gateway, &ask("auto")).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        "hello from large"
    );
    assert_eq!(answer.json()["model"], "large-remote");
    assert_eq!(answer.header("x-passerelle-cascade"), Some("escalated"));
    assert_eq!(
        answer.header("x-passerelle-cascade-reason"),
        Some("low_logprob")
    );
    assert_eq!(
        answer.header("x-passerelle-cascade-model"),
        Some("large-remote")
    );
    assert_eq!(
        answer.header("x-passerelle-cascade-mean-logprob"),
        Some("-3.0000")
    );
    let sent = &large.bodies()[0];
    assert_eq!(sent["model"], "large-remote");
    assert!(
        sent.get("logprobs").is_none(),
        "the large model gets the client's request"
    );

    assert_eq!(cascades(&gateway, "escalated", "low_logprob"), 1.0);
    assert_eq!(cascades(&gateway, "small", "confident"), 0.0);
    let report = gateway.usage(2).await;
    assert_eq!(
        report["total"]["total_tokens"],
        2 * (USAGE.0 + USAGE.1),
        "{report}"
    );
    let mut models: Vec<&str> = report["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row["model"].as_str())
        .collect();
    models.sort_unstable();
    assert_eq!(models, ["large-remote", "small-remote"], "{report}");
    for model in ["small-remote", "large-remote"] {
        let tokens = gateway.metric("passerelle_completion_tokens_total", &[("model", model)]);
        assert_eq!(tokens, USAGE.1 as f64, "{model}");
    }
}

#[tokio::test]
async fn a_refusal_escalates_however_confident() {
    let small = Upstream::start("small").await;
    small.set_logprob(-0.01);
    small.set_text("I'm sorry, but I can't help with that.");
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&small.base_url, &large).await;
    let answer = chat(&gateway, &ask("auto")).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.header("x-passerelle-cascade-reason"),
        Some("refusal")
    );
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        "hello from large"
    );
    assert_eq!(cascades(&gateway, "escalated", "refusal"), 1.0);
}

#[tokio::test]
async fn a_kept_answer_is_replayed_as_a_stream_with_the_usage_asked_for() {
    let small = Upstream::start("small").await;
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&small.base_url, &large).await;
    let mut body = ask("auto");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let answer = chat(&gateway, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.header("content-type"),
        Some("text/event-stream"),
        "{:?}",
        answer.headers
    );
    assert_eq!(answer.header("x-passerelle-cascade"), Some("small"));
    assert_eq!(answer.streamed_content(), "hello from small");
    let chunks = answer.chunks();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks.iter().all(|c| c["choices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|ch| ch["logprobs"].is_null())),
        "{}",
        answer.text
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    let usage = chunks.last().unwrap();
    assert_eq!(
        usage["usage"]["total_tokens"],
        USAGE.0 + USAGE.1,
        "{}",
        answer.text
    );
    assert_eq!(large.hits(), 0);
    assert_eq!(small.bodies()[0]["stream"], false, "judged whole");
    gateway.usage(1).await;
}

#[tokio::test]
async fn an_escalated_stream_is_the_large_models_relayed() {
    let small = Upstream::start("small").await;
    small.set_logprob(-2.0);
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&small.base_url, &large).await;
    let mut body = ask("auto");
    body["stream"] = json!(true);
    let answer = chat(&gateway, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-passerelle-cascade"), Some("escalated"));
    assert_eq!(answer.streamed_content(), "hello from large");
    assert!(
        answer
            .chunks()
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "the usage chunk the gateway asked for is not leaked: {}",
        answer.text
    );
    assert_eq!(large.bodies()[0]["stream"], true);
    gateway.usage(2).await;
    assert_eq!(cascades(&gateway, "escalated", "low_logprob"), 1.0);
}

#[tokio::test]
async fn text_completions_cascade_too() {
    let small = Upstream::start("small").await;
    small.set_logprob(-4.0);
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&small.base_url, &large).await;
    let answer = post(
        &gateway,
        "/v1/completions",
        KEY,
        &json!({"model": "auto", "prompt": "Once"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["choices"][0]["text"], "hello from large");
    assert_eq!(small.bodies()[0]["logprobs"], 0);

    small.set_logprob(-0.2);
    let mut body = json!({"model": "auto", "prompt": "Once", "stream": true});
    let answer = post(&gateway, "/v1/completions", KEY, &body).await;
    assert_eq!(answer.header("x-passerelle-cascade"), Some("small"));
    let text: String = answer
        .chunks()
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "hello from small");
    body["stream"] = json!(false);
    let answer = post(&gateway, "/v1/completions", KEY, &body).await;
    assert_eq!(answer.json()["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn a_dead_small_model_escalates() {
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&dead_url().await, &large).await;
    let answer = chat(&gateway, &ask("auto")).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.header("x-passerelle-cascade-reason"),
        Some("small_failed")
    );
    assert_eq!(answer.header("x-passerelle-cascade-mean-logprob"), None);
    assert_eq!(cascades(&gateway, "escalated", "small_failed"), 1.0);
}

#[tokio::test]
async fn a_client_error_from_the_small_model_is_the_answer() {
    let small = Upstream::start("small").await;
    small.set(Behaviour::NotFound);
    let large = Upstream::start("large").await;
    let gateway = cascade_over(&small.base_url, &large).await;
    let answer = chat(&gateway, &ask("auto")).await;
    assert_eq!(answer.status, 404, "{}", answer.text);
    assert_eq!(large.hits(), 0);
}

#[tokio::test]
async fn keys_need_the_cascade_and_it_is_listed() {
    let small = Upstream::start("small").await;
    small.set_logprob(-3.0);
    let large = Upstream::start("large").await;
    let mut config = cascade_config(&small.base_url, &large);
    config.aliases.insert("smart".into(), "auto".into());
    let gateway = Gateway::start(config).await;

    let models = gateway.get("/v1/models").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"auto"), "{ids:?}");

    // Allowed the cascade: both its models answer, though the key does not name them.
    let cascade_only = gateway.key_for(&["auto"]).await;
    let answer = post(
        &gateway,
        "/v1/chat/completions",
        cascade_only.expose(),
        &ask("smart"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("x-passerelle-cascade"), Some("escalated"));
    // Allowed its models but not the cascade: refused.
    let members_only = gateway.key_for(&["small-remote", "large-remote"]).await;
    let answer = post(
        &gateway,
        "/v1/chat/completions",
        members_only.expose(),
        &ask("auto"),
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text);
    assert_eq!(answer.json()["error"]["code"], "model_not_allowed");
    // The cascade's models stay reachable by name only to keys allowed them.
    let answer = post(
        &gateway,
        "/v1/chat/completions",
        cascade_only.expose(),
        &ask("large-remote"),
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text);
}

#[tokio::test]
async fn bad_cascades_keep_the_gateway_from_starting() {
    let large = Upstream::start("large").await;
    let mut config = cascade_config("http://127.0.0.1:9/v1", &large);
    config
        .cascades
        .insert("outer".into(), CascadeConfig::new("auto", "large-remote"));
    let registry = prometheus::Registry::new();
    let data_dir = tempfile::tempdir().unwrap();
    let store = passerelle_store::EmbeddedStore::open(data_dir.path()).unwrap();
    let err = passerelle_gateway::AppState::new(
        passerelle_gateway::GatewayConfig {
            routing: config,
            ..passerelle_gateway::GatewayConfig::new("http://127.0.0.1:9")
        },
        std::sync::Arc::new(store),
        passerelle_store::StaticKeys::from_plaintext([KEY]),
        &registry,
    )
    .expect_err("refused");
    assert!(err.to_string().contains("cascade \"outer\""), "{err}");
}
