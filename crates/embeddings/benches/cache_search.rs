//! Latency of one semantic-cache index search at 100,000 entries of 384-dimensional random
//! unit vectors in one namespace (the HNSW path), with the recall it buys.
//!
//! `cargo bench -p passerelle-embeddings --bench cache_search` (release profile). Set
//! `CACHE_BENCH_ENTRIES` to try another size, `CACHE_BENCH_EF=16,32,64` to compare `ef_search`
//! values on the one index. Prints build time, p50 / p99 / max of the search
//! alone, and recall@1 against an exact scan, for random queries and for queries near a stored
//! vector (a paraphrase, which is what a cache hit looks like).

use std::time::{Duration, Instant};

use passerelle_embeddings::{
    cache::index::{EF_SEARCH, IndexTuning, VectorIndex, dot},
    vector::l2_normalize,
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

const DIMENSION: usize = 384;
const QUERIES: usize = 2_000;
const RECALL_QUERIES: usize = 200;

fn random_unit(rng: &mut StdRng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIMENSION)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    l2_normalize(&mut v);
    v
}

/// `base` moved by noise to a cosine similarity of about 0.95 with it.
fn near(rng: &mut StdRng, base: &[f32]) -> Vec<f32> {
    let noise = random_unit(rng);
    let mut v: Vec<f32> = base.iter().zip(&noise).map(|(b, n)| b + 0.33 * n).collect();
    l2_normalize(&mut v);
    v
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

fn exact(vectors: &[Vec<f32>], query: &[f32]) -> u64 {
    (0..vectors.len())
        .max_by(|a, b| dot(query, &vectors[*a]).total_cmp(&dot(query, &vectors[*b])))
        .unwrap() as u64
}

fn main() {
    let entries: usize = std::env::var("CACHE_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut rng = StdRng::seed_from_u64(42);
    let vectors: Vec<Vec<f32>> = (0..entries).map(|_| random_unit(&mut rng)).collect();

    let started = Instant::now();
    let mut index = VectorIndex::new(DIMENSION, IndexTuning::default());
    index
        .extend(
            vectors
                .iter()
                .enumerate()
                .map(|(id, v)| (id as u64, v.as_slice())),
        )
        .unwrap();
    let build = started.elapsed();
    assert!(index.uses_graph());

    let started = Instant::now();
    let extra = random_unit(&mut rng);
    index.insert(entries as u64, &extra).unwrap();
    let one_insert = started.elapsed();

    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|i| {
            if i % 2 == 0 {
                random_unit(&mut rng)
            } else {
                let target = rng.random_range(0..entries);
                near(&mut rng, &vectors[target])
            }
        })
        .collect();
    let recall_queries: Vec<(Vec<f32>, u64, Vec<f32>, u64)> = (0..RECALL_QUERIES)
        .map(|_| {
            let random = random_unit(&mut rng);
            let target = rng.random_range(0..entries);
            let close = near(&mut rng, &vectors[target]);
            let (truth_random, truth_close) = (exact(&vectors, &random), exact(&vectors, &close));
            (random, truth_random, close, truth_close)
        })
        .collect();
    let mut scan = Vec::new();
    for (query, ..) in recall_queries.iter().take(50) {
        let started = Instant::now();
        std::hint::black_box(exact(&vectors, query));
        scan.push(started.elapsed());
    }
    scan.sort();

    println!(
        "entries: {entries} x {DIMENSION}-d, threads: {}",
        rayon_threads()
    );
    println!("build (parallel insert): {build:.2?}; one incremental insert: {one_insert:.2?}");
    println!(
        "exact scan for comparison: p50 {:.1?}",
        percentile(&scan, 0.50)
    );
    let sweep: Vec<usize> = std::env::var("CACHE_BENCH_EF")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|ef| ef.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![EF_SEARCH]);
    for ef in sweep {
        index.set_ef_search(ef);
        for query in queries.iter().take(100) {
            std::hint::black_box(index.nearest(query));
        }
        let mut latencies: Vec<Duration> = queries
            .iter()
            .map(|query| {
                let started = Instant::now();
                std::hint::black_box(index.nearest(query));
                started.elapsed()
            })
            .collect();
        latencies.sort();
        let (mut random_hits, mut near_hits) = (0, 0);
        for (random, truth_random, close, truth_close) in &recall_queries {
            random_hits += usize::from(index.nearest(random).map(|n| n.id) == Some(*truth_random));
            near_hits += usize::from(index.nearest(close).map(|n| n.id) == Some(*truth_close));
        }
        println!(
            "ef_search {ef}: search ({QUERIES} queries, half random, half near a stored vector) p50 {:.2?}  p99 {:.2?}  max {:.2?}; \
             recall@1 vs exact scan: random queries {random_hits}/{RECALL_QUERIES}, near queries {near_hits}/{RECALL_QUERIES}",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
        );
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
