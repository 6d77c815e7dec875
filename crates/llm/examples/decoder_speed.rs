//! Prompt and decoding speed of the decoder alone (no tokenizer, no engine queue), and the
//! process's peak memory: the figures issue 8 compares with llama.cpp's `llama-bench`.
//!
//! `CANDLE_NUM_THREADS=2 cargo run --release -p passerelle-llm --example decoder_speed -- \
//!     MODEL.gguf [PROMPT_TOKENS=512] [DECODE_TOKENS=64] [THREADS=2] [RUNS=3]`
//!
//! The prompt is random token ids (seeded); decoding is greedy from its last logits. Each run
//! starts from an empty cache; the best run is reported, as `llama-bench` reports its mean.

use std::{path::PathBuf, time::Instant};

use candle_core::Device;
use passerelle_llm::{ModelFiles, model};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        return Err(
            "usage: decoder_speed MODEL [PROMPT_TOKENS] [DECODE_TOKENS] [THREADS] [RUNS]".into(),
        );
    };
    let arg = |i: usize, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args.get(i).map_or(Ok(default), |s| s.parse())?)
    };
    let (prompt_len, decode_len, threads, runs) =
        (arg(1, 512)?, arg(2, 64)?, arg(3, 2)?, arg(4, 3)?);
    let pool = passerelle_model_runtime::compute::compute_pool("bench", threads)?;

    let started = Instant::now();
    let files = ModelFiles::resolve(&PathBuf::from(path))?;
    let model::LoadedModel { mut model, .. } =
        pool.install(|| model::load(&files, &Device::Cpu))?;
    eprintln!(
        "loaded in {:.2?}, peak {:.0} MiB",
        started.elapsed(),
        peak_rss_mib().unwrap_or(0.0)
    );
    let vocab = model.decoder().vocab_size() as u32;
    let mut rng = StdRng::seed_from_u64(0);
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|_| rng.random_range(0..vocab))
        .collect();

    let (mut best_prefill, mut best_decode) = (0f64, 0f64);
    for run in 0..runs {
        model.clear_kv_cache();
        let started = Instant::now();
        let mut logits = pool.install(|| model.forward(&prompt, 0))?;
        let prefill = prompt_len as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        for i in 0..decode_len {
            let token = argmax(&logits);
            logits = pool.install(|| model.forward(&[token], prompt_len + i))?;
        }
        let decode = decode_len as f64 / started.elapsed().as_secs_f64();
        eprintln!("run {run}: prompt {prefill:.1} tokens/s, decode {decode:.1} tokens/s");
        best_prefill = best_prefill.max(prefill);
        best_decode = best_decode.max(decode);
    }
    println!(
        "threads {threads}: prompt of {prompt_len}: {best_prefill:.1} tokens/s; decode of {decode_len} after it: {best_decode:.1} tokens/s; peak RSS {:.0} MiB",
        peak_rss_mib().unwrap_or(0.0)
    );
    Ok(())
}
