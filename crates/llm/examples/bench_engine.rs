//! Measures the engine the way llama.cpp's `llama-bench` measures llama.cpp, on any GGUF file:
//!
//! - `pp512`: prompt processing, a 512-token prompt of random ids (tokens/s of the prefill),
//!   like `llama-bench -p 512 -n 0`;
//! - `tg128@d512`: decoding 128 tokens after a 512-token context (tokens/s of the 128 steps,
//!   the prefill excluded), like `llama-bench -p 0 -n 128 -d 512`;
//! - with `--streams N`, aggregate decoding of N requests at once (each a prompt of the same
//!   length, then the same number of tokens): the tokens all N streams produced while every
//!   one of them was decoding, over that window (like `llama-batched-bench`'s `S_TG`);
//! - peak resident memory (`VmHWM` from `/proc/self/status`) at the end.
//!
//! `cargo run --release -p passerelle-llm --example bench_engine -- MODEL.gguf [--threads 2]
//! [--reps 3] [--prompt 512] [--gen 128] [--streams 8] [--device cuda] [--json]`
//!
//! `--device cuda` (or `cuda:N`) runs the model on a GPU, in a build with `--features cuda`.
//!
//! Unlike `llama-bench`, which times bare `llama_decode` calls, this goes through the engine's
//! public API (admission, greedy sampling over the full vocabulary, detokenization, the
//! stream), since that is what serving costs. One warm-up run precedes the timed ones, as in
//! `llama-bench`. `--json` prints one JSON object for scripts instead of the table.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use passerelle_llm::{
    BatchConfig, DeviceChoice, Engine, EngineConfig, EngineHandle, GenerationEvent,
    GenerationRequest, Prompt,
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

const MODEL_ID: &str = "bench";

struct Options {
    path: String,
    threads: usize,
    reps: usize,
    prompt: usize,
    generate: usize,
    streams: usize,
    device: DeviceChoice,
    json: bool,
}

fn parse_args() -> Result<Options, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        path: String::new(),
        threads: 2,
        reps: 3,
        prompt: 512,
        generate: 128,
        streams: 0,
        device: DeviceChoice::Cpu,
        json: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--threads" => options.threads = value()?.parse()?,
            "--reps" => options.reps = value()?.parse()?,
            "--prompt" => options.prompt = value()?.parse()?,
            "--gen" => options.generate = value()?.parse()?,
            "--streams" => options.streams = value()?.parse()?,
            "--device" => options.device = value()?.parse()?,
            "--json" => options.json = true,
            path if options.path.is_empty() && !path.starts_with("--") => {
                options.path = path.to_owned()
            }
            other => return Err(format!("unexpected argument {other}").into()),
        }
    }
    if options.path.is_empty() || options.reps == 0 {
        return Err(
            "usage: bench_engine MODEL.gguf [--threads N] [--reps N] [--prompt N] \
                    [--gen N] [--streams N] [--device cpu|cuda|cuda:N] [--json]"
                .into(),
        );
    }
    Ok(options)
}

/// Timings of one request: when the first token arrived and when the stream finished, both
/// from the moment it was sent, and how many tokens it produced.
struct Timing {
    first_token: Duration,
    finished: Duration,
    tokens: u32,
    /// When each token arrived, from the moment the request was sent.
    arrivals: Vec<Duration>,
}

async fn time_request(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> Result<Timing, Box<dyn std::error::Error>> {
    let mut request = GenerationRequest::new(MODEL_ID, Prompt::Tokens(prompt));
    request.sampling.temperature = Some(0.0);
    request.sampling.repetition_penalty = Some(1.0);
    request.stopping.max_tokens = Some(u32::try_from(max_tokens)?);
    request.stopping.ignore_eos = true;
    let started = Instant::now();
    let mut first_token = None;
    let mut arrivals = Vec::with_capacity(max_tokens);
    let mut stream = engine.generate(request)?;
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Started { .. } => {}
            GenerationEvent::Delta(delta) => {
                if !delta.token_ids.is_empty() {
                    let now = started.elapsed();
                    first_token.get_or_insert(now);
                    arrivals.extend(delta.token_ids.iter().map(|_| now));
                }
            }
            GenerationEvent::Finished(finished) => {
                let done = started.elapsed();
                return Ok(Timing {
                    first_token: first_token.unwrap_or(done),
                    finished: done,
                    tokens: finished.usage.completion_tokens,
                    arrivals,
                });
            }
        }
    }
    Err("the stream ended without Finished".into())
}

/// Tokens per second over the window in which every stream was decoding: from the last stream's
/// first token (all prompts prefilled) to the first stream's end.
fn steady_decode_rate(timings: &[Timing]) -> f64 {
    let start = timings
        .iter()
        .map(|t| t.first_token)
        .max()
        .unwrap_or_default();
    let end = timings.iter().map(|t| t.finished).min().unwrap_or_default();
    let produced = timings
        .iter()
        .flat_map(|t| &t.arrivals)
        .filter(|&&at| at > start && at <= end)
        .count();
    produced as f64 / (end.saturating_sub(start)).as_secs_f64().max(f64::EPSILON)
}

/// Mean and sample standard deviation, as `llama-bench` reports them.
fn mean_std(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 {
        samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Peak resident set size in bytes (`VmHWM`).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_args()?;
    let started = Instant::now();
    let engine = Engine::load(
        EngineConfig {
            model_path: options.path.clone().into(),
            model_id: MODEL_ID.into(),
            device: options.device,
            threads: Some(options.threads),
            queue_capacity: options.streams.max(1),
            batch: BatchConfig {
                max_running: options.streams.max(1),
                ..BatchConfig::default()
            },
        },
        &prometheus::Registry::new(),
    )
    .await?;
    let load = started.elapsed();
    let vocab = engine.ready().await?.vocab_size;

    // Random ids over the whole vocabulary, as llama-bench draws them; a fixed seed per run.
    let mut rng = StdRng::seed_from_u64(512);
    let mut prompt = || -> Vec<u32> {
        (0..options.prompt)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect()
    };

    // Warm-up, untimed: one short prefill and a few steps.
    time_request(&engine, prompt()[..16.min(options.prompt)].to_vec(), 4).await?;

    let mut pp = Vec::with_capacity(options.reps);
    let mut tg = Vec::with_capacity(options.reps);
    for _ in 0..options.reps {
        // Prefill alone: one generated token, whose sampling is all that is added.
        let t = time_request(&engine, prompt(), 1).await?;
        pp.push(options.prompt as f64 / t.first_token.as_secs_f64());
        // Decode: the first token comes out of the prefill; each one after it is a step.
        let t = time_request(&engine, prompt(), options.generate + 1).await?;
        let steps = f64::from(t.tokens.saturating_sub(1));
        tg.push(steps / (t.finished - t.first_token).as_secs_f64());
    }
    let mut aggregate = Vec::new();
    let aggregate_reps = if options.streams > 0 { options.reps } else { 0 };
    for _ in 0..aggregate_reps {
        let requests = (0..options.streams)
            .map(|_| time_request(&engine, prompt(), options.generate + 1))
            .collect::<Vec<_>>();
        let timings = futures::future::try_join_all(requests).await?;
        aggregate.push(steady_decode_rate(&timings));
    }
    let (pp_mean, pp_std) = mean_std(&pp);
    let (tg_mean, tg_std) = mean_std(&tg);
    let peak = peak_rss().unwrap_or(0);

    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "model": options.path,
                "threads": engine.threads(),
                "device": options.device.to_string(),
                "reps": options.reps,
                "load_s": load.as_secs_f64(),
                "pp": {"n_prompt": options.prompt, "tokens_per_s": pp_mean, "std": pp_std, "samples": pp},
                "tg": {"n_gen": options.generate, "depth": options.prompt, "tokens_per_s": tg_mean, "std": tg_std, "samples": tg},
                "streams": options.streams,
                "aggregate_tg": (!aggregate.is_empty()).then(|| {
                    let (mean, std) = mean_std(&aggregate);
                    serde_json::json!({"tokens_per_s": mean, "std": std, "samples": aggregate})
                }),
                "peak_rss_bytes": peak,
            })
        );
    } else {
        println!(
            "model {} on {} ({} threads), loaded in {load:.2?}, {} reps",
            options.path,
            options.device,
            engine.threads(),
            options.reps
        );
        println!("| test | tokens/s |\n| --- | ---: |");
        println!("| pp{} | {pp_mean:.2} ± {pp_std:.2} |", options.prompt);
        println!(
            "| tg{} @ d{} | {tg_mean:.2} ± {tg_std:.2} |",
            options.generate, options.prompt
        );
        if !aggregate.is_empty() {
            let (mean, std) = mean_std(&aggregate);
            println!(
                "| tg{} x {} streams @ d{} (aggregate) | {mean:.2} ± {std:.2} |",
                options.generate, options.streams, options.prompt
            );
        }
        println!("peak RSS {:.1} MiB", peak as f64 / (1024.0 * 1024.0));
    }
    Ok(())
}
