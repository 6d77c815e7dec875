//! Usage accounting end to end: every answered request, streamed or not, is recorded with its
//! tokens and cost; usage reports, token limits, budgets, feedback and the prompt log build on it.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use passerelle_gateway::pricing::{ModelPrice, PriceList};
use passerelle_store::{
    Budget, BudgetPeriod, KeyLimits, KeyStore as _, NewKey, PromptLog as _, Scope,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served, json_events, parse_sse};

/// USD per million tokens: a prompt token costs 2 micro-dollars, a completion token 10.
fn prices() -> PriceList {
    PriceList::new(HashMap::from([(
        MODEL_ID.to_owned(),
        ModelPrice {
            prompt: 2.0,
            completion: 10.0,
        },
    )]))
    .unwrap()
}

async fn key(served: &Served, owner: &str, limits: KeyLimits) -> String {
    let mut new = NewKey::new(format!("{owner}'s key"), owner);
    new.scopes = BTreeSet::from([Scope::Chat, Scope::Completions]);
    new.limits = limits;
    let (_, secret) = served.stack.store().create(new).await.unwrap();
    secret.expose().to_owned()
}

async fn post(served: &Served, path: &str, token: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(served.stack.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn get(served: &Served, path: &str, token: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(served.stack.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

fn chat(max_tokens: u32) -> Value {
    json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me about the sea"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// Usage is written behind the response: polls the report until it counts `requests`.
async fn usage_once_recorded(served: &Served, token: &str, requests: u64) -> Value {
    for _ in 0..100 {
        let (status, report) = get(served, "/v1/usage", token).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        if report["total"]["requests"] == requests {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("usage never reached {requests} requests");
}

#[tokio::test]
async fn every_request_is_recorded_with_tokens_and_cost_streamed_or_not() {
    let served = Served::start_with(Format::Gguf, |options| {
        options.gateway.prices = prices();
    })
    .await;
    let alice = key(&served, "alice", KeyLimits::default()).await;
    let bob = key(&served, "bob", KeyLimits::default()).await;

    let plain = post(&served, "/v1/chat/completions", &alice, &chat(4)).await;
    assert_eq!(plain.status(), StatusCode::OK);
    let plain: Value = plain.json().await.unwrap();

    let mut streaming = chat(3);
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let response = post(&served, "/v1/chat/completions", &alice, &streaming).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = json_events(&parse_sse(&response.text().await.unwrap()));
    let streamed = events
        .iter()
        .find(|event| !event["usage"].is_null())
        .expect("a usage chunk")["usage"]
        .clone();

    let completion = json!({"model": MODEL_ID, "prompt": "Once upon", "max_tokens": 2});
    let text = post(&served, "/v1/completions", &bob, &completion).await;
    assert_eq!(text.status(), StatusCode::OK);

    let report = usage_once_recorded(&served, &alice, 2).await;
    let prompt = plain["usage"]["prompt_tokens"].as_u64().unwrap()
        + streamed["prompt_tokens"].as_u64().unwrap();
    let generated = plain["usage"]["completion_tokens"].as_u64().unwrap()
        + streamed["completion_tokens"].as_u64().unwrap();
    let rows = report["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one day, one model: {report}");
    let row = &rows[0];
    assert_eq!(row["principal"], "alice", "only the caller's own usage");
    assert_eq!(row["model"], MODEL_ID);
    assert_eq!(row["requests"], 2);
    assert_eq!(row["prompt_tokens"], prompt);
    assert_eq!(row["completion_tokens"], generated);
    assert_eq!(row["cache_hits"], 0);
    let micro_usd = 2 * prompt + 10 * generated;
    assert!((row["cost_usd"].as_f64().unwrap() - micro_usd as f64 / 1e6).abs() < 1e-12);
    assert_eq!(report["total"]["total_tokens"], prompt + generated);

    // Someone else's usage is an admin's business.
    let (status, body) = get(&served, "/v1/usage?principal=bob", &alice).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The static key is an admin: it sees everyone.
    let admin = passerelle_testkit::stack::Stack::API_KEY;
    let everyone = usage_once_recorded(&served, admin, 3).await;
    let principals: BTreeSet<&str> = everyone["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["principal"].as_str().unwrap())
        .collect();
    assert_eq!(principals, BTreeSet::from(["alice", "bob"]));
    let (status, only_bob) = get(&served, "/v1/usage?principal=bob", admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(only_bob["total"]["requests"], 1);

    let (status, body) = get(&served, "/v1/usage?start_time=10&end_time=5", &alice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "end_time");
    let (status, body) = get(&served, "/v1/usage?since=yesterday", &alice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn tokens_count_toward_the_tokens_per_minute_limit() {
    let served = Served::start(Format::Gguf).await;
    let limited = key(
        &served,
        "carol",
        KeyLimits {
            tpm: Some(20),
            ..KeyLimits::default()
        },
    )
    .await;
    let first = post(&served, "/v1/chat/completions", &limited, &chat(8)).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-ratelimit-limit-tokens"], "20");
    let used: Value = first.json().await.unwrap();
    assert!(
        used["usage"]["total_tokens"].as_u64().unwrap() > 20,
        "the request must use more than the limit: {used}"
    );
    // The tokens are counted once the answer ends, just after the response: the next requests
    // are refused as soon as they are.
    let mut refused = None;
    for _ in 0..50 {
        let response = post(&served, "/v1/chat/completions", &limited, &chat(1)).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("the token limit never refused a request");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["x-ratelimit-remaining-tokens"], "0");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_spent_budget_refuses_requests_with_a_clear_429() {
    let served = Served::start_with(Format::Gguf, |options| {
        options.gateway.prices = prices();
    })
    .await;
    let capped = key(
        &served,
        "dave",
        KeyLimits {
            budget: Some(Budget {
                limit_micro_usd: 20,
                period: BudgetPeriod::Daily,
            }),
            ..KeyLimits::default()
        },
    )
    .await;
    let first = post(&served, "/v1/chat/completions", &capped, &chat(4)).await;
    assert_eq!(first.status(), StatusCode::OK);
    usage_once_recorded(&served, &capped, 1).await;

    let refused = post(&served, "/v1/chat/completions", &capped, &chat(4)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget"),
        "{body}"
    );
}

#[tokio::test]
async fn feedback_rates_only_the_callers_own_answers() {
    let served = Served::start(Format::Gguf).await;
    let alice = key(&served, "alice", KeyLimits::default()).await;
    let bob = key(&served, "bob", KeyLimits::default()).await;
    let answer = post(&served, "/v1/chat/completions", &alice, &chat(2)).await;
    let answer: Value = answer.json().await.unwrap();
    let id = answer["id"].as_str().unwrap();

    // At once: the usage record that proves ownership may still be on its way to the store.
    let rated = post(
        &served,
        "/v1/feedback",
        &alice,
        &json!({"response_id": id, "rating": 1, "comment": "good"}),
    )
    .await;
    assert_eq!(rated.status(), StatusCode::CREATED);
    let rated: Value = rated.json().await.unwrap();
    assert_eq!(rated["rating"], 1);
    assert_eq!(rated["response_id"], id);

    let stolen = post(
        &served,
        "/v1/feedback",
        &bob,
        &json!({"response_id": id, "rating": -1}),
    )
    .await;
    assert_eq!(stolen.status(), StatusCode::NOT_FOUND);
    let body: Value = stolen.json().await.unwrap();
    assert_eq!(body["error"]["code"], "response_not_found");

    for (bad, param) in [
        (json!({"response_id": id, "rating": 5}), "rating"),
        (json!({"response_id": "", "rating": 1}), "response_id"),
        (
            json!({"response_id": id, "rating": 1, "comment": "x".repeat(5000)}),
            "comment",
        ),
    ] {
        let response = post(&served, "/v1/feedback", &alice, &bad).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["param"], param, "{body}");
    }

    let metrics = reqwest::get(served.stack.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("passerelle_feedback_total{rating=\"up\"} 1"));
    assert!(metrics.contains("passerelle_feedback_satisfaction_ratio 1"));
}

#[tokio::test]
async fn prompts_are_logged_only_when_turned_on_and_then_redacted() {
    let prompt = json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Mail jane.doe@example.com or call +44 20 7946 0958"}],
        "max_tokens": 2,
    });
    let off = Served::start(Format::Gguf).await;
    let alice = key(&off, "alice", KeyLimits::default()).await;
    assert_eq!(
        post(&off, "/v1/chat/completions", &alice, &prompt)
            .await
            .status(),
        StatusCode::OK
    );
    usage_once_recorded(&off, &alice, 1).await;
    assert!(
        off.stack
            .store()
            .prompts_of("alice")
            .await
            .unwrap()
            .is_empty()
    );

    let on = Served::start_with(Format::Gguf, |options| {
        options.gateway.log_prompts = true;
    })
    .await;
    let alice = key(&on, "alice", KeyLimits::default()).await;
    let answer = post(&on, "/v1/chat/completions", &alice, &prompt).await;
    let answer: Value = answer.json().await.unwrap();
    let mut logged = Vec::new();
    for _ in 0..100 {
        logged = on.stack.store().prompts_of("alice").await.unwrap();
        if !logged.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].response_id, answer["id"]);
    assert!(
        logged[0].prompt.starts_with("user: Mail "),
        "{}",
        logged[0].prompt
    );
    assert!(
        !logged[0].prompt.contains("jane.doe"),
        "{}",
        logged[0].prompt
    );
    assert!(!logged[0].prompt.contains("7946"), "{}", logged[0].prompt);
}
