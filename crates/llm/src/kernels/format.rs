//! The GGUF block layouts the kernels read in place, and the scalar reference dot products.
//!
//! Every dot product is computed as llama.cpp does: an exact integer sum per weight block against
//! 8-bit activations ([`super::acts`]), scaled in f32. The SIMD kernels compute the same integer
//! sums, so they differ from these only in the order of the f32 additions.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::acts::ActRow;

/// A weight block type the kernels handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 32 values: f16 scale, 32 signed bytes.
    Q8_0,
    /// 32 values: f16 scale, 32 high bits, 16 bytes of low nibbles; value `q - 16`.
    Q5_0,
    /// 256 values: f16 scale and min scale, 8 sub-blocks of 32 with 6-bit scales and mins,
    /// 4-bit values.
    Q4K,
    /// 256 values: 16 sub-blocks of 16 with 8-bit scales, 6-bit values minus 32, f16 scale.
    Q6K,
}

impl WeightFormat {
    /// The format of a GGUF tensor type, if the kernels handle it.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Values per weight block, which is also the activations' block size.
    pub const fn block_len(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q5_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per weight block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 34,
            Self::Q5_0 => 22,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Activation values per partial sum kept by the quantized activations: the sub-block the
    /// weights' offsets and mins apply to.
    pub(crate) const fn sum_group(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q5_0 | Self::Q4K => 32,
            Self::Q6K => 16,
        }
    }
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K block's 12 scale bytes (llama.cpp's
/// `get_scale_min_k4`).
pub(crate) fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 32 values of a Q5_0 block, in `0..32` (the stored value plus 16).
pub(crate) fn q5_0_values(block: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let qs = &block[6..22];
    let mut out = [0u8; 32];
    for j in 0..16 {
        out[j] = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        out[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    out
}

/// The 256 values of a Q4_K block, in `0..16`.
pub(crate) fn q4k_values(block: &[u8]) -> [u8; 256] {
    let qs = &block[16..144];
    let mut out = [0u8; 256];
    for chunk in 0..4 {
        for l in 0..32 {
            let byte = qs[32 * chunk + l];
            out[64 * chunk + l] = byte & 0xF;
            out[64 * chunk + 32 + l] = byte >> 4;
        }
    }
    out
}

/// The 256 values of a Q6_K block, in `0..64` (the stored value plus 32).
pub(crate) fn q6k_values(block: &[u8]) -> [u8; 256] {
    let mut out = [0u8; 256];
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let y = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    out
}

fn idot(w: &[u8], a: &[i8]) -> i32 {
    w.iter()
        .zip(a)
        .map(|(&w, &a)| i32::from(w) * i32::from(a))
        .sum()
}

/// The dot product of one weight row (its blocks' bytes) with one quantized activation row:
/// the reference the SIMD kernels are tested against.
pub(crate) fn dot_scalar(format: WeightFormat, row: &[u8], act: &ActRow<'_>) -> f32 {
    let (len, bytes) = (format.block_len(), format.block_bytes());
    let mut total = 0f32;
    for (b, block) in row.chunks_exact(bytes).enumerate() {
        let a = &act.qs[b * len..(b + 1) * len];
        let da = act.d[b];
        match format {
            WeightFormat::Q8_0 => {
                let sum: i32 = block[2..34]
                    .iter()
                    .zip(a)
                    .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
                    .sum();
                total += f16_at(block, 0) * da * sum as f32;
            }
            WeightFormat::Q5_0 => {
                let sum = idot(&q5_0_values(block), a) - 16 * i32::from(act.sums[b]);
                total += f16_at(block, 0) * da * sum as f32;
            }
            WeightFormat::Q4K => {
                let values = q4k_values(block);
                let (mut isum, mut msum) = (0i32, 0i32);
                for s in 0..8 {
                    let (sc, m) = q4k_scale_min(s, &block[4..16]);
                    let range = 32 * s..32 * s + 32;
                    isum += i32::from(sc) * idot(&values[range.clone()], &a[range]);
                    msum += i32::from(m) * i32::from(act.sums[8 * b + s]);
                }
                total += da * (f16_at(block, 0) * isum as f32 - f16_at(block, 2) * msum as f32);
            }
            WeightFormat::Q6K => {
                let values = q6k_values(block);
                let mut isum = 0i32;
                for s in 0..16 {
                    let sc = i32::from(block[192 + s] as i8);
                    let range = 16 * s..16 * s + 16;
                    let dot = idot(&values[range.clone()], &a[range]);
                    isum += sc * (dot - 32 * i32::from(act.sums[16 * b + s]));
                }
                total += f16_at(block, 208) * da * isum as f32;
            }
        }
    }
    total
}

/// Dequantizes one weight row into `out` (the embedding lookup).
pub(crate) fn dequantize_row(format: WeightFormat, row: &[u8], out: &mut [f32]) {
    let (len, bytes) = (format.block_len(), format.block_bytes());
    for (block, y) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(len)) {
        match format {
            WeightFormat::Q8_0 => {
                let d = f16_at(block, 0);
                for (y, &q) in y.iter_mut().zip(&block[2..34]) {
                    *y = d * f32::from(q as i8);
                }
            }
            WeightFormat::Q5_0 => {
                let d = f16_at(block, 0);
                for (y, q) in y.iter_mut().zip(q5_0_values(block)) {
                    *y = d * (f32::from(q) - 16.0);
                }
            }
            WeightFormat::Q4K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let values = q4k_values(block);
                for (s, (y, q)) in y
                    .chunks_exact_mut(32)
                    .zip(values.chunks_exact(32))
                    .enumerate()
                {
                    let (sc, m) = q4k_scale_min(s, &block[4..16]);
                    let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
                    for (y, &q) in y.iter_mut().zip(q) {
                        *y = scale * f32::from(q) - min;
                    }
                }
            }
            WeightFormat::Q6K => {
                let d = f16_at(block, 208);
                let values = q6k_values(block);
                for (s, (y, q)) in y
                    .chunks_exact_mut(16)
                    .zip(values.chunks_exact(16))
                    .enumerate()
                {
                    let scale = d * f32::from(block[192 + s] as i8);
                    for (y, &q) in y.iter_mut().zip(q) {
                        *y = scale * (f32::from(q) - 32.0);
                    }
                }
            }
        }
    }
}
