//! Vector arithmetic applied after pooling: L2 normalisation (as `torch.nn.functional.normalize`
//! computes it) and Matryoshka truncation; and the dot product the cache and the encoder share.

/// Smallest norm divided by, as in `torch.nn.functional.normalize`: a zero vector stays zero.
const NORM_EPSILON: f32 = 1e-12;

/// Scales `vector` to unit length.
pub fn l2_normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    let divisor = norm.max(NORM_EPSILON);
    for value in vector.iter_mut() {
        *value /= divisor;
    }
}

/// Keeps the first `dimensions` values, re-normalised when the full vector was a unit vector
/// (a prefix of a unit vector is shorter than one).
pub fn truncate(vector: &mut Vec<f32>, dimensions: usize, renormalize: bool) {
    if dimensions < vector.len() {
        vector.truncate(dimensions);
        if renormalize {
            l2_normalize(vector);
        }
    }
}

/// Euclidean length.
pub fn norm(vector: &[f32]) -> f32 {
    vector.iter().map(|v| v * v).sum::<f32>().sqrt()
}

/// Dot product with eight independent sums, so the compiler can keep them in SIMD lanes
/// (a single running float sum has to be added in order and cannot be vectorised). Compiled
/// also for AVX2 and AVX-512 and picked at run time; the sums are the same in every version.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut sums = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_unit_length_and_leaves_zero_alone() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0; 3];
        l2_normalize(&mut zero);
        assert_eq!(zero, vec![0.0; 3]);
    }

    #[test]
    fn truncation_renormalises_only_unit_vectors() {
        let mut unit = vec![0.6, 0.0, 0.8];
        truncate(&mut unit, 2, true);
        assert_eq!(unit, vec![1.0, 0.0]);
        let mut raw = vec![3.0, 4.0, 5.0];
        truncate(&mut raw, 2, false);
        assert_eq!(raw, vec![3.0, 4.0]);
        let mut same = vec![0.6, 0.8];
        truncate(&mut same, 2, true);
        assert_eq!(same, vec![0.6, 0.8]);
    }
}
