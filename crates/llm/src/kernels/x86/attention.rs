//! One query head's attention over its key and value rows with AVX-512: the scores in one
//! pass over the keys, their exponentials 16 at a time, the values' weighted sum in one pass.

use std::arch::x86_64::*;

use super::Avx512;

/// Most 16-value chunks of a head the kernel keeps in registers (head size 256).
const MAX_CHUNKS: usize = 16;

impl Avx512 {
    /// Whether [`Avx512::attend`] takes heads of `d` values.
    pub(crate) fn attends(self, d: usize) -> bool {
        d.is_multiple_of(16) && d / 16 <= MAX_CHUNKS && d > 0
    }

    /// `out = softmax(scale * keys . q) values` for one query head `q` (`d` values, a size
    /// [`Avx512::attends`] takes) against `keys` and `values`, rows of `d` values.
    pub(crate) fn attend(
        self,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        out: &mut [f32],
    ) {
        let mut scores = vec![0f32; keys.len() / q.len()];
        let scores = &mut scores;
        // The head's chunks as a constant, so that its vectors stay in registers.
        macro_rules! by_chunks {
            ($($c:literal)*) => {
                match q.len() / 16 {
                    $(
                        // SAFETY: an `Avx512` exists only where its features were detected.
                        $c => unsafe { attend::<$c>(q, keys, values, scale, scores, out) },
                    )*
                    c => panic!("a head of {c} chunks of 16"),
                }
            };
        }
        by_chunks!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    }
}

#[target_feature(enable = "avx512f,avx512dq,fma")]
fn attend<const C: usize>(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = 16 * C;
    let qv: [__m512; C] = std::array::from_fn(|c| load(&q[16 * c..]));
    // Sixteen keys at a time, their sums reduced together into one vector of scores.
    let mut maxima = _mm512_set1_ps(f32::NEG_INFINITY);
    let whole = scores.len() / 16 * 16;
    for (scores, keys) in scores[..whole]
        .chunks_exact_mut(16)
        .zip(keys.chunks_exact(16 * d))
    {
        let mut acc = [_mm512_setzero_ps(); 16];
        for (acc, key) in acc.iter_mut().zip(keys.chunks_exact(d)) {
            for (c, qv) in qv.iter().enumerate() {
                *acc = _mm512_fmadd_ps(*qv, load(&key[16 * c..]), *acc);
            }
        }
        let sums = _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale));
        maxima = _mm512_max_ps(maxima, sums);
        // SAFETY: `scores` holds 16 f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(scores.as_mut_ptr(), sums) };
    }
    let mut max = _mm512_reduce_max_ps(maxima);
    for (score, key) in scores[whole..]
        .iter_mut()
        .zip(keys[whole * d..].chunks_exact(d))
    {
        let mut acc = _mm512_setzero_ps();
        for (c, qv) in qv.iter().enumerate() {
            acc = _mm512_fmadd_ps(*qv, load(&key[16 * c..]), acc);
        }
        *score = _mm512_reduce_add_ps(acc) * scale;
        max = max.max(*score);
    }
    let max = _mm512_set1_ps(max);
    let mut total = _mm512_setzero_ps();
    for scores in scores.chunks_mut(16) {
        let mask = (1u32 << scores.len()).wrapping_sub(1) as u16;
        // SAFETY: the mask covers the `scores.len()` (at most 16) values of the chunk.
        let x = unsafe { _mm512_maskz_loadu_ps(mask, scores.as_ptr()) };
        let e = _mm512_maskz_mov_ps(mask, exp(_mm512_sub_ps(x, max)));
        total = _mm512_add_ps(total, e);
        // SAFETY: as above.
        unsafe { _mm512_mask_storeu_ps(scores.as_mut_ptr(), mask, e) };
    }
    let total = _mm512_reduce_add_ps(total);
    // Two keys at a time into two sets of sums: twice the independent multiply-adds.
    let mut acc = [[_mm512_setzero_ps(); C]; 2];
    let pairs = scores.len() / 2 * 2;
    for (p, rows) in scores[..pairs]
        .chunks_exact(2)
        .zip(values.chunks_exact(2 * d))
    {
        for (k, acc) in acc.iter_mut().enumerate() {
            let weight = _mm512_set1_ps(p[k]);
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(weight, load(&rows[k * d + 16 * c..]), *acc);
            }
        }
    }
    for (&p, row) in scores[pairs..]
        .iter()
        .zip(values[pairs * d..].chunks_exact(d))
    {
        let weight = _mm512_set1_ps(p);
        for (c, acc) in acc[0].iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(weight, load(&row[16 * c..]), *acc);
        }
    }
    let acc: [__m512; C] = std::array::from_fn(|c| _mm512_add_ps(acc[0][c], acc[1][c]));
    let inverse = _mm512_set1_ps(1.0 / total);
    for (c, acc) in acc.iter().enumerate() {
        let out = &mut out[16 * c..16 * c + 16];
        // SAFETY: `out` holds 16 f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(*acc, inverse)) };
    }
}

/// Lane `i` of the result is the sum of the lanes of `v[i]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn sum16(v: [__m512; 16]) -> __m512 {
    // Pairs: per 128-bit lane, [a0 + a2, b0 + b2, a1 + a3, b1 + b3].
    let pairs: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    });
    // Quads: per 128-bit lane, each of four vectors' sum over that lane.
    let quads: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (
            _mm512_castps_pd(pairs[2 * i]),
            _mm512_castps_pd(pairs[2 * i + 1]),
        );
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    });
    // Then across the four 128-bit lanes: quad `g`'s lanes summed into lane `g`.
    let halves = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    };
    let (low, high) = (halves(quads[0], quads[1]), halves(quads[2], quads[3]));
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(low, high),
        _mm512_shuffle_f32x4::<0xDD>(low, high),
    )
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load(values: &[f32]) -> __m512 {
    let values = &values[..16];
    // SAFETY: `values` holds 16 f32; the load is unaligned.
    unsafe { _mm512_loadu_ps(values.as_ptr()) }
}

/// `e^x` to about one part in 10^7: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` from its
/// Taylor series to the 7th power, times `2^n`. Below -87 it is tiny rather than 0; above 88 it
/// is infinity.
#[inline]
#[target_feature(enable = "avx512f,fma")]
pub(super) fn exp(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // ln 2 in two parts, so that `n * LN2_HI` is exact.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_vectors_sum_into_the_lanes_of_one() {
        if Avx512::detect().is_none() {
            return;
        }
        let values: [[f32; 16]; 16] =
            std::array::from_fn(|i| std::array::from_fn(|j| (i * 100 + j) as f32));
        let mut out = [0f32; 16];
        // SAFETY: the features were detected above.
        unsafe {
            let v = values.map(|v| _mm512_loadu_ps(v.as_ptr()));
            _mm512_storeu_ps(out.as_mut_ptr(), sum16(v));
        }
        let expected: [f32; 16] = std::array::from_fn(|i| values[i].iter().sum());
        assert_eq!(out, expected);
    }
}
