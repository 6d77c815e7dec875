//! The cost of one Llama Guard check: a user message of about 30 and about 300 tokens judged
//! with the cached prompt prefix (what the service does), and the whole prompt prefilled from
//! nothing (the first check of a side, and what a server without prefix reuse pays each time).
//!
//! Llama-Guard-3-1B's architecture at Q4_K_M, random weights (cost depends on shapes, not
//! values), made by `make_llama_guard_1b.py` and converted with `passerelle-testkit
//! convert-llama`, then:
//!
//! `PASSERELLE_BENCH_LLAMA_GUARD=/tmp/lg1b-q4_k.gguf CANDLE_NUM_THREADS=2 cargo bench -p
//! passerelle-safety --bench llama_guard`
//!
//! Without the variable it runs the tiny test model, which only shows that the bench works.

use std::{hint::black_box, path::PathBuf, time::Duration};

use candle_core::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use passerelle_safety::{
    LlamaGuard,
    llama_guard::{Conversation, GuardOptions, default_categories, render},
};

fn model_path() -> PathBuf {
    std::env::var_os("PASSERELLE_BENCH_LLAMA_GUARD").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama-guard"),
        PathBuf::from,
    )
}

/// A user message of at least `tokens` tokens for this model's tokenizer.
fn message(guard: &LlamaGuard, tokens: usize) -> String {
    const WORDS: &str = "Could you explain how suspension bridges carry the weight of traffic \
        across a wide river and why engineers choose steel cables for them ";
    let mut text = String::new();
    for word in WORDS.split_whitespace().cycle() {
        if guard.encode(&text).unwrap().len() >= tokens {
            return text.trim_end().to_owned();
        }
        text.push_str(word);
        text.push(' ');
    }
    unreachable!("the word cycle never ends")
}

fn llama_guard(c: &mut Criterion) {
    let path = model_path();
    let mut guard = LlamaGuard::load(&path, &Device::Cpu).expect("load the model");
    // Never unsafe: the check is the prefill and the first answer token, no category decoding.
    let options = GuardOptions {
        threshold: Some(2.0),
        ..GuardOptions::default()
    };
    let categories = default_categories();
    let mut group = c.benchmark_group("llama_guard");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for tokens in [30, 300] {
        let text = message(&guard, tokens);
        let conversation = Conversation::alternating(vec![text]).unwrap();
        let prompt = guard
            .encode(&render(&conversation, &categories))
            .unwrap()
            .len();
        eprintln!(
            "{}: {tokens}-token message, {prompt}-token prompt",
            path.display()
        );
        group.bench_function(format!("check_{tokens}_tokens"), |b| {
            b.iter(|| {
                black_box(
                    guard
                        .assess(conversation.clone(), &options, &categories)
                        .unwrap(),
                )
            })
        });
        let ids = guard.encode(&render(&conversation, &categories)).unwrap();
        group.bench_function(format!("full_prefill_{tokens}_tokens"), |b| {
            b.iter(|| black_box(guard.logits(&ids).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, llama_guard);
criterion_main!(benches);
