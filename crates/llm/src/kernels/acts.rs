//! Activations quantized once per row to 8-bit blocks (llama.cpp's Q8_0 for 32-value weight
//! blocks, Q8_K for 256-value ones), with the partial sums the weights' offsets need.

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
    /// Per 32-value block, `-offset * sum` (Q8_0 and Q5_0 only): where the SIMD kernels start
    /// a block's integer sum so that the offset they add to the weights cancels out.
    offs: Vec<i32>,
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
        };
        for (b, (values, qs)) in x
            .chunks_exact(block)
            .zip(acts.qs.chunks_exact_mut(block))
            .enumerate()
        {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in qs.iter_mut().zip(values) {
                // `as` saturates; the product is within ±127 up to rounding.
                *q = (v * id).round() as i8;
            }
            // llama.cpp's Q8_0 block stores its scale as f16 (values were scaled by the f32
            // one); the product must use the same rounded scale to give llama.cpp's logits.
            // Q8_K keeps an f32 scale.
            acts.d[b] = if block == 32 {
                half::f16::from_f32(d).to_f32()
            } else {
                d
            };
            for (g, qs) in qs.chunks_exact(group).enumerate() {
                let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
                // At most 32 * 127 in magnitude.
                acts.sums[b * block / group + g] = sum as i16;
            }
        }
        let offset = match format {
            WeightFormat::Q8_0 => 128,
            WeightFormat::Q5_0 => 16,
            WeightFormat::Q4K | WeightFormat::Q6K => 0,
        };
        if offset != 0 {
            acts.offs = acts.sums.iter().map(|&s| -offset * i32::from(s)).collect();
        }
        acts
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
                &self.offs[r * blocks..(r + 1) * blocks]
            },
        }
    }
}
