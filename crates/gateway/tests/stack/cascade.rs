//! A cascade whose small model is the llm service's tiny random model, with its real token
//! log-probabilities, and whose large model is an upstream (the mock OpenAI server).

use std::time::Duration;

use passerelle_gateway::{CascadeConfig, UpstreamConfig};
use serde_json::{Value, json};

use crate::mock::Upstream;
use crate::support::{Format, MODEL_ID, Served, json_events, parse_sse};

/// `lenient` keeps any answer of the random model; `strict` keeps none (a random model's
/// tokens are far from certain).
async fn served_with_cascades(large: &Upstream) -> Served {
    let large_url = large.base_url.clone();
    Served::start_with(Format::Gguf, move |options| {
        let routing = &mut options.gateway.routing;
        routing
            .upstreams
            .push(UpstreamConfig::new("large-remote", large_url));
        for (name, threshold) in [("lenient", -1000.0), ("strict", -0.001)] {
            routing.cascades.insert(
                name.into(),
                CascadeConfig {
                    min_mean_logprob: threshold,
                    ..CascadeConfig::new(MODEL_ID, "large-remote")
                },
            );
        }
        routing.cascades.insert(
            "misspelt".into(),
            CascadeConfig::new("tiny-qwen", "large-remote"),
        );
    })
    .await
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hi"}],
           "max_tokens": 6, "temperature": 0})
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn the_local_models_real_logprobs_decide_the_cascade() {
    let large = Upstream::start("large").await;
    let served = served_with_cascades(&large).await;
    let client = served.client();

    let response = client
        .post("/v1/chat/completions")
        .json(&ask("lenient"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-passerelle-cascade"), "small");
    assert_eq!(header(&response, "x-passerelle-cascade-model"), MODEL_ID);
    let mean: f64 = header(&response, "x-passerelle-cascade-mean-logprob")
        .parse()
        .unwrap();
    assert!(mean < 0.0, "{mean}");
    let kept: Value = response.json().await.unwrap();
    assert_eq!(kept["model"], MODEL_ID);
    assert_eq!(kept["choices"][0]["logprobs"], Value::Null);
    assert_eq!(large.hits(), 0);

    // Streamed: the same answer, replayed.
    let mut streaming = ask("lenient");
    streaming["stream"] = json!(true);
    let response = client
        .post("/v1/chat/completions")
        .json(&streaming)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "x-passerelle-cascade"), "small");
    let events = json_events(&parse_sse(&response.text().await.unwrap()));
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        kept["choices"][0]["message"]["content"].as_str().unwrap()
    );

    let response = client
        .post("/v1/chat/completions")
        .json(&ask("strict"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-passerelle-cascade"), "escalated");
    assert_eq!(
        header(&response, "x-passerelle-cascade-reason"),
        "low_logprob"
    );
    let escalated: Value = response.json().await.unwrap();
    assert_eq!(
        escalated["choices"][0]["message"]["content"],
        "hello from large"
    );

    let counted = |cascade, outcome, reason| {
        let labels = [
            ("cascade", cascade),
            ("outcome", outcome),
            ("reason", reason),
        ];
        served.stack.metric("passerelle_cascade_total", &labels)
    };
    assert_eq!(counted("lenient", "small", "confident"), 2.0);
    assert_eq!(counted("strict", "escalated", "low_logprob"), 1.0);
    // Four model calls: the lenient answers, the strict small answer, the large one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report: Value = client
            .get("/v1/usage")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if report["total"]["requests"] == 4 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_small_model_the_service_does_not_serve_is_a_404_naming_it() {
    let large = Upstream::start("large").await;
    let served = served_with_cascades(&large).await;
    let (status, body) = served
        .client()
        .post_json("/v1/chat/completions", &ask("misspelt"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tiny-qwen"),
        "{body}"
    );
    assert_eq!(large.hits(), 0);
}
