//! The element-wise and attention steps of the packed BERT forward, on plain slices.
//!
//! Each is written so the compiler can vectorise its inner loop (no calls into libm there, no
//! early exits), and each works on whole rows so that rayon can split a batch by rows.

use crate::vector::dot;

/// `erf` in single precision as a rational function of `x` (odd numerator, even denominator),
/// the approximation of Eigen and XLA: within 7e-8 of the exact value in exact arithmetic, 5e-7
/// (a few units in the last place) once rounded to single precision; and built of
/// multiplies, adds and one division, so a loop of it vectorises (libm's `erff` does not).
/// Plain `*` and `+` rather than `mul_add`, which without FMA in the target is a libm call.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    // Beyond ±4 erf is ±1 to single precision.
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_6e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329_2e-3;
    q = x2 * q - 1.426_473_9e-2;
    x * p / q
}

/// `rows[i] = act(rows[i] + bias)` for every row of `bias.len()` values.
pub fn bias_activation(rows: &mut [f32], bias: &[f32], act: Activation) {
    for row in rows.chunks_exact_mut(bias.len()) {
        match act {
            Activation::GeluErf => {
                for (x, b) in row.iter_mut().zip(bias) {
                    let v = *x + b;
                    *x = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
                }
            }
            Activation::GeluTanh => {
                // The tanh form; tanh is left to libm, this activation is rare in checkpoints.
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                for (x, b) in row.iter_mut().zip(bias) {
                    let v = *x + b;
                    let inner = SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v);
                    *x = 0.5 * v * (1.0 + inner.tanh());
                }
            }
            Activation::Relu => {
                for (x, b) in row.iter_mut().zip(bias) {
                    *x = (*x + b).max(0.0);
                }
            }
        }
    }
}

/// The hidden activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * Φ(x)` with the exact normal CDF (BERT's `gelu`).
    GeluErf,
    /// The tanh approximation (`gelu_new`, `gelu_approximate`).
    GeluTanh,
    Relu,
}

/// A layer norm's scale, shift and epsilon.
#[derive(Debug, Clone)]
pub struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    /// Normalises every row of `rows` in place.
    pub fn apply(&self, rows: &mut [f32]) {
        let width = self.weight.len();
        for row in rows.chunks_exact_mut(width) {
            let mean = sum(row) / width as f32;
            for x in row.iter_mut() {
                *x -= mean;
            }
            let variance = dot(row, row) / width as f32;
            let scale = 1.0 / (variance + self.eps).sqrt();
            for ((x, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *x = *x * scale * w + b;
            }
        }
    }

    /// `hidden = norm(hidden + projected + bias)`, row by row: a residual block's end.
    pub fn residual(&self, hidden: &mut [f32], projected: &[f32], bias: &[f32]) {
        for (h, (p, b)) in hidden
            .iter_mut()
            .zip(projected.iter().zip(bias.iter().cycle()))
        {
            *h += p + b;
        }
        self.apply(hidden);
    }
}

/// Sum with eight independent accumulators, so it vectorises.
fn sum(values: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (s, v) in sums.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// Where the sentences of a packed batch lie: sentence `s` holds rows
/// `starts[s]..starts[s + 1]`.
#[derive(Debug, Clone)]
pub struct Packing {
    pub starts: Vec<usize>,
    /// For every row, the sentence it belongs to.
    pub sentence_of: Vec<usize>,
}

impl Packing {
    pub fn new(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut starts = vec![0];
        let mut sentence_of = Vec::new();
        for (sentence, length) in lengths.into_iter().enumerate() {
            let start = *starts.last().unwrap_or(&0);
            starts.push(start + length);
            sentence_of.extend(std::iter::repeat_n(sentence, length));
        }
        Self {
            starts,
            sentence_of,
        }
    }

    /// Rows in all sentences together.
    pub fn rows(&self) -> usize {
        self.sentence_of.len()
    }

    /// The rows of the sentence row `row` belongs to.
    pub fn span_of(&self, row: usize) -> std::ops::Range<usize> {
        let sentence = self.sentence_of[row];
        self.starts[sentence]..self.starts[sentence + 1]
    }
}

/// Multi-head self-attention of one query row against the keys and values of its own sentence.
///
/// `qkv` holds, per row, the query, key and value projections (bias included) side by side,
/// `3 * hidden` values; `context` (`hidden` values) receives the attention output of row `row`,
/// heads side by side. `scores` is scratch space of at least the sentence's length.
pub fn attend_row(
    qkv: &[f32],
    row: usize,
    span: std::ops::Range<usize>,
    heads: usize,
    context: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hidden = context.len();
    let head_dim = hidden / heads;
    let stride = 3 * hidden;
    let scale = 1.0 / (head_dim as f32).sqrt();
    context.fill(0.0);
    for head in 0..heads {
        let at = head * head_dim;
        let query = &qkv[row * stride + at..row * stride + at + head_dim];
        scores.clear();
        scores.extend(span.clone().map(|key_row| {
            let key = &qkv[key_row * stride + hidden + at..][..head_dim];
            dot(query, key) * scale
        }));
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let out = &mut context[at..at + head_dim];
        for (weight, value_row) in scores.iter().zip(span.clone()) {
            let value = &qkv[value_row * stride + 2 * hidden + at..][..head_dim];
            let weight = weight / total;
            for (o, v) in out.iter_mut().zip(value) {
                *o += weight * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_within_5e_7_of_the_exact_function() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f64 * 1e-4;
            let exact = candle_core::cpu::erf::erf_f64(x);
            worst = worst.max((f64::from(erf(x as f32)) - exact).abs());
        }
        assert!(worst < 5e-7, "largest error {worst:e}");
        assert!((erf(f32::INFINITY) - 1.0).abs() < 2e-7);
        assert!((erf(-1e30) + 1.0).abs() < 2e-7);
    }

    #[test]
    fn layer_norm_centres_and_scales_each_row() {
        let norm = Norm {
            weight: vec![1.0, 2.0],
            bias: vec![0.0, 1.0],
            eps: 0.0,
        };
        let mut rows = vec![1.0, 3.0, 5.0, 5.0];
        norm.apply(&mut rows);
        assert_eq!(rows[..2], [-1.0, 3.0]);
        // A constant row has no variance: it normalises to the bias (eps keeps it finite).
        let norm = Norm { eps: 1e-12, ..norm };
        let mut constant = vec![5.0, 5.0];
        norm.apply(&mut constant);
        assert_eq!(constant, [0.0, 1.0]);
    }

    #[test]
    fn attention_stays_inside_each_sentence() {
        // Two sentences of one and two rows, hidden 2, one head; a single-row sentence attends
        // only to itself, so its context is its own value.
        let packing = Packing::new([1, 2]);
        assert_eq!(packing.rows(), 3);
        assert_eq!(packing.span_of(2), 1..3);
        #[rustfmt::skip]
        let qkv = [
            // q       k         v
            1.0, 0.0,  1.0, 0.0,  7.0, 8.0,
            1.0, 0.0,  1.0, 0.0,  1.0, 0.0,
            1.0, 0.0,  1.0, 0.0,  3.0, 2.0,
        ];
        let mut context = [0.0; 2];
        let mut scores = Vec::new();
        attend_row(&qkv, 0, packing.span_of(0), 1, &mut context, &mut scores);
        assert_eq!(context, [7.0, 8.0]);
        // Equal scores: the mean of the sentence's two values.
        attend_row(&qkv, 1, packing.span_of(1), 1, &mut context, &mut scores);
        assert_eq!(context, [2.0, 1.0]);
    }
}
