//! llama.cpp is the reference: on the same GGUF file and the same prompt ids, greedy decoding
//! through the engine gives llama.cpp's tokens, token for token.
//!
//! The files in `fixtures/gguf_parity/` are tiny random-weight models of every family in F32
//! and Q8_0: Qwen2 written by the testkit, Llama converted from the safety crate's tiny Llama
//! Guard, Qwen3 and Phi-3 converted from the `tiny-qwen3` and `tiny-phi3` weights of
//! `family_parity.rs`. Phi-3's config is changed where llama.cpp departs from `transformers`
//! (no sliding window, which llama.cpp ignores for Phi-3; an original context shorter than every
//! prompt, so that both pick longrope's long factors at every step). The expected ids in
//! `fixtures/gguf_parity.json` come from llama.cpp through llama-cpp-python
//! (`fixtures/make_gguf_parity_fixture.py`, which records the llama.cpp version and explains
//! the settings).

mod common;

use std::path::{Path, PathBuf};

use common::{MODEL_ID, engine, run};
use passerelle_llm::{GenerationRequest, Prompt};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(fixtures().join("gguf_parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|id| u32::try_from(id.as_u64().unwrap()).unwrap())
        .collect()
}

/// Runs every prompt of `file`'s fixture greedily and checks llama.cpp's ids.
async fn check(file: &str) {
    let fixture = fixture();
    let model = &fixture["models"][file];
    assert!(model.is_object(), "{file} is not in gguf_parity.json");
    let path = fixtures().join(model["file"].as_str().unwrap());
    let digest = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(
        digest, model["sha256"],
        "{file} is not the file llama.cpp ran: rerun make_gguf_parity_fixture.py"
    );

    let engine = engine(&path).await;
    for (i, case) in model["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let expected = ids(&case["expected_ids"]);
        assert!(expected.len() >= 32);
        let mut request = GenerationRequest::new(MODEL_ID, Prompt::Tokens(prompt));
        request.sampling.temperature = Some(0.0);
        request.sampling.repetition_penalty = Some(1.0);
        request.stopping.max_tokens = Some(expected.len() as u32);
        request.stopping.ignore_eos = true;
        let got = run(&engine, request).await.tokens;
        if let Some(step) = got.iter().zip(&expected).position(|(a, b)| a != b) {
            panic!(
                "{file}, prompt {i} ({:?}): step {step} gives {} where llama.cpp gives {} \
                 (llama.cpp's top-2 logit gap there: {})\n ours:      {got:?}\n llama.cpp: {expected:?}",
                case["text"], got[step], expected[step], case["top2_gaps"][step]
            );
        }
        assert_eq!(got, expected, "{file}, prompt {i}");
    }
}

#[tokio::test]
async fn qwen2_f32_matches_llama_cpp() {
    check("qwen2-f32.gguf").await;
}

#[tokio::test]
async fn qwen2_q8_0_matches_llama_cpp() {
    check("qwen2-q8_0.gguf").await;
}

#[tokio::test]
async fn llama_f32_matches_llama_cpp() {
    check("llama-f32.gguf").await;
}

#[tokio::test]
async fn llama_q8_0_matches_llama_cpp() {
    check("llama-q8_0.gguf").await;
}

#[tokio::test]
async fn qwen3_f32_matches_llama_cpp() {
    check("qwen3-f32.gguf").await;
}

#[tokio::test]
async fn qwen3_q8_0_matches_llama_cpp() {
    check("qwen3-q8_0.gguf").await;
}

#[tokio::test]
async fn phi3_f32_with_longrope_matches_llama_cpp() {
    check("phi3-f32.gguf").await;
}

#[tokio::test]
async fn phi3_q8_0_with_longrope_matches_llama_cpp() {
    check("phi3-q8_0.gguf").await;
}

#[test]
fn the_fixture_names_its_reference_and_covers_every_family() {
    let fixture = fixture();
    assert!(
        fixture["llama_cpp"]
            .as_str()
            .unwrap()
            .starts_with("ggml-org/llama.cpp@")
    );
    assert!(fixture["steps"].as_u64().unwrap() >= 32);
    let models = fixture["models"].as_object().unwrap();
    for family in ["qwen2", "qwen3", "llama", "phi3"] {
        for dtype in ["f32", "q8_0"] {
            assert!(models.contains_key(&format!("{family}-{dtype}.gguf")));
        }
    }
}
