//! Activations quantized once per row to 8-bit blocks (llama.cpp's Q8_0 for 32-value weight
//! blocks, Q8_K for 256-value ones), with the partial sums the weights' offsets need.

use rayon::prelude::*;

use super::format::WeightFormat;

/// Rows of activations quantized for one weight format: per block of `format.block_len()`
/// values a scale and signed bytes in `-127..=127`, and per sub-block of `format.sum_group()`
/// values the sum of its bytes.
#[derive(Debug)]
pub(crate) struct QuantizedActs {
    k: usize,
    block: usize,
    group: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<i16>,
    /// Per sum group, `-offset * sum` (Q8_0, Q5_0 and Q6_K): where the SIMD kernels start a
    /// group's integer sum so that the offset they add to the weights cancels out.
    offs: Vec<i32>,
    /// The weight offset `offs` was computed for.
    offset: i32,
}

/// One quantized activation row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i16],
    pub offs: &'a [i32],
}

impl QuantizedActs {
    /// Quantizes the `rows` rows of `x` (`rows * k` values, `k` a multiple of the block size).
    /// Prompt-sized inputs are quantized in parallel over the current rayon pool.
    pub(crate) fn new(format: WeightFormat, x: &[f32], k: usize) -> Self {
        let (block, group) = (format.block_len(), format.sum_group());
        debug_assert!(k.is_multiple_of(block) && x.len().is_multiple_of(k));
        let n = x.len();
        let mut acts = Self {
            k,
            block,
            group,
            qs: vec![0; n],
            d: vec![0.0; n / block],
            sums: vec![0; n / group],
            offs: Vec::new(),
            offset: 0,
        };
        if n / k >= PARALLEL_ROWS {
            let values = ROWS_PER_JOB * k;
            x.par_chunks(values)
                .zip(acts.qs.par_chunks_mut(values))
                .zip(acts.d.par_chunks_mut(values / block))
                .zip(acts.sums.par_chunks_mut(values / group))
                .for_each(|(((x, qs), d), sums)| quantize(x, qs, d, sums, block, group));
        } else {
            quantize(x, &mut acts.qs, &mut acts.d, &mut acts.sums, block, group);
        }
        acts.offset_for(format);
        acts
    }

    /// Whether these activations serve `format`'s weights as they are or after
    /// [`QuantizedActs::offset_for`]: same blocks, same partial sums.
    pub(crate) fn fits(&self, format: WeightFormat) -> bool {
        self.block == format.block_len() && self.group == format.sum_group()
    }

    /// Sets the per-group offsets for `format`'s weights (formats of the same block size
    /// differ only in those).
    pub(crate) fn offset_for(&mut self, format: WeightFormat) {
        let offset = match format {
            WeightFormat::Q8_0 => 128,
            WeightFormat::Q5_0 => 16,
            WeightFormat::Q6K => 32,
            WeightFormat::Q4K => 0,
        };
        if offset == self.offset && self.offs.len() == self.sums.len() {
            return;
        }
        self.offset = offset;
        self.offs.clear();
        if offset != 0 {
            self.offs
                .extend(self.sums.iter().map(|&s| -offset * i32::from(s)));
        }
    }

    /// Values per row.
    pub(crate) fn width(&self) -> usize {
        self.k
    }

    /// Rows of activations.
    pub(crate) fn rows(&self) -> usize {
        self.qs.len() / self.k
    }

    pub(crate) fn row(&self, r: usize) -> ActRow<'_> {
        let (k, blocks, groups) = (self.k, self.k / self.block, self.k / self.group);
        ActRow {
            qs: &self.qs[r * k..(r + 1) * k],
            d: &self.d[r * blocks..(r + 1) * blocks],
            sums: &self.sums[r * groups..(r + 1) * groups],
            offs: if self.offs.is_empty() {
                &[]
            } else {
                &self.offs[r * groups..(r + 1) * groups]
            },
        }
    }
}

/// Inputs with at least this many rows are quantized in parallel, in jobs of `ROWS_PER_JOB`.
const PARALLEL_ROWS: usize = 16;
const ROWS_PER_JOB: usize = 8;

/// Quantizes the blocks of `x` into `qs`, their scales `d` and group sums `sums`.
fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], sums: &mut [i16], block: usize, group: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = super::x86::Avx512::detect() {
        avx512.quantize(x, qs, d, sums, block, group);
        if block == 32 {
            for d in d.iter_mut() {
                *d = half::f16::from_f32(*d).to_f32();
            }
        }
        return;
    }
    quantize_scalar(x, qs, d, sums, block, group);
}

/// [`quantize`] without SIMD: the reference.
pub(crate) fn quantize_scalar(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    sums: &mut [i16],
    block: usize,
    group: usize,
) {
    for (b, (values, qs)) in x
        .chunks_exact(block)
        .zip(qs.chunks_exact_mut(block))
        .enumerate()
    {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let id = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, &v) in qs.iter_mut().zip(values) {
            // `as` saturates; the product is within ±127 up to rounding.
            *q = (v * id).round() as i8;
        }
        // llama.cpp's Q8_0 block stores its scale as f16 (values were scaled by the f32
        // one); the product must use the same rounded scale to give llama.cpp's logits.
        // Q8_K keeps an f32 scale.
        d[b] = if block == 32 {
            half::f16::from_f32(scale).to_f32()
        } else {
            scale
        };
        for (g, qs) in qs.chunks_exact(group).enumerate() {
            let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
            // At most 32 * 127 in magnitude.
            sums[b * block / group + g] = sum as i16;
        }
    }
}
