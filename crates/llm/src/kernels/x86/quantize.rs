//! Activation quantization with AVX-512: the same bytes, scales and sums as the scalar
//! [`crate::kernels::acts`] loop (rounding half away from zero, as `f32::round`), 16 values
//! at a time.

use std::arch::x86_64::*;

use super::Avx512;

impl Avx512 {
    /// Quantizes `x` in blocks of `block` values into `qs`, per block the scale `amax / 127`
    /// into `scales` (not rounded to f16), and per group of `group` values (a multiple of 16
    /// dividing `block`) the sum of its bytes into `sums`.
    pub(crate) fn quantize(
        self,
        x: &[f32],
        qs: &mut [i8],
        scales: &mut [f32],
        sums: &mut [i16],
        block: usize,
        group: usize,
    ) {
        // SAFETY: an `Avx512` exists only where its features were detected.
        unsafe { quantize(x, qs, scales, sums, block, group) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn quantize(
    x: &[f32],
    qs: &mut [i8],
    scales: &mut [f32],
    sums: &mut [i16],
    block: usize,
    group: usize,
) {
    let per_group = group / 16;
    for (b, (values, qs)) in x
        .chunks_exact(block)
        .zip(qs.chunks_exact_mut(block))
        .enumerate()
    {
        let mut amax = _mm512_setzero_ps();
        for v in values.chunks_exact(16) {
            amax = _mm512_max_ps(amax, _mm512_abs_ps(load_f32(v)));
        }
        let scale = _mm512_reduce_max_ps(amax) / 127.0;
        let id = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        scales[b] = scale;
        let mut sum = _mm512_setzero_si512();
        for (i, (v, q)) in values
            .chunks_exact(16)
            .zip(qs.chunks_exact_mut(16))
            .enumerate()
        {
            let scaled = _mm512_mul_ps(load_f32(v), id);
            // Half away from zero: the truncation, plus one away from zero where the
            // (exact) remainder is at least a half.
            let trunc = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(scaled);
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(
                _mm512_abs_ps(_mm512_sub_ps(scaled, trunc)),
                _mm512_set1_ps(0.5),
            );
            let one = _mm512_or_ps(
                _mm512_set1_ps(1.0),
                _mm512_and_ps(scaled, _mm512_set1_ps(-0.0)),
            );
            let rounded = _mm512_mask_add_ps(trunc, away, trunc, one);
            let ints = _mm512_cvttps_epi32(rounded);
            store_i8x16(q, _mm512_cvtsepi32_epi8(ints));
            // The saturated bytes, as the scalar loop sums them.
            let bytes = _mm512_cvtepi8_epi32(_mm512_cvtsepi32_epi8(ints));
            sum = _mm512_add_epi32(sum, bytes);
            if (i + 1) % per_group == 0 {
                // At most 32 * 127 in magnitude.
                sums[(b * block + 16 * i) / group] = _mm512_reduce_add_epi32(sum) as i16;
                sum = _mm512_setzero_si512();
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_f32(values: &[f32]) -> __m512 {
    let values = &values[..16];
    // SAFETY: `values` holds 64 bytes; the load is unaligned.
    unsafe { _mm512_loadu_ps(values.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store_i8x16(out: &mut [i8], v: __m128i) {
    let out = &mut out[..16];
    // SAFETY: `out` holds 16 bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), v) }
}
