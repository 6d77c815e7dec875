//! The decoder's weights are shared and each sequence has its own cache: a batched forward
//! gives every sequence the logits it would get alone, and a cache snapshot resumes exactly.

mod common;

use candle_core::{Device, Tensor};
use common::tiny;
use passerelle_llm::{
    ModelFiles,
    model::{self, BatchItem, Decoder, KvCache},
};
use passerelle_testkit::WeightDtype;

fn decoder(path: &std::path::Path) -> std::sync::Arc<Decoder> {
    let files = ModelFiles::resolve(path).unwrap();
    model::load(&files, &Device::Cpu)
        .unwrap()
        .model
        .decoder()
        .clone()
}

fn rows(logits: &Tensor) -> Vec<Vec<f32>> {
    logits.to_vec2().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const PROMPTS: [&[u32]; 3] = [&[5, 17, 42, 8], &[99, 3], &[7, 7, 7, 7, 7, 120, 64]];

/// Each prompt prefilled alone, and the caches after it.
fn prefilled(decoder: &Decoder) -> Vec<KvCache> {
    PROMPTS
        .iter()
        .map(|prompt| {
            let mut cache = KvCache::new();
            decoder.forward(prompt, &mut cache).unwrap();
            cache
        })
        .collect()
}

fn batch_of_decodes_matches_separate_forwards(path: &std::path::Path) {
    let decoder = decoder(path);
    let next = [11u32, 12, 13];
    let separate: Vec<Vec<f32>> = prefilled(&decoder)
        .iter_mut()
        .zip(next)
        .map(|(cache, token)| decoder.forward(&[token], cache).unwrap().to_vec1().unwrap())
        .collect();
    let mut caches = prefilled(&decoder);
    let tokens: Vec<[u32; 1]> = next.iter().map(|t| [*t]).collect();
    let mut items: Vec<BatchItem<'_>> = caches
        .iter_mut()
        .zip(&tokens)
        .map(|(cache, tokens)| BatchItem { tokens, cache })
        .collect();
    let batched = rows(&decoder.forward_batch(&mut items).unwrap());
    for (i, (a, b)) in separate.iter().zip(&batched).enumerate() {
        let diff = max_diff(a, b);
        assert!(diff <= 1e-4, "sequence {i}: max |diff| {diff}");
    }
    for (cache, prompt) in caches.iter().zip(PROMPTS) {
        assert_eq!(cache.len(), prompt.len() + 1);
    }
}

#[test]
fn a_batch_of_decodes_equals_separate_forwards_from_safetensors() {
    let model = tiny(31);
    batch_of_decodes_matches_separate_forwards(&model.safetensors_dir());
}

#[test]
fn a_batch_of_decodes_equals_separate_forwards_from_quantized_gguf() {
    let model = tiny(32);
    batch_of_decodes_matches_separate_forwards(&model.write_gguf(WeightDtype::Q8_0).unwrap());
}

#[test]
fn prompts_of_different_lengths_prefill_together() {
    let model = tiny(33);
    let decoder = decoder(&model.safetensors_dir());
    let mut caches: Vec<KvCache> = PROMPTS.iter().map(|_| KvCache::new()).collect();
    let mut items: Vec<BatchItem<'_>> = caches
        .iter_mut()
        .zip(PROMPTS)
        .map(|(cache, tokens)| BatchItem { tokens, cache })
        .collect();
    let batched = rows(&decoder.forward_batch(&mut items).unwrap());
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let alone: Vec<f32> = decoder
            .forward(prompt, &mut KvCache::new())
            .unwrap()
            .to_vec1()
            .unwrap();
        let diff = max_diff(&alone, &batched[i]);
        assert!(diff <= 1e-4, "prompt {i}: max |diff| {diff}");
    }
}

#[test]
fn a_cloned_cache_resumes_like_the_original_and_errors_leave_caches_untouched() {
    let model = tiny(34);
    let decoder = decoder(&model.safetensors_dir());
    let mut cache = KvCache::new();
    decoder.forward(&[1, 2, 3], &mut cache).unwrap();
    let snapshot = cache.clone();
    let a: Vec<f32> = decoder
        .forward(&[4], &mut cache)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut resumed = snapshot.clone();
    let b: Vec<f32> = decoder
        .forward(&[4], &mut resumed)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        snapshot.len(),
        3,
        "extending a clone leaves the snapshot alone"
    );

    // An out-of-vocabulary token fails the whole batch; no cache moves.
    let mut other = snapshot.clone();
    let mut items = [
        BatchItem {
            tokens: &[5],
            cache: &mut resumed,
        },
        BatchItem {
            tokens: &[u32::MAX],
            cache: &mut other,
        },
    ];
    assert!(decoder.forward_batch(&mut items).is_err());
    assert_eq!((resumed.len(), other.len()), (4, 3));
    let c: Vec<f32> = decoder
        .forward(&[5], &mut resumed)
        .unwrap()
        .to_vec1()
        .unwrap();
    let d: Vec<f32> = decoder
        .forward(&[5], &mut cache)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(c, d);
    assert!(decoder.forward(&[], &mut KvCache::new()).is_err());
}

#[test]
fn a_longrope_sequence_crossing_its_original_context_in_a_batch_matches_it_alone() {
    // tiny-phi3's original context is 24 positions: the first item crosses it in this step
    // (and is run again with the long factors), the second does not.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-phi3");
    let decoder = decoder(&dir);
    let long: Vec<u32> = (1..=23).collect();
    let short: Vec<u32> = vec![9, 8, 7];
    let prefill = |prompt: &[u32]| {
        let mut cache = KvCache::new();
        decoder.forward(prompt, &mut cache).unwrap();
        cache
    };
    let alone: Vec<Vec<f32>> = [(&long, [40u32, 41]), (&short, [42, 43])]
        .iter()
        .map(|(prompt, next)| {
            let mut cache = prefill(prompt);
            decoder
                .forward(next, &mut cache)
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    let (mut a, mut b) = (prefill(&long), prefill(&short));
    let mut items = [
        BatchItem {
            tokens: &[40, 41],
            cache: &mut a,
        },
        BatchItem {
            tokens: &[42, 43],
            cache: &mut b,
        },
    ];
    let batched = rows(&decoder.forward_batch(&mut items).unwrap());
    for (i, (x, y)) in alone.iter().zip(&batched).enumerate() {
        let diff = max_diff(x, y);
        assert!(diff <= 1e-4, "item {i}: max |diff| {diff}");
    }
    assert_eq!((a.len(), b.len()), (25, 5));
    assert_eq!(&a.tokens()[23..], &[40, 41]);
}
