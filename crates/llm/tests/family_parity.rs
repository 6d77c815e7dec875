//! Qwen2, Qwen3 and Phi-3 against `transformers` on the same random weights
//! (`tests/fixtures/make_family_parity_fixture.py`): last-position logits within 1e-4 and 32
//! greedy tokens exactly, loaded from the saved safetensors and from GGUF converted from them.

use std::path::{Path, PathBuf};

use candle_core::Device;
use passerelle_llm::{
    ModelFiles,
    model::{self, Architecture, Decoder, KvCache},
};
use passerelle_testkit::{WeightDtype, models::convert_hf_to_gguf};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("family_parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn numbers<T>(value: &Value, f: impl Fn(&Value) -> T) -> Vec<T> {
    value.as_array().unwrap().iter().map(f).collect()
}

fn load(path: &Path) -> (Architecture, std::sync::Arc<Decoder>) {
    let files = ModelFiles::resolve(path).unwrap();
    let loaded = model::load(&files, &Device::Cpu).unwrap();
    (loaded.assets.architecture, loaded.model.decoder().clone())
}

/// The end-of-sequence id, which `generate(min_new_tokens=32)` never picks.
fn eos_id(family: &str) -> usize {
    let path = fixtures().join(format!("tiny-{family}/config.json"));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["eos_token_id"].as_u64().unwrap() as usize
}

/// The greedy choice with the end of sequence ruled out.
fn argmax(logits: &[f32], eos: usize) -> u32 {
    logits
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != eos)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

/// Checks every recorded case of `family` on `decoder`.
fn check(family: &str, decoder: &Decoder, format: &str) {
    let reference = reference();
    let eos = eos_id(family);
    for (i, case) in reference["families"][family]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let prompt = numbers(&case["input_ids"], |v| v.as_u64().unwrap() as u32);
        let expected_logits = numbers(&case["last_logits"], |v| v.as_f64().unwrap() as f32);
        let expected_tokens = numbers(&case["greedy"], |v| v.as_u64().unwrap() as u32);
        let mut cache = KvCache::new();
        let mut logits: Vec<f32> = decoder
            .forward(&prompt, &mut cache)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(logits.len(), expected_logits.len());
        let worst = logits
            .iter()
            .zip(&expected_logits)
            .map(|(a, e)| (a - e).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-4,
            "{family} {format} case {i}: max |logit diff| {worst}"
        );
        let mut tokens = Vec::new();
        for _ in 0..expected_tokens.len() {
            let next = argmax(&logits, eos);
            tokens.push(next);
            logits = decoder
                .forward(&[next], &mut cache)
                .unwrap()
                .to_vec1()
                .unwrap();
        }
        assert_eq!(tokens, expected_tokens, "{family} {format} case {i}");
    }
}

fn parity(family: &str, architecture: Architecture) {
    let dir = fixtures().join(format!("tiny-{family}"));
    let (found, decoder) = load(&dir);
    assert_eq!(found, architecture);
    check(family, &decoder, "safetensors");

    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join(format!("{family}.gguf"));
    convert_hf_to_gguf(&dir, &gguf, WeightDtype::F32).unwrap();
    let (found, decoder) = load(&gguf);
    assert_eq!(found, architecture);
    check(family, &decoder, "gguf f32");

    // A quantized file loads and runs the same code (its numbers are not the reference's).
    let q8 = tmp.path().join(format!("{family}-q8.gguf"));
    convert_hf_to_gguf(&dir, &q8, WeightDtype::Q8_0).unwrap();
    let (_, decoder) = load(&q8);
    let logits = decoder.forward(&[1, 2, 3], &mut KvCache::new()).unwrap();
    assert!(
        logits
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|l| l.is_finite())
    );
}

#[test]
fn qwen2_matches_transformers() {
    parity("qwen2", Architecture::Qwen2);
}

#[test]
fn qwen3_matches_transformers() {
    parity("qwen3", Architecture::Qwen3);
}

#[test]
fn phi3_with_longrope_and_a_sliding_window_matches_transformers() {
    parity("phi3", Architecture::Phi3);
}
