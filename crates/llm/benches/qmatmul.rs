//! Candle's `QMatMul` against `passerelle_llm::kernels` on the matrix shapes of
//! Qwen2.5-0.5B-Instruct in llama.cpp's Q4_K_M mix, for one row (decoding) and 512 (a prompt).
//!
//! `CANDLE_NUM_THREADS=2 cargo bench -p passerelle-llm --bench qmatmul` (both run on 2 threads:
//! ours in a rayon pool of 2, candle's in its own pool sized by the variable).

use std::{sync::Arc, time::Duration};

use candle_core::{
    Device, Module, Tensor,
    quantized::{GgmlDType, QMatMul, QTensor},
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use passerelle_llm::kernels::QuantMatrix;

const THREADS: usize = 2;

/// `(name, rows, columns, type)` as in the Q4_K_M file: 896-wide rows fall back to Q5_0 and
/// Q8_0, the 4864-wide down projection alternates Q4_K and Q6_K.
const SHAPES: [(&str, usize, usize, GgmlDType); 7] = [
    ("q_o", 896, 896, GgmlDType::Q5_0),
    ("k_v", 128, 896, GgmlDType::Q5_0),
    ("v_q8", 128, 896, GgmlDType::Q8_0),
    ("gate_up", 4864, 896, GgmlDType::Q5_0),
    ("down_q4k", 896, 4864, GgmlDType::Q4K),
    ("down_q6k", 896, 4864, GgmlDType::Q6K),
    ("output", 151936, 896, GgmlDType::Q8_0),
];

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build()
        .unwrap();
    for (name, n, k, dtype) in SHAPES {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
        drop(w);
        let candle = QMatMul::from_arc(q.clone()).unwrap();
        let ours = QuantMatrix::new(q).unwrap();
        let mut group = c.benchmark_group(format!("{name}_{n}x{k}_{dtype:?}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        // The output projection runs on last rows only: no prompt-sized product.
        let rows: &[usize] = if n > 100_000 { &[1] } else { &[1, 512] };
        for &m in rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            group.throughput(Throughput::Elements((m * n * k) as u64));
            group.bench_with_input(BenchmarkId::new("candle", m), &x, |b, x| {
                b.iter(|| pool.install(|| candle.forward(x).unwrap()))
            });
            group.bench_with_input(BenchmarkId::new("kernels", m), &x, |b, x| {
                b.iter(|| pool.install(|| ours.forward(x).unwrap()))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
