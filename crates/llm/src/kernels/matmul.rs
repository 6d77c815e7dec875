//! `x @ w.T` over GGUF blocks: the activations quantized once, the product cut into tiles and
//! spread over the current rayon pool.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::interleaved::Interleaved;
use super::{
    acts::{ActRow, QuantizedActs},
    format::{WeightFormat, dot_scalar},
};

/// Which implementation computes the tiles.
#[derive(Debug, Clone, Copy)]
pub enum Kernel {
    /// Portable integer dot products: the reference.
    Scalar,
    /// AVX-512 VNNI.
    #[cfg(target_arch = "x86_64")]
    Avx512(super::x86::Avx512),
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx512) = super::x86::Avx512::detect() {
            return Self::Avx512(avx512);
        }
        Self::Scalar
    }

    /// The AVX-512 tiles when they take `format`.
    #[cfg(target_arch = "x86_64")]
    fn avx512_tiles(self, format: WeightFormat) -> Option<super::x86::Avx512> {
        match self {
            Self::Avx512(avx512) if super::x86::Avx512::tiles(format) => Some(avx512),
            _ => None,
        }
    }

    fn max_weight_rows(self, format: WeightFormat) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.avx512_tiles(format).is_some() {
            return super::x86::Avx512::MAX_WEIGHT_ROWS;
        }
        let _ = format;
        4
    }

    fn max_act_rows(self, format: WeightFormat) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.avx512_tiles(format).is_some() {
            return super::x86::Avx512::MAX_ACT_ROWS;
        }
        let _ = format;
        4
    }

    /// `out[r * stride + j] = dot(w[j], a[r])`.
    fn tile(
        self,
        format: WeightFormat,
        w: &[&[u8]],
        a: &[ActRow<'_>],
        out: &mut [f32],
        stride: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx512) = self.avx512_tiles(format) {
            avx512.tile(format, w, a, out, stride);
            return;
        }
        for (r, act) in a.iter().enumerate() {
            for (j, row) in w.iter().enumerate() {
                out[r * stride + j] = dot_scalar(format, row, act);
            }
        }
    }
}

/// A `[n, k]` matrix of weight blocks, row after row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocks<'a> {
    pub format: WeightFormat,
    pub data: &'a [u8],
    pub n: usize,
    pub k: usize,
}

impl Blocks<'_> {
    fn row_bytes(&self) -> usize {
        self.k / self.format.block_len() * self.format.block_bytes()
    }
}

/// Activation rows per parallel task in a prefill-sized product: enough that each task reads
/// the weights once for many rows, few enough that their quantized values stay in L2.
const ROWS_PER_TASK: usize = 64;
/// Products with at least this many rows are split by rows, smaller ones by weight rows.
const SPLIT_BY_ROWS: usize = 16;
/// Weight rows per parallel task when splitting by weight rows.
const WEIGHT_ROWS_PER_TASK: usize = 64;
/// Activation rows from which a product unpacks its weights into panels shared by all its
/// rows (x86) rather than once per tile of a few rows: unpacking a panel costs about as much
/// as multiplying it with 5 (K-quants) or 6 (Q8_0, Q5_0) rows. Eight rows (eight sequences
/// decoding together) still take the prefetching tiles: on the Qwen2.5-0.5B Q4_K_M file their
/// aggregate decode was 72.8 tokens/s against 54.8 through panels.
#[cfg(target_arch = "x86_64")]
const PANEL_MIN_ROWS: usize = 9;
/// Activation rows per panel task: each task unpacks its weight rows once, so the more rows
/// the less unpacking; their quantized values are read again for each 16 weight rows.
#[cfg(target_arch = "x86_64")]
const PANEL_ROWS_PER_TASK: usize = 512;
/// Weight rows per panel task: two panels, enough tasks to balance the threads.
#[cfg(target_arch = "x86_64")]
const PANEL_COLS_PER_TASK: usize = 32;

/// `out = acts @ w.T`, `out` `[acts.rows(), w.n]`, for activations quantized for `w`'s format
/// ([`QuantizedActs::fits`], offsets set by [`QuantizedActs::offset_for`]).
pub(crate) fn matmul_quantized(
    kernel: Kernel,
    w: Blocks<'_>,
    acts: &QuantizedActs,
    out: &mut [f32],
) {
    let n = w.n;
    let m = acts.rows();
    debug_assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = kernel.avx512_tiles(w.format)
        && m >= PANEL_MIN_ROWS
    {
        panels(avx512, w, acts, out);
        return;
    }
    if m >= SPLIT_BY_ROWS {
        let threads = rayon::current_num_threads().max(1);
        let step = kernel.max_act_rows(w.format);
        let per_task = m
            .div_ceil(threads)
            .min(ROWS_PER_TASK)
            .next_multiple_of(step);
        out.par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(task, out)| {
                let rows = task * per_task..(task * per_task + per_task).min(m);
                product(kernel, w, acts, rows, 0..n, out, n);
            });
    } else if m == 1 {
        out.par_chunks_mut(WEIGHT_ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, out)| {
                let cols = task * WEIGHT_ROWS_PER_TASK..(task * WEIGHT_ROWS_PER_TASK + out.len());
                product(kernel, w, acts, 0..1, cols, out, out.len());
            });
    } else {
        // A few rows (batched decoding): each task computes its weight rows for every
        // activation row, copied into place afterwards.
        let parts: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(WEIGHT_ROWS_PER_TASK))
            .into_par_iter()
            .map(|task| {
                let start = task * WEIGHT_ROWS_PER_TASK;
                let cols = start..(start + WEIGHT_ROWS_PER_TASK).min(n);
                let mut part = vec![0f32; m * cols.len()];
                let stride = cols.len();
                product(kernel, w, acts, 0..m, cols, &mut part, stride);
                (start, part)
            })
            .collect();
        for (start, part) in parts {
            let width = part.len() / m;
            for (r, values) in part.chunks_exact(width).enumerate() {
                out[r * n + start..r * n + start + width].copy_from_slice(values);
            }
        }
    }
}

/// A part of a product for one parallel task: activation rows `rows` by weight rows `cols`,
/// with the strip of `cols` of each of its output rows.
struct Strip<'o> {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: Vec<&'o mut [f32]>,
}

/// `out` (`[m, n]`) cut into strips of up to `rows_per_task` rows by `cols_per_task` columns.
fn strips(
    out: &mut [f32],
    m: usize,
    n: usize,
    rows_per_task: usize,
    cols_per_task: usize,
) -> Vec<Strip<'_>> {
    let mut tasks = Vec::new();
    for (chunk, out) in out.chunks_mut(rows_per_task * n).enumerate() {
        let first = tasks.len();
        let rows = chunk * rows_per_task..(chunk * rows_per_task + rows_per_task).min(m);
        tasks.extend((0..n.div_ceil(cols_per_task)).map(|s| Strip {
            rows: rows.clone(),
            cols: s * cols_per_task..((s + 1) * cols_per_task).min(n),
            out: Vec::with_capacity(rows.len()),
        }));
        for row in out.chunks_mut(n) {
            for (s, strip) in row.chunks_mut(cols_per_task).enumerate() {
                tasks[first + s].out.push(strip);
            }
        }
    }
    tasks
}

/// The product in K-quant panels (x86): tasks of up to `PANEL_ROWS_PER_TASK` activation rows by
/// `PANEL_COLS_PER_TASK` weight rows, so that each weight row is unpacked once per
/// `PANEL_ROWS_PER_TASK` activation rows.
#[cfg(target_arch = "x86_64")]
fn panels(avx512: super::x86::Avx512, w: Blocks<'_>, acts: &QuantizedActs, out: &mut [f32]) {
    let (n, row_bytes) = (w.n, w.row_bytes());
    let weights: Vec<&[u8]> = w.data.chunks_exact(row_bytes).take(n).collect();
    let act_rows: Vec<ActRow<'_>> = (0..acts.rows()).map(|r| acts.row(r)).collect();
    let tasks = strips(
        out,
        acts.rows(),
        n,
        PANEL_ROWS_PER_TASK,
        PANEL_COLS_PER_TASK,
    );
    tasks.into_par_iter().for_each(|mut task| {
        avx512.panels(
            w.format,
            &weights[task.cols],
            &act_rows[task.rows],
            &mut task.out,
        );
    });
}

/// The product with [`Interleaved`] panels (x86): each task takes whole panels, against every
/// activation row for decoding, against up to `PANEL_ROWS_PER_TASK` rows for prompts (the
/// panels, read again for each 8 rows, stay in cache).
#[cfg(target_arch = "x86_64")]
pub(crate) fn interleaved(
    avx512: super::x86::Avx512,
    w: &Interleaved,
    acts: &QuantizedActs,
    out: &mut [f32],
) {
    use super::{interleaved::PANEL_ROWS, x86::INTERLEAVED_MAX_ACT_ROWS};
    let (m, n) = (acts.rows(), w.rows());
    let act_rows: Vec<ActRow<'_>> = (0..m).map(|r| acts.row(r)).collect();
    let cols_per_task = if m >= PANEL_MIN_ROWS {
        PANEL_COLS_PER_TASK
    } else {
        WEIGHT_ROWS_PER_TASK
    };
    let tasks = strips(out, m, n, PANEL_ROWS_PER_TASK, cols_per_task);
    tasks.into_par_iter().for_each(|mut task| {
        let mut sums = [[0f32; PANEL_ROWS]; INTERLEAVED_MAX_ACT_ROWS];
        for p in task.cols.start / PANEL_ROWS..task.cols.end.div_ceil(PANEL_ROWS) {
            let at = p * PANEL_ROWS - task.cols.start;
            let width = PANEL_ROWS.min(task.cols.end - p * PANEL_ROWS);
            for (acts, out) in act_rows[task.rows.clone()]
                .chunks(INTERLEAVED_MAX_ACT_ROWS)
                .zip(task.out.chunks_mut(INTERLEAVED_MAX_ACT_ROWS))
            {
                let sums = &mut sums[..acts.len()];
                avx512.interleaved(w, p, acts, sums);
                for (sums, out) in sums.iter().zip(out) {
                    out[at..at + width].copy_from_slice(&sums[..width]);
                }
            }
        }
    });
}

/// Products of activation rows `rows` with weight rows `cols`, into `out` whose row `r -
/// rows.start` starts at `(r - rows.start) * stride` and column `j - cols.start`.
fn product(
    kernel: Kernel,
    w: Blocks<'_>,
    acts: &QuantizedActs,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
    stride: usize,
) {
    let row_bytes = w.row_bytes();
    let (wt, at) = (
        kernel.max_weight_rows(w.format),
        kernel.max_act_rows(w.format),
    );
    let mut weights: Vec<&[u8]> = Vec::with_capacity(wt);
    let mut act_rows: Vec<ActRow<'_>> = Vec::with_capacity(at);
    for j0 in cols.clone().step_by(wt) {
        let j1 = (j0 + wt).min(cols.end);
        weights.clear();
        weights.extend((j0..j1).map(|j| &w.data[j * row_bytes..(j + 1) * row_bytes]));
        for r0 in rows.clone().step_by(at) {
            let r1 = (r0 + at).min(rows.end);
            act_rows.clear();
            act_rows.extend((r0..r1).map(|r| acts.row(r)));
            let at = (r0 - rows.start) * stride + (j0 - cols.start);
            kernel.tile(w.format, &weights, &act_rows, &mut out[at..], stride);
        }
    }
}
