//! `/v1/embeddings` end to end: the gateway in front of the embeddings service serving the real
//! all-MiniLM-L6-v2 weights.

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served};

const EMBEDDING_MODEL: &str = "all-MiniLM-L6-v2";

async fn with_embeddings() -> Served {
    Served::start_with(Format::Gguf, |options| {
        options.embedding_model = Some(passerelle_testkit::minilm::minilm_dir().to_path_buf());
        options.embedding_model_id = EMBEDDING_MODEL.to_owned();
    })
    .await
}

fn vector(item: &Value) -> Vec<f32> {
    item["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn embeddings_are_unit_vectors_that_place_paraphrases_close() {
    let served = with_embeddings().await;
    let request = json!({
        "model": EMBEDDING_MODEL,
        "input": [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply on Monday."
        ],
    });
    let (status, body) = served.client().post_json("/v1/embeddings", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], EMBEDDING_MODEL);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let vectors: Vec<Vec<f32>> = data.iter().map(vector).collect();
    for (index, (item, vector)) in data.iter().zip(&vectors).enumerate() {
        assert_eq!(item["index"], index);
        assert_eq!(item["object"], "embedding");
        assert_eq!(vector.len(), 384);
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert!(cosine(&vectors[0], &vectors[1]) > cosine(&vectors[0], &vectors[2]) + 0.2);
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() >= 20, "{usage}");
    assert_eq!(usage["prompt_tokens"], usage["total_tokens"]);
}

#[tokio::test]
async fn token_ids_embed_like_their_text_and_bad_ids_are_400s() {
    let served = with_embeddings().await;
    let client = served.client();
    let text = "Passerelle means footbridge.";
    let mut tokenizer = tokenizers::Tokenizer::from_file(
        passerelle_testkit::minilm::minilm_dir().join("tokenizer.json"),
    )
    .unwrap();
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).unwrap();
    let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    let (_, from_text) = client
        .post_json(
            "/v1/embeddings",
            &json!({"model": EMBEDDING_MODEL, "input": text}),
        )
        .await;
    let (status, from_ids) = client
        .post_json(
            "/v1/embeddings",
            &json!({"model": EMBEDDING_MODEL, "input": [ids]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{from_ids}");
    let (a, b) = (vector(&from_ids["data"][0]), vector(&from_text["data"][0]));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5));
    assert_eq!(from_ids["usage"], from_text["usage"]);

    let (status, body) = client
        .post_json(
            "/v1/embeddings",
            &json!({"model": EMBEDDING_MODEL, "input": [101, 4_000_000, 102]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "input[0]");
}

#[tokio::test]
async fn base64_carries_the_same_floats() {
    let served = with_embeddings().await;
    let client = served.client();
    let float = json!({"model": EMBEDDING_MODEL, "input": "Passerelle means footbridge."});
    let mut base64 = float.clone();
    base64["encoding_format"] = json!("base64");
    let (_, as_floats) = client.post_json("/v1/embeddings", &float).await;
    let (status, as_base64) = client.post_json("/v1/embeddings", &base64).await;
    assert_eq!(status, StatusCode::OK, "{as_base64}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(as_base64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, vector(&as_floats["data"][0]));
}

#[tokio::test]
async fn models_lists_both_services_and_readiness_covers_both() {
    let served = with_embeddings().await;
    let client = served.client();
    let models: Value = client
        .get("/v1/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&MODEL_ID) && ids.contains(&EMBEDDING_MODEL),
        "{ids:?}"
    );
    let ready: Value = client
        .get("/health/ready")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["dependencies"]["embeddings"]["ready"], true,
        "{ready}"
    );

    let unknown = json!({"model": "no-such-embedder", "input": "x"});
    let (status, body) = client.post_json("/v1/embeddings", &unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn without_an_embeddings_service_no_embedding_model_exists() {
    let served = Served::start(Format::Gguf).await;
    let request = json!({"model": EMBEDDING_MODEL, "input": "x"});
    let (status, body) = served.client().post_json("/v1/embeddings", &request).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["param"], "model");
}
