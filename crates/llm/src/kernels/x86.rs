//! AVX-512 VNNI kernels: tiles of weight rows × activation rows computed with integer dot
//! products (`vpdpbusd`, `vpmaddubsw` + `vpdpwssd`), each weight block unpacked once per tile;
//! for many activation rows, `panel`'s 16-row panels unpacked once per product; `quantize`,
//! the activations' quantization.
//!
//! Safety: every function here that uses the instructions is a `#[target_feature]` function;
//! the only way to call them is through [`Avx512`], which exists only once the CPU has been
//! checked to have every feature they enable. The other `unsafe` are unaligned loads from
//! slices whose length is checked by indexing first.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{acts::ActRow, format::WeightFormat};

mod attention;
mod interleaved;
mod panel;
mod quantize;
mod swiglu;

pub(crate) use interleaved::MAX_ACT_ROWS as INTERLEAVED_MAX_ACT_ROWS;

/// Proof that the CPU running us has AVX-512 F/BW/VL/DQ, VNNI, F16C and FMA.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    pub(crate) fn detect() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("fma");
        ok.then_some(Self(()))
    }

    /// Whether [`Avx512::tile`] takes blocks of `format` (the K-quants; Q8_0 and Q5_0 are
    /// [`Interleaved`](crate::kernels::interleaved::Interleaved) at load instead).
    pub(crate) const fn tiles(format: WeightFormat) -> bool {
        matches!(format, WeightFormat::Q4K | WeightFormat::Q6K)
    }

    /// Most weight rows one [`Avx512::tile`] call takes.
    pub(crate) const MAX_WEIGHT_ROWS: usize = 2;

    /// Most activation rows one [`Avx512::tile`] call takes: a K-quant block's unpacking
    /// (scales, 6-bit values) is costly, so it is shared by many rows.
    pub(crate) const MAX_ACT_ROWS: usize = 8;

    /// `out[r * stride + j] = dot(w[j], a[r])` for every weight row `j` (at most
    /// [`Avx512::MAX_WEIGHT_ROWS`]) and activation row `r` (at most [`Avx512::MAX_ACT_ROWS`])
    /// of a K-quant matrix ([`Avx512::tiles`]).
    pub(crate) fn tile(
        self,
        format: WeightFormat,
        w: &[&[u8]],
        a: &[ActRow<'_>],
        out: &mut [f32],
        stride: usize,
    ) {
        macro_rules! by_acts8 {
            ($f:ident, $n:literal) => {
                match a.len() {
                    1 => $f::<$n, 1>(self, w, a, out, stride),
                    2 => $f::<$n, 2>(self, w, a, out, stride),
                    3 => $f::<$n, 3>(self, w, a, out, stride),
                    4 => $f::<$n, 4>(self, w, a, out, stride),
                    5 => $f::<$n, 5>(self, w, a, out, stride),
                    6 => $f::<$n, 6>(self, w, a, out, stride),
                    7 => $f::<$n, 7>(self, w, a, out, stride),
                    8 => $f::<$n, 8>(self, w, a, out, stride),
                    n => panic!("{n} activation rows in one tile"),
                }
            };
        }
        match format {
            WeightFormat::Q4K => match w.len() {
                1 => by_acts8!(run_q4k, 1),
                2 => by_acts8!(run_q4k, 2),
                n => panic!("{n} weight rows in one tile"),
            },
            WeightFormat::Q6K => match w.len() {
                1 => by_acts8!(run_q6k, 1),
                2 => by_acts8!(run_q6k, 2),
                n => panic!("{n} weight rows in one tile"),
            },
            WeightFormat::Q8_0 | WeightFormat::Q5_0 => {
                panic!("{format:?} blocks are interleaved, not tiled")
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load128(bytes: &[u8]) -> __m128i {
    let bytes = &bytes[..16];
    // SAFETY: `bytes` holds 16 bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load256(bytes: &[u8]) -> __m256i {
    let bytes = &bytes[..32];
    // SAFETY: `bytes` holds 32 bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load512_i8(values: &[i8]) -> __m512i {
    let values = &values[..64];
    // SAFETY: `values` holds 64 bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(values.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_i16x8(values: &[i16]) -> __m128i {
    let values = &values[..8];
    // SAFETY: `values` holds 16 bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(values.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_i16x16(values: &[i16]) -> __m256i {
    let values = &values[..16];
    // SAFETY: `values` holds 32 bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load_i16x32(values: &[i16; 32]) -> __m512i {
    // SAFETY: `values` holds 64 bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(values.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "f16c")]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Asks for the cache line holding `at` ahead of its use. A hint: any address is allowed.
#[inline]
#[target_feature(enable = "sse")]
fn prefetch(at: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(at.cast())
}

/// [`prefetch`] of every cache line of the `len` bytes from `at`.
#[inline]
#[target_feature(enable = "sse")]
fn prefetch_lines(at: *const u8, len: usize) {
    for line in (0..len).step_by(64) {
        prefetch(at.wrapping_add(line));
    }
}

fn run_q4k<const W: usize, const R: usize>(
    _: Avx512,
    w: &[&[u8]],
    a: &[ActRow<'_>],
    out: &mut [f32],
    stride: usize,
) {
    let rows: [&[u8]; W] = std::array::from_fn(|j| w[j]);
    let acts: [ActRow<'_>; R] = std::array::from_fn(|r| a[r]);
    // SAFETY: an `Avx512` exists only where its features were detected.
    let sums = unsafe { tile_q4k::<W, R>(rows, acts) };
    write_tile(&sums, out, stride);
}

fn run_q6k<const W: usize, const R: usize>(
    _: Avx512,
    w: &[&[u8]],
    a: &[ActRow<'_>],
    out: &mut [f32],
    stride: usize,
) {
    let rows: [&[u8]; W] = std::array::from_fn(|j| w[j]);
    let acts: [ActRow<'_>; R] = std::array::from_fn(|r| a[r]);
    // SAFETY: an `Avx512` exists only where its features were detected.
    let sums = unsafe { tile_q6k::<W, R>(rows, acts) };
    write_tile(&sums, out, stride);
}

fn write_tile<const W: usize, const R: usize>(
    sums: &[[f32; W]; R],
    out: &mut [f32],
    stride: usize,
) {
    for (r, row) in sums.iter().enumerate() {
        out[r * stride..r * stride + W].copy_from_slice(row);
    }
}

/// Lane `i` of chunk `c` takes sub-block `2c + i / 16` (Q4_K: 32 values, 16 pair sums per
/// sub-block, two sub-blocks per 64-value chunk).
static Q4K_SCALE_LANES: [[i16; 32]; 4] = lanes::<16>();
/// Lane `i` of chunk `c` takes sub-block `4c + i / 8` (Q6_K: 16 values per sub-block).
static Q6K_SCALE_LANES: [[i16; 32]; 4] = lanes::<8>();

const fn lanes<const PER: usize>() -> [[i16; 32]; 4] {
    let mut out = [[0i16; 32]; 4];
    let per_chunk = 32 / PER;
    let mut c = 0;
    while c < 4 {
        let mut i = 0;
        while i < 32 {
            out[c][i] = (c * per_chunk + i / PER) as i16;
            i += 1;
        }
        c += 1;
    }
    out
}

/// Q4_K against Q8_K: per 64-value chunk, `vpmaddubsw` (4-bit × 8-bit pairs, exact in i16)
/// then `vpdpwssd` with the sub-block scales; the mins through the activations' 32-value sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
fn tile_q4k<const W: usize, const R: usize>(w: [&[u8]; W], a: [ActRow<'_>; R]) -> [[f32; W]; R] {
    let blocks = a[0].d.len();
    let mut acc = [[_mm512_setzero_ps(); W]; R];
    let low = _mm256_set1_epi8(0xF);
    // As in `tile32`: the same block of the rows one tile further on.
    let ahead = W * blocks * 144;
    for b in 0..blocks {
        for j in 0..W {
            prefetch_lines(w[j].as_ptr().wrapping_add(ahead + b * 144), 144);
            let block = &w[j][b * 144..(b + 1) * 144];
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let mut scales = [0i16; 8];
            let mut mins = [0i16; 8];
            for s in 0..8 {
                let (sc, m) = super::format::q4k_scale_min(s, &block[4..16]);
                scales[s] = i16::from(sc);
                mins[s] = i16::from(m);
            }
            let scales = _mm512_castsi128_si512(load_i16x8(&scales));
            let mins = load_i16x8(&mins);
            let mut qv = [_mm512_setzero_si512(); 4];
            let mut sv = [_mm512_setzero_si512(); 4];
            for c in 0..4 {
                let q = load256(&block[16 + 32 * c..]);
                let lo = _mm256_and_si256(q, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
                qv[c] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                sv[c] = _mm512_permutexvar_epi16(load_i16x32(&Q4K_SCALE_LANES[c]), scales);
            }
            for r in 0..R {
                let qs = &a[r].qs[256 * b..256 * (b + 1)];
                let mut isum = _mm512_setzero_si512();
                for c in 0..4 {
                    let pairs = _mm512_maddubs_epi16(qv[c], load512_i8(&qs[64 * c..]));
                    isum = _mm512_dpwssd_epi32(isum, pairs, sv[c]);
                }
                let msum = _mm_madd_epi16(mins, load_i16x8(&a[r].sums[8 * b..]));
                let da = a[r].d[b];
                acc[r][j] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * da), acc[r][j]);
                acc[r][j] = _mm512_fnmadd_ps(
                    _mm512_zextps128_ps512(_mm_cvtepi32_ps(msum)),
                    _mm512_set1_ps(dmin * da),
                    acc[r][j],
                );
            }
        }
    }
    let mut out = [[0f32; W]; R];
    for r in 0..R {
        for j in 0..W {
            out[r][j] = _mm512_reduce_add_ps(acc[r][j]);
        }
    }
    out
}

/// Q6_K against Q8_K: the 6-bit values (plus 32) rebuilt per 64-value chunk, `vpmaddubsw`
/// then `vpdpwssd` with the sub-block scales; the offset of 32 through the 16-value sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")]
fn tile_q6k<const W: usize, const R: usize>(w: [&[u8]; W], a: [ActRow<'_>; R]) -> [[f32; W]; R] {
    let blocks = a[0].d.len();
    let mut acc = [[_mm512_setzero_ps(); W]; R];
    let low = _mm256_set1_epi8(0xF);
    let bits = |v: i32| _mm256_set1_epi8(v as i8);
    // As in `tile32`: the same block of the rows one tile further on.
    let ahead = W * blocks * 210;
    for b in 0..blocks {
        for j in 0..W {
            prefetch_lines(w[j].as_ptr().wrapping_add(ahead + b * 210), 210);
            let block = &w[j][b * 210..(b + 1) * 210];
            let d = f16_at(block, 208);
            let scales = _mm256_cvtepi8_epi16(load128(&block[192..]));
            let scales512 = _mm512_castsi256_si512(scales);
            let mut qv = [_mm512_setzero_si512(); 4];
            let mut sv = [_mm512_setzero_si512(); 4];
            for half in 0..2 {
                let ql0 = load256(&block[64 * half..]);
                let ql1 = load256(&block[64 * half + 32..]);
                let qh = load256(&block[128 + 32 * half..]);
                let v0 = _mm256_or_si256(
                    _mm256_and_si256(ql0, low),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, bits(0x03))),
                );
                let v1 = _mm256_or_si256(
                    _mm256_and_si256(ql1, low),
                    _mm256_slli_epi16::<2>(_mm256_and_si256(qh, bits(0x0C))),
                );
                let v2 = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low),
                    _mm256_and_si256(qh, bits(0x30)),
                );
                let v3 = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), bits(0x30)),
                );
                qv[2 * half] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v0), v1);
                qv[2 * half + 1] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v2), v3);
            }
            for c in 0..4 {
                sv[c] = _mm512_permutexvar_epi16(load_i16x32(&Q6K_SCALE_LANES[c]), scales512);
            }
            for r in 0..R {
                let qs = &a[r].qs[256 * b..256 * (b + 1)];
                let mut isum = _mm512_setzero_si512();
                for c in 0..4 {
                    let pairs = _mm512_maddubs_epi16(qv[c], load512_i8(&qs[64 * c..]));
                    isum = _mm512_dpwssd_epi32(isum, pairs, sv[c]);
                }
                let offset = _mm256_madd_epi16(scales, load_i16x16(&a[r].sums[16 * b..]));
                let offset = _mm512_zextsi256_si512(_mm256_slli_epi32::<5>(offset));
                isum = _mm512_sub_epi32(isum, offset);
                acc[r][j] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(isum),
                    _mm512_set1_ps(d * a[r].d[b]),
                    acc[r][j],
                );
            }
        }
    }
    let mut out = [[0f32; W]; R];
    for r in 0..R {
        for j in 0..W {
            out[r][j] = _mm512_reduce_add_ps(acc[r][j]);
        }
    }
    out
}
