//! The decoder on a GPU against the same decoder on the CPU: every fixture family and format
//! (F32 safetensors; F32, F16, Q8_0 and Q4_K_M GGUF) gives the CPU's logits step by step, and
//! the engine serves on `cuda:0`, batches included.
//!
//! Built only with `--features cuda` and run only on a machine with an NVIDIA GPU
//! (docs/cuda.md): CI never has one, and without a device these tests fail at the first step.
//! On the GPU the quantized matrices go through candle's CUDA kernels (the CPU kernels of
//! `passerelle_llm::kernels` refuse device tensors), which quantize activations to 8 bits
//! differently from the CPU kernels, so quantized logits are compared by direction, not value.

#![cfg(feature = "cuda")]

mod common;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use candle_core::{
    Device, Tensor,
    quantized::{GgmlDType, QMatMul, QTensor},
};
use common::{greedy, run, try_engine_on};
use passerelle_llm::{
    BatchConfig, DeviceChoice, ModelFiles,
    kernels::{QLinear, QuantMatrix},
    model::{self, Decoder, KvCache},
};

/// The fixtures of this crate: where `CARGO_MANIFEST_DIR` says at run time (cargo sets it; set
/// it by hand to run a test binary carried to another machine), else where it was built.
fn fixtures() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/fixtures")
}

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device (docs/cuda.md)")
}

fn decoder(path: &Path, device: &Device) -> Arc<Decoder> {
    let files = ModelFiles::resolve(path).unwrap();
    model::load(&files, device)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .model
        .decoder()
        .clone()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(f64::MIN_POSITIVE)
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Runs a 12-token prompt and then 8 steps on both devices, each step fed the CPU's greedy
/// token so that a near-tie cannot part the sequences, and checks every step's logits:
/// within `max_diff` of the CPU's relative to their largest magnitude, and with a cosine
/// similarity of at least `min_cosine`.
fn compare(path: &Path, max_diff: f32, min_cosine: f64) {
    let cpu = decoder(path, &Device::Cpu);
    let gpu = decoder(path, &gpu());
    assert!(gpu.device().is_cuda());
    let vocab = cpu.vocab_size() as u32;
    let mut input: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % vocab).collect();
    let (mut cpu_cache, mut gpu_cache) = (KvCache::new(), KvCache::new());
    for step in 0..9 {
        let logits = |decoder: &Decoder, cache: &mut KvCache| -> Vec<f32> {
            decoder.forward(&input, cache).unwrap().to_vec1().unwrap()
        };
        let want = logits(&cpu, &mut cpu_cache);
        let got = logits(&gpu, &mut gpu_cache);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let worst = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let similarity = cosine(&want, &got);
        assert!(
            worst <= max_diff * scale && similarity >= min_cosine,
            "{} step {step}: largest difference {worst} (logits up to {scale}), cosine {similarity}",
            path.display()
        );
        input = vec![argmax(&want)];
    }
}

#[test]
fn safetensors_models_of_every_family_match_the_cpu() {
    for family in ["tiny-qwen2", "tiny-qwen3", "tiny-phi3"] {
        compare(&fixtures().join(family), 1e-4, 0.999_999);
    }
}

#[test]
fn float_gguf_files_match_the_cpu() {
    for family in ["llama", "phi3", "qwen2", "qwen3"] {
        for format in ["f32", "f16"] {
            let path = fixtures().join(format!("gguf_parity/{family}-{format}.gguf"));
            compare(&path, 1e-3, 0.999_99);
        }
    }
}

#[test]
fn quantized_gguf_files_agree_with_the_cpu_kernels() {
    for family in ["llama", "phi3", "qwen2", "qwen3"] {
        for format in ["q8_0", "q4_k_m"] {
            let path = fixtures().join(format!("gguf_parity/{family}-{format}.gguf"));
            compare(&path, 0.25, 0.99);
        }
    }
}

#[test]
fn quantized_gpu_tensors_fall_back_to_candle() {
    let weights = Tensor::randn(0f32, 1.0, (64, 256), &Device::Cpu).unwrap();
    let on = |device: &Device| {
        Arc::new(QTensor::quantize(&weights.to_device(device).unwrap(), GgmlDType::Q8_0).unwrap())
    };
    assert!(QuantMatrix::new(on(&Device::Cpu)).is_some());
    assert!(QuantMatrix::new(on(&gpu())).is_none());
    let linear = QLinear::new(QMatMul::from_arc(on(&gpu())).unwrap());
    assert!(matches!(linear, QLinear::Candle(_)), "{linear:?}");
    let x = Tensor::randn(0f32, 1.0, (3, 256), &gpu()).unwrap();
    assert_eq!(linear.forward(&x).unwrap().dims(), [3, 64]);
}

#[tokio::test]
async fn the_engine_streams_the_cpus_greedy_tokens_on_the_gpu() {
    let path = fixtures().join("tiny-qwen2");
    let batch = BatchConfig::default();
    let cpu = try_engine_on(&path, DeviceChoice::Cpu, 8, batch.clone())
        .await
        .unwrap();
    let gpu = try_engine_on(&path, DeviceChoice::Cuda(0), 8, batch)
        .await
        .unwrap();
    let prompts = [
        "hello there",
        "the quick brown fox",
        "a",
        "one two three four five",
    ];
    let want: Vec<Vec<u32>> = {
        let mut out = Vec::new();
        for prompt in prompts {
            out.push(run(&cpu, greedy(prompt, 16)).await.tokens);
        }
        out
    };
    // All at once, so that the GPU runs them as one batch.
    let got = futures::future::join_all(prompts.map(|p| run(&gpu, greedy(p, 16)))).await;
    for ((prompt, want), got) in prompts.iter().zip(&want).zip(&got) {
        assert_eq!(&got.tokens, want, "{prompt:?}");
    }
}
