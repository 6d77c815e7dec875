//! The cost of the prompt-injection classifier at deberta-v3-base's size (12 layers, hidden
//! 768, 12 heads, intermediate 3072, 256 position buckets, windows of 512 tokens), on random
//! weights: latency depends on the shapes, not the values.
//!
//! `CANDLE_NUM_THREADS=2 cargo bench -p passerelle-safety --bench injection`. The bench writes
//! a model directory to a temporary folder (about 350 MB; the vocabulary is cut to 4,096 words
//! of a word-level tokenizer, which changes the embedding table's size but not the cost of a
//! forward pass) and loads it the way the service does. Cases: a 2 KB prompt (one window of
//! about 410 tokens; a 2 KB English prompt is 450 to 500 DeBERTa-v3 tokens) and a short one
//! (about 30 tokens). Compute threads: `PASSERELLE_BENCH_THREADS`, default 2.

use std::{hint::black_box, path::Path, time::Duration};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::debertav2::{Config, DebertaV2SeqClassificationModel};
use criterion::{Criterion, criterion_group, criterion_main};
use passerelle_safety::{ClassifierOptions, InjectionClassifier};
use serde_json::json;

const VOCAB: usize = 4096;

fn config() -> serde_json::Value {
    json!({
        "model_type": "deberta-v2",
        "architectures": ["DebertaV2ForSequenceClassification"],
        "vocab_size": VOCAB, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512, "type_vocab_size": 0, "initializer_range": 0.02,
        "layer_norm_eps": 1e-7, "relative_attention": true, "max_relative_positions": -1,
        "pad_token_id": 0, "position_biased_input": false, "pos_att_type": ["p2c", "c2p"],
        "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": true,
        "pooler_dropout": 0, "pooler_hidden_act": "gelu", "pooler_hidden_size": 768,
        "id2label": {"0": "SAFE", "1": "INJECTION"}, "label2id": {"SAFE": 0, "INJECTION": 1}
    })
}

fn tokenizer() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (id, special) in ["[PAD]", "[CLS]", "[SEP]", "[UNK]"].iter().enumerate() {
        vocab.insert((*special).to_owned(), json!(id));
    }
    for id in 4..VOCAB {
        vocab.insert(format!("w{id}"), json!(id));
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [1], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "[UNK]", "vocab": vocab}
    })
}

/// Writes the base-sized model with random weights into `dir`.
fn write_model(dir: &Path) {
    let config = config();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer().to_string()).unwrap();
    let config: Config = serde_json::from_value(config).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    DebertaV2SeqClassificationModel::load(vb.pp("deberta"), &config, None).unwrap();
    varmap.save(dir.join("model.safetensors")).unwrap();
}

/// Words of the vocabulary until the text is `bytes` long.
fn prompt(bytes: usize) -> String {
    let mut text = String::new();
    let mut id = 4;
    while text.len() < bytes {
        text.push_str(&format!("w{id} "));
        id = (id * 7 + 13) % (VOCAB - 4) + 4;
    }
    text.truncate(bytes);
    text
}

fn injection(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path());
    let classifier =
        InjectionClassifier::load_with(dir.path(), ClassifierOptions::default(), &Device::Cpu)
            .unwrap();
    let threads = std::env::var("PASSERELLE_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let pool = passerelle_model_runtime::compute::compute_pool("bench", threads).unwrap();
    let long = prompt(2048);
    let short = prompt(150);
    for (name, text) in [("2KB", &long), ("short", &short)] {
        let windows = classifier.windows(text).unwrap();
        eprintln!(
            "{name}: {} bytes, {} window(s) of {} tokens, {threads} threads",
            text.len(),
            windows.len(),
            windows[0].len()
        );
    }
    pool.install(|| classifier.warm_up()).unwrap();

    let mut group = c.benchmark_group("injection_classifier_base");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("2KB prompt", |b| {
        b.iter(|| pool.install(|| classifier.score(&[black_box(long.as_str())]).unwrap()));
    });
    group.bench_function("short prompt", |b| {
        b.iter(|| pool.install(|| classifier.score(&[black_box(short.as_str())]).unwrap()));
    });
    group.finish();
}

criterion_group!(benches, injection);
criterion_main!(benches);
