//! Drift end to end: chat prompts are embedded by the embeddings service (real MiniLM weights)
//! and compared with a baseline window; a shift in topic raises the drift score.

use std::time::Duration;

use passerelle_gateway::DriftConfig;
use passerelle_testkit::stack::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served};

const WINDOW: usize = 40;

/// `count` distinct questions about cooking, starting at `offset` in a fixed enumeration.
fn cooking(offset: usize, count: usize) -> Vec<String> {
    let verbs = ["bake", "roast", "grill", "braise", "steam"];
    let foods = [
        "chicken thighs",
        "sweet potatoes",
        "sourdough bread",
        "salmon",
        "carrots",
    ];
    let temps = ["160", "180", "200", "220"];
    questions(offset, count, |i| {
        format!(
            "How long should I {} {} at {} degrees in the oven?",
            verbs[i % 5],
            foods[(i / 5) % 5],
            temps[(i / 25) % 4]
        )
    })
}

/// `count` distinct questions about debugging programs.
fn programming(count: usize) -> Vec<String> {
    let faults = [
        "segmentation fault",
        "memory leak",
        "deadlock",
        "race condition",
        "stack overflow",
    ];
    let langs = ["Rust", "C++", "Go", "Java", "Python"];
    let parts = [
        "HTTP server",
        "JSON parser",
        "thread pool",
        "database driver",
    ];
    questions(0, count, |i| {
        format!(
            "How do I track down a {} in my {} {}?",
            faults[i % 5],
            langs[(i / 5) % 5],
            parts[(i / 25) % 4]
        )
    })
}

fn questions(offset: usize, count: usize, make: impl Fn(usize) -> String) -> Vec<String> {
    (offset..offset + count).map(make).collect()
}

async fn drift_stack() -> Served {
    Served::start_with(Format::Gguf, |options| {
        options.embedding_model = Some(passerelle_testkit::minilm::minilm_dir().to_path_buf());
        options.gateway.drift = Some(DriftConfig {
            sample_rate: 1.0,
            window: WINDOW,
            min_recent: WINDOW,
            ..DriftConfig::default()
        });
    })
    .await
}

async fn report(served: &Served) -> Value {
    let response = reqwest::Client::new()
        .get(served.stack.url("/admin/drift"))
        .bearer_auth(Stack::API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Asks each question, one at a time, and waits until its prompt has been embedded, so every
/// sample lands in the window it was sent for.
async fn ask_all(served: &Served, questions: &[String]) {
    let client = reqwest::Client::new();
    for question in questions {
        let before = report(served).await["samples_total"].as_u64().unwrap();
        let response = client
            .post(served.stack.url("/v1/chat/completions"))
            .bearer_auth(Stack::API_KEY)
            .json(&json!({
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 1,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while report(served).await["samples_total"].as_u64().unwrap() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "prompt never sampled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn drift_rises_on_a_shifted_prompt_set() {
    let served = drift_stack().await;
    let initial = report(&served).await;
    assert_eq!(initial["status"], "collecting_baseline");
    assert_eq!(initial["drift_score"], Value::Null);

    ask_all(&served, &cooking(0, WINDOW)).await;
    assert_eq!(report(&served).await["status"], "collecting_recent");

    ask_all(&served, &cooking(WINDOW, WINDOW)).await;
    let steady = report(&served).await;
    assert_eq!(steady["status"], "comparing", "{steady}");
    let steady_score = steady["drift_score"].as_f64().unwrap();
    assert!(steady_score < 0.25, "same topic drifted: {steady}");
    assert_eq!(steady["drifting"], false);
    assert_eq!(steady["dimensions"], 384);

    ask_all(&served, &programming(WINDOW)).await;
    let shifted = report(&served).await;
    let shifted_score = shifted["drift_score"].as_f64().unwrap();
    eprintln!(
        "drift score: same topic {steady_score:.3} (mean KS {}), new topic {shifted_score:.3} (mean KS {})",
        steady["mean_ks"], shifted["mean_ks"]
    );
    assert!(shifted_score > 0.5, "new topic did not drift: {shifted}");
    assert!(shifted_score > steady_score + 0.3, "{steady} vs {shifted}");
    assert_eq!(shifted["drifting"], true);
    assert!(shifted["mean_ks"].as_f64().unwrap() > steady["mean_ks"].as_f64().unwrap());
    assert_eq!(
        served.stack.metric("passerelle_embedding_drift_score", &[]),
        shifted_score
    );

    // Accepting the new traffic makes it the baseline.
    let rebased: Value = reqwest::Client::new()
        .post(served.stack.url("/admin/drift/baseline"))
        .bearer_auth(Stack::API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rebased["status"], "collecting_recent", "{rebased}");
    assert_eq!(rebased["baseline_samples"], WINDOW);
    assert_eq!(rebased["recent_samples"], 0);
}

#[tokio::test]
async fn drift_needs_the_feature() {
    let served = Served::start(Format::Gguf).await;
    let response = reqwest::Client::new()
        .get(served.stack.url("/admin/drift"))
        .bearer_auth(Stack::API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "feature_disabled");
}
