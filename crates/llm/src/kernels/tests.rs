//! The kernels against each other and against candle's dequantize-then-multiply.

use std::sync::Arc;

use candle_core::{
    Device, Tensor,
    quantized::{GgmlDType, QTensor},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{Kernel, QuantMatrix};

fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
    // Sums of uniforms: roughly normal, with the occasional large value.
    (0..len)
        .map(|_| (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>())
        .collect()
}

fn matrix(dtype: GgmlDType, n: usize, k: usize, rng: &mut StdRng) -> (Arc<QTensor>, Tensor) {
    let w = Tensor::from_vec(random(n * k, rng), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let dequantized = q.dequantize(&Device::Cpu).unwrap();
    (Arc::new(q), dequantized)
}

fn rms(values: &[f32]) -> f32 {
    (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Shapes with ragged tiles: weight rows not a multiple of the tile or of a 16-row panel,
/// activation row counts for each path (one row, a few rows in tiles or in panels, a prompt
/// split by rows) and every count of rows in a panel's last group (1 to 8).
fn check(dtype: GgmlDType, k: usize) {
    for n in [21, 40] {
        check_shape(dtype, n, k);
    }
}

fn check_shape(dtype: GgmlDType, n: usize, k: usize) {
    let mut rng = StdRng::seed_from_u64(7);
    let (q, dequantized) = matrix(dtype, n, k, &mut rng);
    let scalar = QuantMatrix::with_kernel(q.clone(), Kernel::Scalar).unwrap();
    let fast = QuantMatrix::new(q).unwrap();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") {
        assert!(matches!(fast.kernel, Kernel::Avx512(_)));
    }
    for m in [1, 3, 5, 8, 9, 10, 11, 12, 13, 15, 17, 70] {
        let x = Tensor::from_vec(random(m * k, &mut rng), (m, k), &Device::Cpu).unwrap();
        let reference: Vec<f32> = x
            .matmul(&dequantized.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours = |matrix: &QuantMatrix| -> Vec<f32> {
            let y = matrix.forward(&x).unwrap();
            assert_eq!(y.dims(), [m, n]);
            y.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (slow, quick) = (ours(&scalar), ours(&fast));
        let scale = rms(&reference);
        // The same integer sums, added in another order.
        assert!(
            max_diff(&slow, &quick) <= 1e-5 * scale,
            "{dtype:?} n={n} m={m}: scalar and {:?} differ by {}",
            fast.kernel,
            max_diff(&slow, &quick)
        );
        // 8-bit activations: each value is off by at most half a step (max |x| / 254 of its
        // block), which leaves well under 1% of a typical output; 5% bounds the largest.
        assert!(
            max_diff(&slow, &reference) <= 0.05 * scale,
            "{dtype:?} n={n} m={m}: off candle's by {} (rms {scale})",
            max_diff(&slow, &reference)
        );
    }
}

#[test]
fn q8_0_products_match_the_scalar_reference_and_candle() {
    check(GgmlDType::Q8_0, 96);
}

#[test]
fn q5_0_products_match_the_scalar_reference_and_candle() {
    check(GgmlDType::Q5_0, 96);
}

#[test]
fn q4k_products_match_the_scalar_reference_and_candle() {
    check(GgmlDType::Q4K, 512);
}

#[test]
fn q6k_products_match_the_scalar_reference_and_candle() {
    check(GgmlDType::Q6K, 512);
}

#[test]
fn embedding_rows_are_candles_dequantized_rows() {
    let mut rng = StdRng::seed_from_u64(3);
    for (dtype, k) in [
        (GgmlDType::Q8_0, 64),
        (GgmlDType::Q5_0, 64),
        (GgmlDType::Q4K, 256),
        (GgmlDType::Q6K, 256),
    ] {
        let (q, dequantized) = matrix(dtype, 9, k, &mut rng);
        let ids = [4u32, 0, 8, 4];
        let ours = QuantMatrix::new(q).unwrap().embedding(&ids).unwrap();
        let theirs = dequantized
            .index_select(&Tensor::new(&ids, &Device::Cpu).unwrap(), 0)
            .unwrap();
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-6, "{dtype:?}: {diff}");
    }
}

#[test]
fn out_of_range_rows_and_widths_are_errors() {
    let mut rng = StdRng::seed_from_u64(5);
    let (q, _) = matrix(GgmlDType::Q8_0, 4, 32, &mut rng);
    let matrix = QuantMatrix::new(q).unwrap();
    assert!(matrix.embedding(&[4]).is_err());
    let x = Tensor::zeros((2, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matrix.forward(&x).is_err());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_activation_quantization_gives_the_scalar_bytes_scales_and_sums() {
    let Some(avx512) = super::x86::Avx512::detect() else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(11);
    let mut x = random(4 * 256, &mut rng);
    // Ties (amax 127: the scale is 1), an all-zero block and a lone large value.
    for (i, v) in x[..32].iter_mut().enumerate() {
        *v = i as f32 - 15.5;
    }
    x[31] = 127.0;
    x[32..64].fill(0.0);
    x[300] = 1e6;
    for (block, group) in [(32, 32), (256, 32), (256, 16)] {
        let quantized = |simd: bool| {
            let mut qs = vec![0i8; x.len()];
            let mut d = vec![0f32; x.len() / block];
            let mut sums = vec![0i16; x.len() / group];
            if simd {
                avx512.quantize(&x, &mut qs, &mut d, &mut sums, block, group);
                if block == 32 {
                    d.iter_mut()
                        .for_each(|d| *d = half::f16::from_f32(*d).to_f32());
                }
            } else {
                super::acts::quantize_scalar(&x, &mut qs, &mut d, &mut sums, block, group);
            }
            (qs, d, sums)
        };
        assert_eq!(quantized(true), quantized(false), "blocks of {block}");
    }
}

#[test]
fn projections_sharing_their_input_give_their_own_products() {
    let mut rng = StdRng::seed_from_u64(13);
    let k = 256;
    // Q5_0 then Q8_0 reuse one quantization (other offsets), Q4_K and Q6_K (other sums)
    // quantize again, then Q5_0 comes after them.
    let linears: Vec<super::QLinear> = [
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q5_0,
    ]
    .into_iter()
    .map(|dtype| {
        let (q, _) = matrix(dtype, 24, k, &mut rng);
        super::QLinear::new(candle_core::quantized::QMatMul::from_arc(q).unwrap())
    })
    .collect();
    assert!(
        linears
            .iter()
            .all(|l| matches!(l, super::QLinear::Kernel(_)))
    );
    for m in [1, 12] {
        let x = Tensor::from_vec(random(m * k, &mut rng), (m, k), &Device::Cpu).unwrap();
        let refs: [&super::QLinear; 5] = std::array::from_fn(|i| &linears[i]);
        let shared = super::QLinear::forward_shared(refs, &x).unwrap();
        for (linear, y) in linears.iter().zip(shared) {
            let alone: Vec<f32> = linear
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(alone, y, "m={m}");
        }
    }
}

/// The largest absolute difference between two f32 tensors of the same shape.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
