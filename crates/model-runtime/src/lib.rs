//! Where model weights come from and where they run.
//!
//! - [`source`]: a model named by a local path or a Hugging Face repo id, resolved to files on
//!   local disk. Hub repos are fetched with `hf-hub` into the standard Hugging Face cache (with a
//!   progress bar); when the hub cannot be reached and the files are not cached, the error says
//!   exactly what to download and where to put it.
//! - [`device`]: the compute device (CPU, or CUDA with the `cuda` feature) parsed from config.
//! - [`compute`]: the thread pool a model's forward passes run in.
//! - [`lifecycle`]: a model's loading state, published by its thread, and waiting on it.
//! - [`weights`]: memory-mapped safetensors, the one `unsafe` of model loading.

pub mod compute;
pub mod device;
pub mod lifecycle;
pub mod source;
pub mod weights;

pub use device::{DeviceChoice, DeviceError};
pub use source::{HubOptions, ModelSource, ResolvedModel, SourceError};
