//! The shape of a decoder, whichever family and format it came from.

use crate::model::{Architecture, decoder::rope::RopeConfig};

/// The shape of a decoder-only transformer. Which optional tensors a block has (biases, q/k
/// norms, fused projections) is read from the checkpoint, not declared here.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    /// Per layer, how many positions back a query may look (itself included); `None` (or a
    /// missing entry) for full causal attention.
    pub layer_windows: Vec<Option<usize>>,
}

impl DecoderConfig {
    /// The attention window of `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.layer_windows.get(layer).copied().flatten()
    }

    /// Width of all query heads together.
    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub(crate) fn check(&self) -> candle_core::Result<()> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
            || self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
        {
            candle_core::bail!(
                "unusable attention shape: {} heads, {} key/value heads of width {}",
                self.num_heads,
                self.num_kv_heads,
                self.head_dim
            );
        }
        if self.layer_windows.iter().flatten().any(|w| *w == 0) {
            candle_core::bail!("an attention window of 0 positions sees nothing");
        }
        Ok(())
    }
}
