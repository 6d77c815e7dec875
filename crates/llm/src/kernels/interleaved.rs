//! Q8_0 and Q5_0 matrices re-laid out once, at load, for the x86 kernels: 16 weight rows
//! (a panel) interleaved by four values, so that lane `l` of each 64-byte line holds four
//! consecutive values of row `l` as unsigned bytes. One `vpdpbusd` of a line against four
//! activation bytes broadcast then adds four products to each of the 16 rows, with no
//! horizontal sum and no unpacking per product (Q8_0) or only a nibble split (Q5_0). The
//! layout takes exactly the bytes of the GGUF blocks it replaces.
//!
//! A panel's values, block after block:
//! - Q8_0, per block, 8 lines: line `i` holds values `4i..4i + 4` of each row, plus 128.
//! - Q5_0, per block, 5 lines: lines `t` in `0..4` hold in their low nibbles what a Q8_0 line
//!   `t` holds (the values' low four bits) and in their high nibbles line `t + 4`'s; line 4
//!   holds eight 64-bit masks, mask `i` with bit `4l + e` the fifth bit of row `l`'s value
//!   `4i + e`. Values are the stored ones, `0..32` (the signed value plus 16).
//!
//! The scales are kept apart: per panel and block, the 16 rows' f16 scales.
//! Rows past the matrix's last (its last panel's) are zeros.

use half::f16;

use super::format::{WeightFormat, q5_0_values};

/// Rows per panel: the 16 i32 lanes of a 512-bit vector.
pub(crate) const PANEL_ROWS: usize = 16;

/// One 64-byte line, aligned so that each vector load reads one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u8; 64]);

/// A Q8_0 or Q5_0 `[n, k]` matrix in panels.
pub(crate) struct Interleaved {
    format: WeightFormat,
    n: usize,
    k: usize,
    lines: Vec<Line>,
    scales: Vec<f16>,
}

impl std::fmt::Debug for Interleaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interleaved")
            .field("format", &self.format)
            .field("shape", &(self.n, self.k))
            .finish()
    }
}

/// Lines of values per 32-value block.
const fn value_lines(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q5_0 => 5,
        _ => 8,
    }
}

impl Interleaved {
    /// Whether a matrix of `format` can be laid out in panels.
    pub(crate) fn takes(format: WeightFormat) -> bool {
        matches!(format, WeightFormat::Q8_0 | WeightFormat::Q5_0)
    }

    /// Lays out the `n` rows of GGUF blocks in `data` (Q8_0 or Q5_0, `k` values per row).
    pub(crate) fn new(format: WeightFormat, data: &[u8], n: usize, k: usize) -> Self {
        debug_assert!(Self::takes(format) && k.is_multiple_of(32));
        let blocks = k / 32;
        let row_bytes = blocks * format.block_bytes();
        let panel_lines = blocks * value_lines(format);
        let panels = n.div_ceil(PANEL_ROWS);
        let mut lines = vec![Line([0; 64]); panels * panel_lines];
        let mut scales = vec![f16::ZERO; panels * blocks * PANEL_ROWS];
        for (p, (values, scales)) in lines
            .chunks_exact_mut(panel_lines)
            .zip(scales.chunks_exact_mut(blocks * PANEL_ROWS))
            .enumerate()
        {
            for l in 0..PANEL_ROWS.min(n - p * PANEL_ROWS) {
                let j = p * PANEL_ROWS + l;
                let row = &data[j * row_bytes..(j + 1) * row_bytes];
                for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
                    scales[PANEL_ROWS * b + l] = f16::from_le_bytes([block[0], block[1]]);
                    let values = &mut values[b * value_lines(format)..];
                    match format {
                        WeightFormat::Q5_0 => put_q5(values, l, &q5_0_values(block)),
                        _ => {
                            for (i, quad) in block[2..34].chunks_exact(4).enumerate() {
                                for (e, &q) in quad.iter().enumerate() {
                                    values[i].0[4 * l + e] = q ^ 0x80;
                                }
                            }
                        }
                    }
                }
            }
        }
        Self {
            format,
            n,
            k,
            lines,
            scales,
        }
    }

    pub(crate) fn format(&self) -> WeightFormat {
        self.format
    }

    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    pub(crate) fn blocks(&self) -> usize {
        self.k / 32
    }

    #[cfg(test)]
    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL_ROWS)
    }

    /// Panel `p`: its value lines, and per block its 16 rows' scales.
    pub(crate) fn panel(&self, p: usize) -> (&[Line], &[f16]) {
        let blocks = self.blocks();
        let size = blocks * value_lines(self.format);
        (
            &self.lines[p * size..(p + 1) * size],
            &self.scales[p * blocks * PANEL_ROWS..(p + 1) * blocks * PANEL_ROWS],
        )
    }

    /// Row `j` dequantized into `out` (`k` values): the embedding lookup.
    pub(crate) fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let (values, scales) = self.panel(j / PANEL_ROWS);
        let l = j % PANEL_ROWS;
        for (b, y) in out.chunks_exact_mut(32).enumerate() {
            let d = scales[PANEL_ROWS * b + l].to_f32();
            let lines = &values[b * value_lines(self.format)..];
            for (i, y) in y.chunks_exact_mut(4).enumerate() {
                for (e, y) in y.iter_mut().enumerate() {
                    let q = match self.format {
                        WeightFormat::Q5_0 => f32::from(q5_at(lines, l, 4 * i + e)) - 16.0,
                        _ => f32::from(lines[i].0[4 * l + e]) - 128.0,
                    };
                    *y = d * q;
                }
            }
        }
    }
}

/// Writes row `l`'s 32 Q5_0 values (in `0..32`) into a block's 5 lines.
fn put_q5(lines: &mut [Line], l: usize, values: &[u8; 32]) {
    for (v, &q) in values.iter().enumerate() {
        let (i, e) = (v / 4, v % 4);
        let (t, shift) = (i % 4, 4 * (i / 4));
        lines[t].0[4 * l + e] |= (q & 0xF) << shift;
        let bit = 4 * l + e;
        lines[4].0[8 * i + bit / 8] |= ((q >> 4) & 1) << (bit % 8);
    }
}

/// Value `v` of row `l` from a Q5_0 block's 5 lines, in `0..32`.
fn q5_at(lines: &[Line], l: usize, v: usize) -> u8 {
    let (i, e) = (v / 4, v % 4);
    let (t, shift) = (i % 4, 4 * (i / 4));
    let low = (lines[t].0[4 * l + e] >> shift) & 0xF;
    let bit = 4 * l + e;
    let high = (lines[4].0[8 * i + bit / 8] >> (bit % 8)) & 1;
    low | (high << 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::format::dequantize_row;

    fn random_blocks(format: WeightFormat, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        let mut data = vec![0u8; n * k / 32 * format.block_bytes()];
        for block in data.chunks_exact_mut(format.block_bytes()) {
            for byte in block.iter_mut() {
                *byte = next();
            }
            // A finite, modest scale.
            block[..2]
                .copy_from_slice(&f16::from_f32(0.01 + f32::from(next()) / 1000.0).to_le_bytes());
        }
        data
    }

    #[test]
    fn every_row_reads_back_as_its_gguf_blocks() {
        for format in [WeightFormat::Q8_0, WeightFormat::Q5_0] {
            let (n, k) = (21, 128);
            let data = random_blocks(format, n, k, 5);
            let interleaved = Interleaved::new(format, &data, n, k);
            assert_eq!(interleaved.panels(), 2);
            // The layout takes the bytes of the blocks, plus the padding rows of the last panel.
            let bytes = interleaved.lines.len() * 64 + interleaved.scales.len() * 2;
            assert_eq!(bytes * n, data.len() * 32, "{format:?}");
            let row_bytes = k / 32 * format.block_bytes();
            for j in 0..n {
                let (mut ours, mut theirs) = (vec![0f32; k], vec![0f32; k]);
                interleaved.dequantize_row(j, &mut ours);
                dequantize_row(
                    format,
                    &data[j * row_bytes..(j + 1) * row_bytes],
                    &mut theirs,
                );
                assert_eq!(ours, theirs, "{format:?} row {j}");
            }
        }
    }
}
