//! Embeddings per second on CPU for batches of short sentences: one request of `batch` texts
//! at a time, timed over `rounds` requests after one untimed round.
//!
//! ```text
//! cargo run --release -p passerelle-embeddings --example throughput -- <model dir> [threads] [batch...]
//! ```
//!
//! Set `CANDLE_NUM_THREADS` to the same `threads` so candle's element-wise kernels are bounded
//! too. The texts are the 32 sentences of `short_sentences.txt` (8 to 14 tokens each, special
//! tokens included), repeated or cut to the batch size; `THROUGHPUT_DEVICE=cuda` runs the model on
//! a GPU (a build with `--features cuda`); `st_throughput.py` runs the same
//! measurement with sentence-transformers. Build with `--release` for figures worth recording.

use std::{path::PathBuf, time::Instant};

use passerelle_embeddings::{DeviceChoice, EmbedOptions, EmbeddingEngine, EngineConfig};

/// One short English sentence per line, shared with `st_throughput.py`.
const SENTENCES: &str = include_str!("short_sentences.txt");

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_path = PathBuf::from(
        args.next()
            .ok_or("usage: throughput <model dir> [threads] [batch...]")?,
    );
    let threads: usize = args.next().map_or(Ok(2), |t| t.parse())?;
    let mut batches: Vec<usize> = args.map(|b| b.parse()).collect::<Result<_, _>>()?;
    if batches.is_empty() {
        batches = vec![1, 32];
    }
    let engine = EmbeddingEngine::load(
        EngineConfig {
            model_path,
            model_id: "bench".to_owned(),
            device: std::env::var("THROUGHPUT_DEVICE")
                .map_or(Ok(DeviceChoice::Cpu), |d| d.parse())?,
            threads: Some(threads),
            queue_capacity: 4,
            max_batch: batches.iter().copied().max().unwrap_or(32),
            matryoshka: false,
        },
        &prometheus::Registry::new(),
    )
    .await?;
    for batch in batches {
        let texts: Vec<String> = SENTENCES
            .lines()
            .filter(|line| !line.trim().is_empty())
            .cycle()
            .take(batch)
            .map(str::to_owned)
            .collect();
        // Enough rounds for a couple of seconds of work at either size.
        let rounds = (256 / batch).max(8);
        engine.embed(texts.clone(), EmbedOptions::default()).await?;
        let started = Instant::now();
        for _ in 0..rounds {
            engine.embed(texts.clone(), EmbedOptions::default()).await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let embedded = (rounds * batch) as f64;
        println!(
            "threads={threads} batch={batch}: {:.1} embeddings/s ({:.2} ms per request, {rounds} requests)",
            embedded / elapsed,
            elapsed * 1000.0 / rounds as f64,
        );
    }
    Ok(())
}
