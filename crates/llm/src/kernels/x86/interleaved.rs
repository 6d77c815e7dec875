//! Products of [`Interleaved`] panels with up to 8 activation rows: per block and row, eight
//! `vpdpbusd` of the panel's lines against four activation bytes broadcast each, started at
//! `-offset * sum(activations)` to cancel the weights' offset, then one multiply-add by the
//! 16 rows' scales converted at once. Every lane is one weight row, so no horizontal sum.

use std::arch::x86_64::*;

use half::f16;

use super::Avx512;
use crate::kernels::{
    acts::ActRow,
    format::WeightFormat,
    interleaved::{Interleaved, Line, PANEL_ROWS},
};

/// Most activation rows one [`Avx512::interleaved`] call takes: their accumulators and the
/// block's eight lines fill the 32 vector registers.
pub(crate) const MAX_ACT_ROWS: usize = 8;

impl Avx512 {
    /// `out[r][l] = dot(row 16p + l of w, a[r])` for panel `p` and every activation row `r`
    /// (at most [`MAX_ACT_ROWS`]); lanes past `w`'s last row hold zeros.
    pub(crate) fn interleaved(
        self,
        w: &Interleaved,
        p: usize,
        a: &[ActRow<'_>],
        out: &mut [[f32; PANEL_ROWS]],
    ) {
        let (values, scales) = w.panel(p);
        let q5 = w.format() == WeightFormat::Q5_0;
        macro_rules! by_rows {
            ($($r:literal)*) => {
                match (a.len(), q5) {
                    $(
                        ($r, false) => {
                            // SAFETY: an `Avx512` exists only where its features were detected.
                            unsafe { panel::<$r, false>(values, scales, a, out) };
                        }
                        ($r, true) => {
                            // SAFETY: as above.
                            unsafe { panel::<$r, true>(values, scales, a, out) };
                        }
                    )*
                    (r, _) => panic!("{r} activation rows against one panel"),
                }
            };
        }
        by_rows!(1 2 3 4 5 6 7 8);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
fn panel<const R: usize, const Q5: bool>(
    values: &[Line],
    scales: &[f16],
    a: &[ActRow<'_>],
    out: &mut [[f32; PANEL_ROWS]],
) {
    let a: [ActRow<'_>; R] = std::array::from_fn(|r| a[r]);
    let lines = if Q5 { 5 } else { 8 };
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, (block, d)) in values
        .chunks_exact(lines)
        .zip(scales.chunks_exact(PANEL_ROWS))
        .enumerate()
    {
        let w = if Q5 { unpack_q5(block) } else { load_q8(block) };
        // With one or two rows, two chains per row hide `vpdpbusd`'s latency.
        let mut dot = [[_mm512_setzero_si512(); 2]; R];
        for r in 0..R {
            dot[r][0] = _mm512_set1_epi32(a[r].offs[b]);
        }
        for (i, w) in w.iter().enumerate() {
            let chain = if R <= 2 { i % 2 } else { 0 };
            for r in 0..R {
                let quad = broadcast4(&a[r].qs[32 * b..32 * b + 32], 4 * i);
                dot[r][chain] = _mm512_dpbusd_epi32(dot[r][chain], *w, quad);
            }
        }
        let d = _mm512_cvtph_ps(load_f16x16(d));
        for r in 0..R {
            let sum = if R <= 2 {
                _mm512_add_epi32(dot[r][0], dot[r][1])
            } else {
                dot[r][0]
            };
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(a[r].d[b]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[r]);
        }
    }
    for (acc, out) in acc.iter().zip(out) {
        // SAFETY: `out` holds 16 f32, 64 bytes; the store is unaligned.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), *acc) }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_line(line: &Line) -> __m512i {
    // SAFETY: a `Line` is 64 bytes aligned to 64.
    unsafe { _mm512_load_si512(line.0.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_q8(block: &[Line]) -> [__m512i; 8] {
    std::array::from_fn(|i| load_line(&block[i]))
}

/// A Q5_0 block's 8 lines of unsigned values from its 4 nibble lines and its high-bit masks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn unpack_q5(block: &[Line]) -> [__m512i; 8] {
    let (low, fifth) = (_mm512_set1_epi8(0xF), _mm512_set1_epi8(0x10));
    let mut w = [_mm512_setzero_si512(); 8];
    for t in 0..4 {
        let v = load_line(&block[t]);
        w[t] = _mm512_and_si512(v, low);
        w[t + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
    }
    let masks = &block[4].0;
    for (i, w) in w.iter_mut().enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&masks[8 * i..8 * i + 8]);
        *w = _mm512_mask_add_epi8(*w, u64::from_le_bytes(bytes), *w, fifth);
    }
    w
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_f16x16(scales: &[f16]) -> __m256i {
    let scales = &scales[..PANEL_ROWS];
    // SAFETY: `scales` holds 16 f16, 32 bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(scales.as_ptr().cast()) }
}

/// Four activation bytes from `at`, as one i32 in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn broadcast4(qs: &[i8], at: usize) -> __m512i {
    let bytes = &qs[at..at + 4];
    _mm512_set1_epi32(i32::from_le_bytes([
        bytes[0] as u8,
        bytes[1] as u8,
        bytes[2] as u8,
        bytes[3] as u8,
    ]))
}
