//! CPU kernels for quantized matrix products, faster than candle's for the block types
//! llama.cpp's quantizers produce for small models (Q8_0, Q5_0, Q4_K, Q6_K).
//!
//! K-quant weights stay as GGUF blocks in candle's `QTensor` (read in place through
//! `QTensor::data`); on x86, Q8_0 and Q5_0 weights are re-laid out once at load into
//! [`interleaved`] panels of 16 rows, which the products read without unpacking. Activations
//! are quantized once per product to 8-bit blocks, as llama.cpp does, and multiplied with
//! integer dot products: K-quants in tiles of several weight rows by several activation rows,
//! so that each weight block is unpacked once per tile, and with many activation rows
//! (prompts) in 16-row panels unpacked once and shared by all of them. The product is split over the current rayon pool (the engine's), by activation rows
//! and weight rows for prompts and by weight rows for decoding. Projections of the same input
//! share one quantization of it ([`QLinear::forward_shared`]).
//!
//! - [`format`]: the block layouts and the scalar reference dot products.
//! - `acts`: activation quantization; `matmul`: tiling and threads.
//! - [`x86`]: the AVX-512 VNNI tiles and panels, and the activations' quantization (the only
//!   `unsafe`: loads, stores and the feature-gated calls).
//!
//! [`QLinear`] is what the decoder holds: one of these matrices where the block type is
//! handled, candle's [`QMatMul`] otherwise (float weights, other quantizations).

mod acts;
pub(crate) mod attention;
pub mod format;
#[cfg(target_arch = "x86_64")]
mod interleaved;
mod matmul;
pub(crate) mod swiglu;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use std::sync::Arc;

use candle_core::{
    CpuStorage, DType, Layout, Module, Shape, Storage, Tensor,
    quantized::{QMatMul, QTensor},
};

pub use format::WeightFormat;
pub use matmul::Kernel;

use acts::QuantizedActs;
use matmul::Blocks;

/// A `[n, k]` matrix of a [`WeightFormat`], for `x @ w.T` and row lookups.
#[derive(Clone)]
pub struct QuantMatrix {
    weights: Weights,
    format: WeightFormat,
    kernel: Kernel,
    n: usize,
    k: usize,
}

/// Where a [`QuantMatrix`]'s blocks are.
#[derive(Clone)]
enum Weights {
    /// GGUF blocks, read in place.
    Blocks(Arc<QTensor>),
    /// Q8_0 or Q5_0 laid out for the AVX-512 kernels.
    #[cfg(target_arch = "x86_64")]
    Interleaved(x86::Avx512, Arc<interleaved::Interleaved>),
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("format", &self.format)
            .field("kernel", &self.kernel)
            .field("shape", &(self.n, self.k))
            .finish()
    }
}

impl QuantMatrix {
    /// The matrix over `tensor`'s blocks with the fastest kernel of this CPU; `None` unless
    /// `tensor` is a 2-D CPU tensor of a handled block type.
    pub fn new(tensor: Arc<QTensor>) -> Option<Self> {
        Self::with_kernel(tensor, Kernel::detect())
    }

    /// As [`QuantMatrix::new`] with a chosen kernel (tests compare them). With AVX-512, Q8_0
    /// and Q5_0 blocks are copied into [`interleaved`] panels, and `tensor` is not kept.
    pub fn with_kernel(tensor: Arc<QTensor>, kernel: Kernel) -> Option<Self> {
        let format = WeightFormat::from_ggml(tensor.dtype())?;
        let (n, k) = tensor.shape().dims2().ok()?;
        if !tensor.device().is_cpu() || !k.is_multiple_of(format.block_len()) {
            return None;
        }
        let weights = match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(avx512) if interleaved::Interleaved::takes(format) => {
                let data = tensor.data().ok()?;
                if data.len() < n * k / format.block_len() * format.block_bytes() {
                    return None;
                }
                let panels = interleaved::Interleaved::new(format, &data, n, k);
                Weights::Interleaved(avx512, Arc::new(panels))
            }
            _ => Weights::Blocks(tensor),
        };
        Some(Self {
            weights,
            format,
            kernel,
            n,
            k,
        })
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// `(rows, columns)`: `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `out = acts @ w.T`, `out` `[acts.rows(), n]`, the activations offset for this format.
    fn product(&self, acts: &QuantizedActs, out: &mut [f32]) -> candle_core::Result<()> {
        match &self.weights {
            Weights::Blocks(tensor) => {
                Self::with_blocks(tensor, self.format, self.n, self.k, |w| {
                    matmul::matmul_quantized(self.kernel, w, acts, out)
                })
            }
            #[cfg(target_arch = "x86_64")]
            Weights::Interleaved(avx512, w) => {
                matmul::interleaved(*avx512, w, acts, out);
                Ok(())
            }
        }
    }

    fn with_blocks<T>(
        tensor: &QTensor,
        format: WeightFormat,
        n: usize,
        k: usize,
        f: impl FnOnce(Blocks<'_>) -> T,
    ) -> candle_core::Result<T> {
        let data = tensor.data()?;
        let expected = n * k / format.block_len() * format.block_bytes();
        if data.len() < expected {
            candle_core::bail!(
                "quantized tensor holds {} bytes, expected {expected}",
                data.len()
            );
        }
        Ok(f(Blocks {
            format,
            data: &data,
            n,
            k,
        }))
    }

    /// `x @ w.T` for `x` of shape `[.., k]`; the result has shape `[.., n]` and `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        x.apply_op1_no_bwd(self)?.to_dtype(dtype)
    }

    /// [`QuantMatrix::forward`] of an f32 contiguous `x`, reusing the activations in `shared`
    /// when they were quantized from `x` for a format that takes the same blocks, and leaving
    /// there the ones it quantized otherwise.
    fn forward_sharing(
        &self,
        x: &Tensor,
        shared: &mut Option<QuantizedActs>,
    ) -> candle_core::Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if dims.last() != Some(&self.k) {
            candle_core::bail!(
                "input of shape {dims:?} for a quantized matrix of {} columns",
                self.k
            );
        }
        if let Some(last) = dims.last_mut() {
            *last = self.n;
        }
        let acts = match shared {
            Some(acts) if acts.fits(self.format) && acts.width() == self.k => acts,
            _ => {
                let (storage, layout) = x.storage_and_layout();
                let (Storage::Cpu(cpu), Some((start, end))) =
                    (&*storage, layout.contiguous_offsets())
                else {
                    candle_core::bail!("quantized product of a non-contiguous or non-CPU tensor");
                };
                let values = &cpu.as_slice::<f32>()?[start..end];
                shared.insert(QuantizedActs::new(self.format, values, self.k))
            }
        };
        acts.offset_for(self.format);
        let mut out = vec![0f32; acts.rows() * self.n];
        self.product(acts, &mut out)?;
        Tensor::from_vec(out, dims, &candle_core::Device::Cpu)
    }

    /// The rows `ids` dequantized, `[ids.len(), k]` f32.
    pub fn embedding(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        if let Some(id) = ids.iter().find(|id| **id as usize >= self.n) {
            candle_core::bail!("row {id} is outside a matrix of {} rows", self.n);
        }
        let (n, k, format) = (self.n, self.k, self.format);
        let mut values = vec![0f32; ids.len() * k];
        let rows = ids
            .iter()
            .map(|&id| id as usize)
            .zip(values.chunks_exact_mut(k));
        match &self.weights {
            Weights::Blocks(tensor) => Self::with_blocks(tensor, format, n, k, |w| {
                let row_bytes = k / format.block_len() * format.block_bytes();
                for (id, out) in rows {
                    let row = &w.data[id * row_bytes..(id + 1) * row_bytes];
                    format::dequantize_row(format, row, out);
                }
            })?,
            #[cfg(target_arch = "x86_64")]
            Weights::Interleaved(_, w) => {
                for (id, out) in rows {
                    w.dequantize_row(id, out);
                }
            }
        }
        Tensor::from_vec(values, (ids.len(), k), &candle_core::Device::Cpu)
    }
}

impl candle_core::CustomOp1 for QuantMatrix {
    fn name(&self) -> &'static str {
        "passerelle-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quantized product of a non-contiguous tensor");
        };
        let x = &storage.as_slice::<f32>()?[start..end];
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&self.k) {
            candle_core::bail!(
                "input of shape {dims:?} for a quantized matrix of {} columns",
                self.k
            );
        }
        if let Some(last) = dims.last_mut() {
            *last = self.n;
        }
        let mut out = vec![0f32; x.len() / self.k * self.n];
        if !x.is_empty() && self.n > 0 {
            self.product(&QuantizedActs::new(self.format, x, self.k), &mut out)?;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// A projection `x @ w.T`: these kernels where the block type allows, candle's otherwise.
#[derive(Debug, Clone)]
pub enum QLinear {
    Kernel(QuantMatrix),
    Candle(QMatMul),
}

impl QLinear {
    /// Takes the kernels' path for quantized CPU tensors of a handled type.
    pub fn new(matrix: QMatMul) -> Self {
        if let QMatMul::QTensor(tensor) = &matrix
            && let Some(fast) = QuantMatrix::new(tensor.clone())
        {
            return Self::Kernel(fast);
        }
        Self::Candle(matrix)
    }

    /// Rows of the `[rows, cols]` matrix (the output width).
    pub fn rows(&self) -> candle_core::Result<usize> {
        match self {
            Self::Kernel(m) => Ok(m.n),
            Self::Candle(QMatMul::QTensor(t)) => t.shape().dims2().map(|(rows, _)| rows),
            Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.dims2().map(|(rows, _)| rows)
            }
        }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Kernel(m) => m.forward(x),
            Self::Candle(m) => m.forward(x),
        }
    }

    /// `x @ w.T` for each of `linears`, which share their input (queries, keys and values;
    /// gate and up): `x` is quantized once for all the kernel matrices whose block types take
    /// the same activations (Q8_0 and Q5_0; Q4_K with Q4_K, Q6_K with Q6_K).
    pub fn forward_shared<const N: usize>(
        linears: [&Self; N],
        x: &Tensor,
    ) -> candle_core::Result<[Tensor; N]> {
        let dtype = x.dtype();
        let mut x32 = None;
        let mut shared = None;
        let mut outs = Vec::with_capacity(N);
        for linear in linears {
            outs.push(match linear {
                Self::Kernel(m) => {
                    let x32 = match &mut x32 {
                        Some(x32) => x32,
                        None => x32.insert(x.to_dtype(DType::F32)?.contiguous()?),
                    };
                    m.forward_sharing(x32, &mut shared)?.to_dtype(dtype)?
                }
                Self::Candle(m) => m.forward(x)?,
            });
        }
        outs.try_into()
            .map_err(|_| candle_core::Error::Msg("one output per projection".into()))
    }

    /// The rows `ids` (a 1-D u32 tensor) as `[ids, cols]` f32 rows.
    pub fn embedding(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Kernel(m) => m.embedding(&ids.to_vec1::<u32>()?),
            Self::Candle(m) => m.embedding(ids),
        }
    }
}
