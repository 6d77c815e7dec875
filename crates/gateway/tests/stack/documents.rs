//! Documents and retrieval end to end: documents ingested through `/v1/documents` are chunked
//! and embedded by the embeddings service (real all-MiniLM-L6-v2 weights), and a chat request
//! with `retrieval` gets the closest chunks in its prompt and lists them as `citations`.
//!
//! The tiny random LLM answers noise, so the prompt is observed through `usage.prompt_tokens`
//! and the citations, not through the answer's words.

use passerelle_testkit::stack::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served, json_events};

const OTHER_KEY: &str = "psk-testkit-documents-other-0123456789abcdef0123";

const CATS: &str = "Cats are small carnivorous mammals kept as pets. They purr when content, \
                    sleep most of the day and groom themselves with their rough tongues.";
const ROME: &str = "The Roman Empire was founded in 27 BC when Augustus became emperor. Its \
                    legions built roads and aqueducts across Europe, and Rome ruled the \
                    Mediterranean for centuries.";
const VOLCANO: &str = "Volcanoes erupt when magma rises through the crust. Lava flows, ash \
                       clouds and pyroclastic flows make eruptions dangerous to nearby towns.";

const QUESTION: &str = "Which animal purrs when it is content?";

async fn documents_stack() -> Served {
    Served::start_with(Format::Gguf, |options| {
        options.embedding_model = Some(passerelle_testkit::minilm::minilm_dir().to_path_buf());
        options.api_keys.push(OTHER_KEY.to_owned());
    })
    .await
}

async fn send(
    served: &Served,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, served.stack.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value)
}

async fn post(served: &Served, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    send(served, key, reqwest::Method::POST, path, Some(body)).await
}

async fn get(served: &Served, key: &str, path: &str) -> (StatusCode, Value) {
    send(served, key, reqwest::Method::GET, path, None).await
}

async fn delete(served: &Served, key: &str, path: &str) -> (StatusCode, Value) {
    send(served, key, reqwest::Method::DELETE, path, None).await
}

fn chat(served: &Served, question: &str, retrieval: Option<Value>) -> Value {
    let mut body = json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
        "logit_bias": served.eos_bias(-100),
    });
    if let Some(retrieval) = retrieval {
        body["retrieval"] = retrieval;
    }
    body
}

async fn ingest(served: &Served, title: &str, text: &str) -> Value {
    let (status, body) = post(
        served,
        Stack::API_KEY,
        "/v1/documents",
        &json!({"title": title, "text": text, "metadata": {"topic": title}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

fn cited_ids(body: &Value) -> Vec<&str> {
    body["citations"]
        .as_array()
        .unwrap_or_else(|| panic!("no citations in {body}"))
        .iter()
        .map(|c| c["document_id"].as_str().unwrap())
        .collect()
}

fn error_param(body: &Value) -> &str {
    body["error"]["param"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn documents_are_retrieved_and_cited() {
    let served = documents_stack().await;
    let cats = ingest(&served, "Cats", CATS).await;
    let rome = ingest(&served, "Rome", ROME).await;
    let volcano = ingest(&served, "Volcanoes", VOLCANO).await;
    let cats_id = cats["id"].as_str().unwrap().to_owned();
    assert!(cats_id.starts_with("doc_"), "{cats}");
    assert_eq!(cats["object"], "document");
    assert_eq!(cats["title"], "Cats");
    assert_eq!(cats["chunks"], 1);
    assert_eq!(cats["bytes"], CATS.len());
    assert_eq!(cats["metadata"], json!({"topic": "Cats"}));
    assert!(cats["created_at"].as_i64().unwrap() > 0);
    assert!(cats["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let (status, list) = get(&served, Stack::API_KEY, "/v1/documents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["object"], "list");
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 3);
    for document in [&cats, &rome, &volcano] {
        assert!(listed.contains(&document["id"].as_str().unwrap()));
    }
    let (status, one) = get(&served, Stack::API_KEY, &format!("/v1/documents/{cats_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["title"], "Cats");

    // The same question without and with retrieval: the sources lengthen the prompt, and the
    // document about cats comes first.
    let (status, plain) = post(
        &served,
        Stack::API_KEY,
        "/v1/chat/completions",
        &chat(&served, QUESTION, None),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    assert!(plain.get("citations").is_none());
    let (status, answered) = post(
        &served,
        Stack::API_KEY,
        "/v1/chat/completions",
        &chat(&served, QUESTION, Some(json!({"top_k": 3}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answered}");
    assert_eq!(cited_ids(&answered)[0], cats_id);
    assert_eq!(cited_ids(&answered).len(), 3);
    let citations = answered["citations"].as_array().unwrap();
    assert_eq!(citations[0]["index"], 1);
    assert_eq!(citations[0]["title"], "Cats");
    assert_eq!(citations[0]["chunk_index"], 0);
    assert_eq!(citations[0]["text"], CATS);
    let scores: Vec<f64> = citations
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let tokens = |body: &Value| body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        tokens(&answered) > tokens(&plain) + 60,
        "three sources must be in the prompt: {} vs {}",
        tokens(&answered),
        tokens(&plain)
    );

    let (_, one_source) = post(
        &served,
        Stack::API_KEY,
        "/v1/chat/completions",
        &chat(
            &served,
            "Who was the first Roman emperor?",
            Some(json!({"top_k": 1})),
        ),
    )
    .await;
    assert_eq!(cited_ids(&one_source), vec![rome["id"].as_str().unwrap()]);

    // A stream carries the citations on its first chunk.
    let mut streaming = chat(&served, QUESTION, Some(json!({"top_k": 2})));
    streaming["stream"] = json!(true);
    let events = json_events(
        &served
            .client()
            .post_sse("/v1/chat/completions", &streaming)
            .await,
    );
    assert_eq!(events[0]["citations"][0]["document_id"], cats_id.as_str());
    assert!(events[1..].iter().all(|e| e.get("citations").is_none()));

    // Another key sees none of these documents, and its retrieval finds nothing.
    let (status, theirs) = get(&served, OTHER_KEY, "/v1/documents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(theirs["data"], json!([]));
    let (status, _) = get(&served, OTHER_KEY, &format!("/v1/documents/{cats_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, elsewhere) = post(
        &served,
        OTHER_KEY,
        "/v1/chat/completions",
        &chat(&served, QUESTION, Some(json!({}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{elsewhere}");
    assert_eq!(elsewhere["citations"], json!([]));
    assert_eq!(
        tokens(&elsewhere),
        tokens(&plain),
        "no sources, no longer prompt"
    );
    let (status, _) = delete(&served, OTHER_KEY, &format!("/v1/documents/{cats_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleted, the document is no longer cited.
    let (status, deleted) =
        delete(&served, Stack::API_KEY, &format!("/v1/documents/{cats_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        deleted,
        json!({"id": cats_id, "object": "document.deleted", "deleted": true})
    );
    let (_, after) = post(
        &served,
        Stack::API_KEY,
        "/v1/chat/completions",
        &chat(&served, QUESTION, Some(json!({"top_k": 3}))),
    )
    .await;
    let ids = cited_ids(&after);
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&cats_id.as_str()), "{ids:?}");
    let (status, gone) = get(&served, Stack::API_KEY, &format!("/v1/documents/{cats_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["error"]["code"], "document_not_found");
    assert_eq!(gone["error"]["type"], "invalid_request_error");
    let (status, _) = delete(&served, Stack::API_KEY, &format!("/v1/documents/{cats_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(
        served
            .stack
            .metric("passerelle_documents_ingested_total", &[]),
        3.0
    );
    assert_eq!(served.stack.metric("passerelle_documents", &[]), 2.0);
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_param() {
    let served = documents_stack().await;
    let bad_top_k = chat(&served, QUESTION, Some(json!({"top_k": 0})));
    let (status, body) = post(&served, Stack::API_KEY, "/v1/chat/completions", &bad_top_k).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_param(&body), "retrieval.top_k");
    let too_many = chat(&served, QUESTION, Some(json!({"top_k": 21})));
    let (status, body) = post(&served, Stack::API_KEY, "/v1/chat/completions", &too_many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_param(&body), "retrieval.top_k");
    let unknown = chat(
        &served,
        QUESTION,
        Some(json!({"document_ids": ["doc_nope"]})),
    );
    let (status, body) = post(&served, Stack::API_KEY, "/v1/chat/completions", &unknown).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_param(&body), "retrieval.document_ids[0]");

    for (document, param) in [
        (json!({"title": "no text"}), "text"),
        (json!({"text": "   "}), "text"),
        (json!({"text": "x", "metadata": {"k": 1}}), "metadata.k"),
        (json!({"text": "x", "id": "../../etc"}), "id"),
        (
            json!({"text": "x", "chunking": {"max_tokens": 4096}}),
            "chunking.max_tokens",
        ),
        (json!({"text": "x".repeat(1024 * 1024 + 1)}), "text"),
        (
            json!({"documents": [{"text": "fine"}, {"text": ""}]}),
            "documents[1].text",
        ),
    ] {
        let (status, body) = post(&served, Stack::API_KEY, "/v1/documents", &document).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_param(&body), param, "{body}");
    }
    let (status, body) = post(
        &served,
        Stack::API_KEY,
        "/v1/documents",
        &json!({"text": "x", "model": "nope"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "model_not_found");
    let (status, body) = get(&served, Stack::API_KEY, "/v1/documents/doc_unknown").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_param(&body), "id");

    // Without a key, nothing.
    let response = reqwest::Client::new()
        .get(served.stack.url("/v1/documents"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_batch_is_stored_and_searched_without_chat() {
    let served = documents_stack().await;
    let (status, created) = post(
        &served,
        Stack::API_KEY,
        "/v1/documents",
        &json!({"documents": [
            {"title": "Rome", "text": ROME},
            {"title": "Volcanoes", "text": VOLCANO, "id": "volcanoes"},
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["object"], "list");
    assert_eq!(created["data"][1]["id"], "volcanoes");
    assert!(created["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let (status, found) = post(
        &served,
        Stack::API_KEY,
        "/v1/documents/search",
        &json!({"query": "lava and ash clouds", "top_k": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["data"][0]["document_id"], "volcanoes");
    assert_eq!(found["data"][0]["object"], "document.chunk");
    assert_eq!(found["data"].as_array().unwrap().len(), 1);

    // Storing under an existing id replaces the document.
    let (status, replaced) = post(
        &served,
        Stack::API_KEY,
        "/v1/documents",
        &json!({"id": "volcanoes", "title": "Cats now", "text": CATS}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(replaced["id"], "volcanoes");
    let (_, list) = get(&served, Stack::API_KEY, "/v1/documents").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let (_, found) = post(
        &served,
        Stack::API_KEY,
        "/v1/documents/search",
        &json!({"query": "Which animal purrs?", "top_k": 1}),
    )
    .await;
    assert_eq!(found["data"][0]["title"], "Cats now");
}

#[tokio::test]
async fn without_an_embeddings_service_retrieval_is_refused() {
    let served = Served::start(Format::Gguf).await;
    let (status, body) = post(
        &served,
        Stack::API_KEY,
        "/v1/chat/completions",
        &chat(&served, QUESTION, Some(json!({}))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_param(&body), "retrieval");
    let (status, body) = get(&served, Stack::API_KEY, "/v1/documents").await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
}

#[tokio::test]
async fn the_semantic_cache_reuses_an_answer_only_with_the_same_sources() {
    let served = Served::start_with(Format::Gguf, |options| {
        options.embedding_model = Some(passerelle_testkit::minilm::minilm_dir().to_path_buf());
        options.gateway.semantic_cache = Some(passerelle_gateway::SemanticCacheConfig::default());
    })
    .await;
    let cats = ingest(&served, "Cats", CATS).await;
    ingest(&served, "Rome", ROME).await;
    let body = chat(&served, QUESTION, Some(json!({"top_k": 2})));
    let ask = || async {
        let response = reqwest::Client::new()
            .post(served.stack.url("/v1/chat/completions"))
            .bearer_auth(Stack::API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let cache = response.headers()["x-passerelle-cache"]
            .to_str()
            .unwrap()
            .to_owned();
        (cache, response.json::<Value>().await.unwrap())
    };
    let (cache, first) = ask().await;
    assert_eq!(cache, "miss");
    // The answer is stored in the background: ask until it is found.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let hit = loop {
        let (cache, body) = ask().await;
        if cache == "hit" {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "never cached");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // The same sources; scores agree to float noise (the service may batch the query with
    // other texts, which changes the shapes of its matrix products).
    let sources = |body: &Value| {
        body["citations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["document_id"].clone(),
                    c["chunk_index"].clone(),
                    c["score"].as_f64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (hit_sources, first_sources) = (sources(&hit), sources(&first));
    assert_eq!(hit_sources.len(), first_sources.len());
    for (a, b) in hit_sources.iter().zip(&first_sources) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert!((a.2 - b.2).abs() < 1e-4, "{a:?} vs {b:?}");
    }
    assert_eq!(
        hit["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );

    // Other sources, other answer: deleting a cited document makes the same question a miss.
    let id = cats["id"].as_str().unwrap();
    let (status, _) = delete(&served, Stack::API_KEY, &format!("/v1/documents/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (cache, after) = ask().await;
    assert_eq!(cache, "miss");
    assert!(!cited_ids(&after).contains(&id));
}
