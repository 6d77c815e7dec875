//! Mapping weight files into memory. The workspace's one `unsafe` for model loading lives here.

#![allow(unsafe_code)]

use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

/// Memory-maps safetensors files into a `VarBuilder` that yields tensors of `dtype` on `device`.
pub fn mmap_safetensors(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<VarBuilder<'static>> {
    // SAFETY: the files are mapped read-only and must not be modified or truncated while the model
    // is loading or loaded; that is the contract of serving a model directory, the same one
    // candle's and transformers' loaders rely on.
    unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
}
