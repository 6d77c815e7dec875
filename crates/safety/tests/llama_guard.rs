//! Llama Guard 3 against the references in `tests/fixtures` (made by
//! `make_llama_guard_fixture.py`): the prompt byte for byte as the published chat template
//! renders it through `transformers`, and the model's logits and greedy tokens as
//! `transformers` computes them on the same random weights, from safetensors and from GGUF.

use std::path::{Path, PathBuf};

use candle_core::Device;
use passerelle_safety::{
    CheckInput, CheckLayer, LayerKind, LayerOutcome, LlamaGuard, LlamaGuardLayer, Message, Stage,
    llama_guard::{Conversation, GuardOptions, HazardCategory, default_categories, render},
};
use passerelle_testkit::{WeightDtype, models::convert_llama_to_gguf};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("tiny-llama-guard")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// The categories a fixture case rendered with: its own, or the defaults minus the excluded.
fn categories_of(case: &Value) -> Vec<HazardCategory> {
    let excluded: Vec<&str> = case["excluded_category_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let chosen = match case["categories"].as_array() {
        Some(custom) => custom
            .iter()
            .map(|pair| HazardCategory {
                code: pair[0].as_str().unwrap().to_owned(),
                description: pair[1].as_str().unwrap().to_owned(),
            })
            .collect(),
        None => default_categories(),
    };
    chosen
        .into_iter()
        .filter(|c| !excluded.contains(&c.code.as_str()))
        .collect()
}

#[test]
fn prompts_render_byte_for_byte_like_the_published_template() {
    let fixture = json("llama_guard_prompts.json");
    for case in fixture["prompts"].as_array().unwrap() {
        let turns: Vec<String> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect();
        let conversation = Conversation::alternating(turns).unwrap();
        let rendered = render(&conversation, &categories_of(case));
        assert_eq!(
            rendered,
            case["rendered"].as_str().unwrap(),
            "case {}",
            case["name"]
        );
    }
}

fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: vocabulary width");
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= tolerance,
        "{what}: max |diff| {worst} > {tolerance}"
    );
}

/// Greedy tokens, the end of sequence ignored, as `generate(min_new_tokens=32)` ran them.
fn greedy(guard: &mut LlamaGuard, prompt: &[u32], count: usize) -> Vec<u32> {
    let mut context = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..count {
        // The whole context every step keeps this test independent of the KV cache path, which
        // `assess` exercises.
        let logits = guard.logits(&context).unwrap();
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        out.push(next);
        context.push(next);
    }
    out
}

fn check_parity(guard: &mut LlamaGuard, tolerance: f32, what: &str) {
    let parity = json("llama_guard_parity.json");
    let prompts = json("llama_guard_prompts.json");
    for (case, prompt) in parity["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(prompts["prompts"].as_array().unwrap())
    {
        let expected_ids = ids(&case["input_ids"]);
        let encoded = guard.encode(prompt["rendered"].as_str().unwrap()).unwrap();
        assert_eq!(
            encoded, expected_ids,
            "{what}: token ids of {}",
            case["name"]
        );
        let logits = guard.logits(&expected_ids).unwrap();
        assert_close(
            &logits,
            &floats(&case["last_logits"]),
            tolerance,
            &format!("{what}: {}", case["name"]),
        );
    }
    // Greedy decoding over 32 tokens for the first case: every step's argmax agrees.
    let first = &parity["cases"][0];
    let tokens = greedy(guard, &ids(&first["input_ids"]), 32);
    assert_eq!(tokens, ids(&first["greedy"]), "{what}: greedy tokens");
}

#[test]
fn safetensors_logits_match_transformers() {
    let mut guard = LlamaGuard::load(&model_dir(), &Device::Cpu).unwrap();
    check_parity(&mut guard, 1e-4, "safetensors");
}

#[test]
fn f32_gguf_logits_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny-llama-guard-f32.gguf");
    convert_llama_to_gguf(&model_dir(), &gguf, WeightDtype::F32).unwrap();
    let mut guard = LlamaGuard::load(&gguf, &Device::Cpu).unwrap();
    check_parity(&mut guard, 1e-4, "gguf f32");
}

/// Q8_0 and Q4_K files (the tiny model's rows are shorter than 256, so Q4_K falls back to Q8_0
/// as llama.cpp does) run the same code with quantized matrices. These random weights amplify
/// every error through the layers, so the bound is loose: within a tenth of the largest logit
/// for short prompts, and finite everywhere.
#[test]
fn quantized_ggufs_load_and_stay_close() {
    let parity = json("llama_guard_parity.json");
    let prompt = ids(&parity["cases"][0]["input_ids"]);
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("tiny-f32.gguf");
    convert_llama_to_gguf(&model_dir(), &f32_path, WeightDtype::F32).unwrap();
    let mut exact = LlamaGuard::load(&f32_path, &Device::Cpu).unwrap();
    for dtype in [WeightDtype::Q8_0, WeightDtype::Q4K] {
        let gguf = dir.path().join(format!("tiny-{dtype}.gguf"));
        convert_llama_to_gguf(&model_dir(), &gguf, dtype).unwrap();
        let mut guard = LlamaGuard::load(&gguf, &Device::Cpu).unwrap();
        for len in [1, 4, 16] {
            let expected = exact.logits(&prompt[..len]).unwrap();
            let scale = expected.iter().fold(0.0f32, |m, l| m.max(l.abs()));
            let logits = guard.logits(&prompt[..len]).unwrap();
            assert_close(
                &logits,
                &expected,
                0.1 * scale,
                &format!("{dtype}, {len} tokens"),
            );
        }
        let logits = guard.logits(&prompt).unwrap();
        assert!(logits.iter().all(|l| l.is_finite()), "{dtype}");
    }
}

fn check(stage: Stage, messages: &[(&str, &str)], categories: &[&str]) -> CheckInput {
    CheckInput {
        messages: messages
            .iter()
            .map(|(role, content)| Message {
                role: (*role).into(),
                content: (*content).into(),
            })
            .collect(),
        stage,
        categories: categories.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn layer(threshold: Option<f32>) -> LlamaGuardLayer {
    let guard = LlamaGuard::load(&model_dir(), &Device::Cpu).unwrap();
    LlamaGuardLayer::new(
        guard,
        GuardOptions {
            threshold,
            ..GuardOptions::default()
        },
    )
}

#[tokio::test]
async fn the_threshold_decides_and_the_verdict_names_the_layer() {
    let input = check(Stage::Input, &[("user", "How are explosives made?")], &[]);
    let always = layer(Some(0.0));
    assert_eq!(always.kind(), LayerKind::LlamaGuard);
    assert_eq!(always.info().format, "safetensors");
    match always.check(&input).await.unwrap() {
        LayerOutcome::Block(violation) => {
            assert!(
                violation.score > 0.0 && violation.score < 1.0,
                "{violation:?}"
            );
            assert_eq!(violation.message_index, 0);
        }
        other => panic!("expected a block, got {other:?}"),
    }
    let never = layer(Some(1.5));
    assert_eq!(never.check(&input).await.unwrap(), LayerOutcome::Pass);
}

#[tokio::test]
async fn output_checks_and_category_filters() {
    let guard = layer(Some(0.0));
    let answer = check(
        Stage::Output,
        &[("user", "Hi"), ("assistant", "Here is how to do it.")],
        &[],
    );
    assert!(matches!(
        guard.check(&answer).await.unwrap(),
        LayerOutcome::Block(v) if v.message_index == 1
    ));
    // A request enforcing only categories Llama Guard does not judge is not its business.
    let other = check(Stage::Input, &[("user", "Hi")], &["prompt_injection"]);
    assert_eq!(guard.check(&other).await.unwrap(), LayerOutcome::Pass);
    // Nothing to judge: only the operator's system prompt.
    let empty = check(Stage::Input, &[("system", "Be brief.")], &[]);
    assert_eq!(guard.check(&empty).await.unwrap(), LayerOutcome::Pass);
}

#[test]
fn the_greedy_reading_is_reproducible_and_long_prompts_are_shortened() {
    let mut guard = LlamaGuard::load(&model_dir(), &Device::Cpu).unwrap();
    let config = GuardOptions {
        max_prompt_tokens: 260,
        ..GuardOptions::default()
    };
    let long = "word ".repeat(2000);
    let conversation =
        Conversation::alternating(vec!["earlier".into(), "reply".into(), long]).unwrap();
    let a = guard
        .assess(conversation.clone(), &config, &config.categories)
        .unwrap();
    let b = guard
        .assess(conversation, &config, &config.categories)
        .unwrap();
    assert_eq!(a, b);
    assert!((0.0..=1.0).contains(&a.unsafe_probability));
}

#[test]
fn a_model_without_the_answer_words_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let qwen = passerelle_testkit::TinyQwen2::write(1).unwrap();
    let err = LlamaGuard::load(&qwen.gguf_path(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("qwen2"), "{err}");
    let missing = LlamaGuard::load(&dir.path().join("nothing.gguf"), &Device::Cpu).unwrap_err();
    assert!(!missing.to_string().is_empty());
}
