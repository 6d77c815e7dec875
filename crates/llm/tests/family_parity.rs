//! Qwen2, Qwen3, Llama 3.x and Phi-3 against `transformers` on the same random weights
//! (`tests/fixtures/make_family_parity_fixture.py`): last-position logits within 1e-4 and 32
//! greedy tokens exactly, loaded from the saved F32 safetensors, from GGUF converted from them,
//! and from the same weights stored as BF16 and as F16 safetensors.
//!
//! The 16-bit reference is `transformers` loading its own 16-bit file with
//! `dtype=torch.float32`: weights rounded to 16 bits, computed in float32, as the engine computes
//! a 16-bit checkpoint on the CPU. The 16-bit files are not committed; each test rounds the F32
//! weights and checks that the rounded tensors hash to what `transformers` loaded.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor};
use passerelle_llm::{
    ModelFiles,
    model::{self, Architecture, Decoder, KvCache},
};
use passerelle_testkit::{WeightDtype, models::convert_hf_to_gguf};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("family_parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The Hugging Face directory of `family` (Llama's is the safety crate's tiny Llama Guard).
fn model_dir(family: &str) -> PathBuf {
    let dir = &reference()["families"][family]["dir"];
    fixtures().join(dir.as_str().unwrap())
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
    let path = model_dir(family).join("config.json");
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

/// Checks the recorded cases of `family` for weights of type `dtype` (`f32`, `bf16`, `f16`)
/// on `decoder`, loaded from `format`.
fn check(family: &str, dtype: &str, decoder: &Decoder, format: &str) {
    let reference = reference();
    let recorded = &reference["families"][family][dtype];
    let cases = match dtype {
        "f32" => recorded,
        _ => &recorded["cases"],
    };
    let eos = eos_id(family);
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let prompt = numbers(&case["input_ids"], |v| v.as_u64().unwrap() as u32);
        let expected_logits = numbers(&case["last_logits"], |v| v.as_f64().unwrap() as f32);
        let expected_tokens = numbers(&case["greedy"], |v| v.as_u64().unwrap() as u32);
        assert!(expected_tokens.len() >= 32);
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
    let dir = model_dir(family);
    let (found, decoder) = load(&dir);
    assert_eq!(found, architecture);
    check(family, "f32", &decoder, "safetensors");

    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join(format!("{family}.gguf"));
    convert_hf_to_gguf(&dir, &gguf, WeightDtype::F32).unwrap();
    let (found, decoder) = load(&gguf);
    assert_eq!(found, architecture);
    check(family, "f32", &decoder, "gguf f32");

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

/// sha256 over `tensors` in name order, each name then its little-endian 16-bit values, as
/// the fixture script hashes the 16-bit file `transformers` saved.
fn weights_sha256(tensors: &BTreeMap<String, Tensor>) -> String {
    let mut digest = Sha256::new();
    for (name, tensor) in tensors {
        digest.update(name.as_bytes());
        let flat = tensor.flatten_all().unwrap();
        let bits: Vec<u16> = match tensor.dtype() {
            DType::BF16 => flat
                .to_vec1::<half::bf16>()
                .unwrap()
                .into_iter()
                .map(half::bf16::to_bits)
                .collect(),
            DType::F16 => flat
                .to_vec1::<half::f16>()
                .unwrap()
                .into_iter()
                .map(half::f16::to_bits)
                .collect(),
            other => panic!("{name} is {other:?}, not a 16-bit type"),
        };
        for value in bits {
            digest.update(value.to_le_bytes());
        }
    }
    format!("{:x}", digest.finalize())
}

/// Writes `family`'s weights rounded to `dtype` as a Hugging Face directory in `out` (the
/// other files copied), after checking that they are the weights `transformers` ran.
fn write_16_bit(family: &str, dtype: DType, key: &str, out: &Path) {
    let dir = model_dir(family);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
        }
    }
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, tensor)| {
            assert_eq!(tensor.dtype(), DType::F32, "{name}");
            (name, tensor.to_dtype(dtype).unwrap())
        })
        .collect::<BTreeMap<_, _>>();
    assert_eq!(
        weights_sha256(&weights),
        reference()["families"][family][key]["weights_sha256"]
            .as_str()
            .unwrap(),
        "{family} {key}: the rounded weights are not those transformers loaded"
    );
    let weights: HashMap<_, _> = weights.into_iter().collect();
    candle_core::safetensors::save(&weights, out.join("model.safetensors")).unwrap();
}

/// The same weights stored as BF16 and as F16 load and match `transformers` on those files.
fn half_parity(family: &str, architecture: Architecture) {
    for (dtype, key) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        let tmp = tempfile::tempdir().unwrap();
        write_16_bit(family, dtype, key, tmp.path());
        let (found, decoder) = load(tmp.path());
        assert_eq!(found, architecture);
        check(family, key, &decoder, &format!("{key} safetensors"));
    }
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
fn llama3_with_llama3_rope_scaling_matches_transformers() {
    parity("llama", Architecture::Llama);
}

#[test]
fn phi3_with_longrope_and_a_sliding_window_matches_transformers() {
    parity("phi3", Architecture::Phi3);
}

#[test]
fn qwen2_bf16_and_f16_safetensors_match_transformers() {
    half_parity("qwen2", Architecture::Qwen2);
}

#[test]
fn qwen3_bf16_and_f16_safetensors_match_transformers() {
    half_parity("qwen3", Architecture::Qwen3);
}

#[test]
fn llama3_bf16_and_f16_safetensors_match_transformers() {
    half_parity("llama", Architecture::Llama);
}

#[test]
fn phi3_bf16_and_f16_safetensors_match_transformers() {
    half_parity("phi3", Architecture::Phi3);
}
