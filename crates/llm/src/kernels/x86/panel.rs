//! Panels of K-quant matrices, for products with several activation rows (prompts, batches):
//! 16 weight rows unpacked once into unsigned bytes interleaved by four, so that lane `j` of each 512-bit
//! vector holds four consecutive values of row `j`, with their scales spread the same way.
//! One `vpdpbusd` against four activation bytes broadcast then adds four products to each of
//! the 16 rows; sub-block scales are applied with exact integer products, block scales in f32,
//! into one vector of 16 results per activation row. The unpacking is shared by every
//! activation row of the product and there is no horizontal sum.

use std::arch::x86_64::*;

use super::{Avx512, load256};
use crate::kernels::{
    acts::ActRow,
    format::{WeightFormat, f16_at, q4k_scale_min},
};

/// Weight rows per panel: the 16 i32 lanes of a vector.
const LANES: usize = 16;
/// Activation rows computed together against a panel: enough independent `vpdpbusd` chains to
/// hide their latency, few enough that the accumulators stay in the 32 vector registers.
const ACT_ROWS: usize = 8;

/// 16 weight rows over the whole width, unpacked. Rows past the matrix's last are zeros.
#[derive(Default)]
struct Panel {
    /// Per four values (64 per block): lane `j`, row `j`'s bytes.
    values: Vec<__m512i>,
    /// Per sub-block (Q4_K: 8 per block, Q6_K: 16): lane `j`, row `j`'s scale.
    scales: Vec<__m512i>,
    /// Q4_K, per pair of sub-blocks (4 per block): lane `j`, row `j`'s two mins as i16.
    mins: Vec<__m512i>,
    /// Per block: lane `j`, row `j`'s block scale.
    d: Vec<__m512>,
    /// Q4_K, per block: lane `j`, row `j`'s scale of the mins.
    dmin: Vec<__m512>,
}

impl Avx512 {
    /// `out[r][j] = dot(w[j], a[r])` for every weight row `j` and activation row `r`, in
    /// panels of 16 weight rows each unpacked once.
    pub(crate) fn panels(
        self,
        format: WeightFormat,
        w: &[&[u8]],
        a: &[ActRow<'_>],
        out: &mut [&mut [f32]],
    ) {
        // SAFETY: an `Avx512` exists only where its features were detected.
        unsafe { panels(format, w, a, out) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
fn panels(format: WeightFormat, w: &[&[u8]], a: &[ActRow<'_>], out: &mut [&mut [f32]]) {
    let mut panel = Panel::default();
    for (p, rows) in w.chunks(LANES).enumerate() {
        panel.build(format, rows);
        let cols = p * LANES..p * LANES + rows.len();
        for (acts, out) in a.chunks(ACT_ROWS).zip(out.chunks_mut(ACT_ROWS)) {
            macro_rules! by_acts {
                ($($n:literal)*) => {
                    match acts.len() {
                        $($n => panel.multiply::<$n>(format, acts, out, cols.clone()),)*
                        n => unreachable!("{n} activation rows in one group"),
                    }
                };
            }
            by_acts!(1 2 3 4 5 6 7 8);
        }
    }
}

impl Panel {
    /// Unpacks `rows` (at most 16 weight rows, each all its blocks).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
    fn build(&mut self, format: WeightFormat, rows: &[&[u8]]) {
        self.values.clear();
        self.scales.clear();
        self.mins.clear();
        self.d.clear();
        self.dmin.clear();
        let (len, bytes) = (format.block_len(), format.block_bytes());
        let blocks = rows[0].len() / bytes;
        let mut chunk = [_mm512_setzero_si512(); LANES];
        match format {
            WeightFormat::Q8_0 | WeightFormat::Q5_0 => {
                panic!("{format:?} blocks are interleaved at load, not unpacked per product")
            }
            WeightFormat::Q4K => {
                for b in 0..blocks {
                    let (mut d, mut dmin) = ([0f32; LANES], [0f32; LANES]);
                    let mut scales = [[0i32; LANES]; 8];
                    let mut mins = [[0i32; LANES]; 4];
                    for (j, row) in rows.iter().enumerate() {
                        let block = &row[b * bytes..(b + 1) * bytes];
                        (d[j], dmin[j]) = (f16_at(block, 0), f16_at(block, 2));
                        for s in 0..8 {
                            let (scale, min) = q4k_scale_min(s, &block[4..16]);
                            scales[s][j] = i32::from(scale);
                            mins[s / 2][j] |= i32::from(min) << (16 * (s % 2));
                        }
                    }
                    self.d.push(load_f32(&d));
                    self.dmin.push(load_f32(&dmin));
                    for scales in &scales {
                        self.scales.push(load_i32(scales));
                    }
                    for mins in &mins {
                        self.mins.push(load_i32(mins));
                    }
                    for c in 0..4 {
                        for (j, row) in rows.iter().enumerate() {
                            chunk[j] = q4k_chunk(&row[b * bytes..(b + 1) * bytes], c);
                        }
                        self.values.extend_from_slice(&transpose(chunk));
                    }
                }
            }
            WeightFormat::Q6K => {
                for b in 0..blocks {
                    let mut d = [0f32; LANES];
                    let mut scales = [[0i32; LANES]; 16];
                    for (j, row) in rows.iter().enumerate() {
                        let block = &row[b * bytes..(b + 1) * bytes];
                        d[j] = f16_at(block, 208);
                        for (s, scale) in scales.iter_mut().enumerate() {
                            scale[j] = i32::from(block[192 + s] as i8);
                        }
                    }
                    self.d.push(load_f32(&d));
                    for scales in &scales {
                        self.scales.push(load_i32(scales));
                    }
                    for c in 0..4 {
                        for (j, row) in rows.iter().enumerate() {
                            chunk[j] = q6k_chunk(&row[b * bytes..(b + 1) * bytes], c);
                        }
                        self.values.extend_from_slice(&transpose(chunk));
                    }
                }
            }
        }
        debug_assert_eq!(self.values.len(), blocks * len / 4);
    }

    /// The products of this panel with `R` activation rows into columns `cols` of `out`'s
    /// rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
    fn multiply<const R: usize>(
        &self,
        format: WeightFormat,
        a: &[ActRow<'_>],
        out: &mut [&mut [f32]],
        cols: std::ops::Range<usize>,
    ) {
        let a = &a[..R];
        let acc = match format {
            WeightFormat::Q8_0 | WeightFormat::Q5_0 => {
                panic!("{format:?} blocks are interleaved at load, not unpacked per product")
            }
            WeightFormat::Q4K => self.q4k::<R>(a),
            WeightFormat::Q6K => self.q6k::<R>(a),
        };
        let mut row = [0f32; LANES];
        for (acc, out) in acc.iter().zip(out) {
            store_f32(&mut row, *acc);
            out[cols.clone()].copy_from_slice(&row[..cols.len()]);
        }
    }

    /// Q4_K against Q8_K: per 32-value sub-block an integer sum times its scale; the mins
    /// through the activations' 32-value sums.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
    fn q4k<const R: usize>(&self, a: &[ActRow<'_>]) -> [__m512; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, values) in self.values.chunks_exact(64).enumerate() {
            let mut qs: [&[i8]; R] = [&[]; R];
            for r in 0..R {
                qs[r] = &a[r].qs[256 * b..256 * b + 256];
            }
            let mut isum = [_mm512_setzero_si512(); R];
            for (s, values) in values.chunks_exact(8).enumerate() {
                let mut dot = [_mm512_setzero_si512(); R];
                for (q, w) in values.iter().enumerate() {
                    for r in 0..R {
                        dot[r] = _mm512_dpbusd_epi32(dot[r], *w, broadcast4(qs[r], 32 * s + 4 * q));
                    }
                }
                let scale = self.scales[8 * b + s];
                for r in 0..R {
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(dot[r], scale));
                }
            }
            let (d, dmin) = (self.d[b], self.dmin[b]);
            for r in 0..R {
                let sums = &a[r].sums[8 * b..8 * b + 8];
                let mut msum = _mm512_setzero_si512();
                for h in 0..4 {
                    let pair = broadcast_pair(&sums[2 * h..2 * h + 2]);
                    msum = _mm512_dpwssd_epi32(msum, self.mins[4 * b + h], pair);
                }
                let da = _mm512_set1_ps(a[r].d[b]);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(d, da), acc[r]);
                acc[r] =
                    _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmin, da), acc[r]);
            }
        }
        acc
    }

    /// Q6_K against Q8_K: per 16-value sub-block an integer sum started at `-32 *
    /// sum(activations)` (the values are stored plus 32), times its scale.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
    fn q6k<const R: usize>(&self, a: &[ActRow<'_>]) -> [__m512; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, values) in self.values.chunks_exact(64).enumerate() {
            let (mut qs, mut offs): ([&[i8]; R], [&[i32]; R]) = ([&[]; R], [&[]; R]);
            for r in 0..R {
                qs[r] = &a[r].qs[256 * b..256 * b + 256];
                offs[r] = &a[r].offs[16 * b..16 * b + 16];
            }
            let mut isum = [_mm512_setzero_si512(); R];
            for (s, values) in values.chunks_exact(4).enumerate() {
                let mut dot = [_mm512_setzero_si512(); R];
                for r in 0..R {
                    dot[r] = _mm512_set1_epi32(offs[r][s]);
                }
                for (q, w) in values.iter().enumerate() {
                    for r in 0..R {
                        dot[r] = _mm512_dpbusd_epi32(dot[r], *w, broadcast4(qs[r], 16 * s + 4 * q));
                    }
                }
                let scale = self.scales[16 * b + s];
                for r in 0..R {
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(dot[r], scale));
                }
            }
            let d = self.d[b];
            for r in 0..R {
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(a[r].d[b]));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), scale, acc[r]);
            }
        }
        acc
    }
}

/// Values `64c..64c + 64` of a Q4_K block, in `0..16`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q4k_chunk(block: &[u8], c: usize) -> __m512i {
    let low = _mm256_set1_epi8(0xF);
    let q = load256(&block[16 + 32 * c..]);
    let lo = _mm256_and_si256(q, low);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Values `64c..64c + 64` of a Q6_K block, in `0..64` (the stored value plus 32).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn q6k_chunk(block: &[u8], c: usize) -> __m512i {
    let (half, second) = (c / 2, c % 2 == 1);
    let low = _mm256_set1_epi8(0xF);
    let bits = |v: i32| _mm256_set1_epi8(v as i8);
    let ql0 = load256(&block[64 * half..]);
    let ql1 = load256(&block[64 * half + 32..]);
    let qh = load256(&block[128 + 32 * half..]);
    let (v0, v1) = if second {
        (
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low),
                _mm256_and_si256(qh, bits(0x30)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), bits(0x30)),
            ),
        )
    } else {
        (
            _mm256_or_si256(
                _mm256_and_si256(ql0, low),
                _mm256_slli_epi16::<4>(_mm256_and_si256(qh, bits(0x03))),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, low),
                _mm256_slli_epi16::<2>(_mm256_and_si256(qh, bits(0x0C))),
            ),
        )
    };
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v0), v1)
}

/// The 16 x 16 transpose of 32-bit elements: lane `j` of output `i` is lane `i` of input `j`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose(r: [__m512i; 16]) -> [__m512i; 16] {
    // Within 128-bit lanes: 4 x 4 transposes of each group of four rows.
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // v[4g + e]: 128-bit lane `l` holds element `4l + e` of rows `4g..4g + 4`.
    let mut v = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        v[4 * g] = _mm512_unpacklo_epi64(a, c);
        v[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
        v[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
        v[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
    }
    // Then the 4 x 4 transpose of 128-bit lanes across the four row groups.
    let mut out = [_mm512_setzero_si512(); 16];
    for e in 0..4 {
        let x0 = _mm512_shuffle_i32x4::<0x44>(v[e], v[4 + e]);
        let x1 = _mm512_shuffle_i32x4::<0xEE>(v[e], v[4 + e]);
        let x2 = _mm512_shuffle_i32x4::<0x44>(v[8 + e], v[12 + e]);
        let x3 = _mm512_shuffle_i32x4::<0xEE>(v[8 + e], v[12 + e]);
        out[e] = _mm512_shuffle_i32x4::<0x88>(x0, x2);
        out[4 + e] = _mm512_shuffle_i32x4::<0xDD>(x0, x2);
        out[8 + e] = _mm512_shuffle_i32x4::<0x88>(x1, x3);
        out[12 + e] = _mm512_shuffle_i32x4::<0xDD>(x1, x3);
    }
    out
}

/// Four activation bytes from `at`, as one i32 in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn broadcast4(qs: &[i8], at: usize) -> __m512i {
    let bytes = &qs[at..at + 4];
    // SAFETY: `bytes` holds 4 bytes; the read is unaligned.
    _mm512_set1_epi32(unsafe { bytes.as_ptr().cast::<i32>().read_unaligned() })
}

/// Two i16 as one i32 (the first in the low half) in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn broadcast_pair(pair: &[i16]) -> __m512i {
    let lo = u16::from_ne_bytes(pair[0].to_ne_bytes());
    let hi = u16::from_ne_bytes(pair[1].to_ne_bytes());
    _mm512_set1_epi32((u32::from(lo) | (u32::from(hi) << 16)) as i32)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_i32(values: &[i32; LANES]) -> __m512i {
    // SAFETY: `values` holds 64 bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(values.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_f32(values: &[f32; LANES]) -> __m512 {
    // SAFETY: `values` holds 64 bytes; the load is unaligned.
    unsafe { _mm512_loadu_ps(values.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store_f32(out: &mut [f32; LANES], v: __m512) {
    // SAFETY: `out` holds 64 bytes; the store is unaligned.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) }
}
