//! Where a decoder's weights come from: GGUF tensors or safetensors, under each format's names.

use std::{
    io::{Read, Seek},
    sync::Arc,
};

use candle_core::{
    Device, Tensor,
    quantized::{QMatMul, gguf_file},
};
use candle_nn::VarBuilder;

use crate::model::decoder::DecoderConfig;

/// The tensors of a block, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    AttnNorm,
    Q,
    K,
    V,
    /// Q, K and V in one matrix (Phi-3).
    Qkv,
    QNorm,
    KNorm,
    O,
    FfnNorm,
    Gate,
    Up,
    /// Gate and up in one matrix (Phi-3); in GGUF it is `ffn_up` of a block without `ffn_gate`.
    GateUp,
    Down,
}

/// Tensor names of one format.
pub(crate) struct Names {
    pub embed: &'static str,
    pub norm: &'static str,
    pub lm_head: &'static str,
    /// Name of a block tensor without its `.weight`/`.bias` suffix.
    pub block: fn(usize, Part) -> String,
}

pub(crate) const GGUF_NAMES: Names = Names {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    lm_head: "output.weight",
    block: |i, part| {
        let part = match part {
            Part::AttnNorm => "attn_norm",
            Part::Q => "attn_q",
            Part::K => "attn_k",
            Part::V => "attn_v",
            Part::Qkv => "attn_qkv",
            Part::QNorm => "attn_q_norm",
            Part::KNorm => "attn_k_norm",
            Part::O => "attn_output",
            Part::FfnNorm => "ffn_norm",
            Part::Gate => "ffn_gate",
            Part::Up | Part::GateUp => "ffn_up",
            Part::Down => "ffn_down",
        };
        format!("blk.{i}.{part}")
    },
};

pub(crate) const HF_NAMES: Names = Names {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    block: |i, part| {
        let part = match part {
            Part::AttnNorm => "input_layernorm",
            Part::Q => "self_attn.q_proj",
            Part::K => "self_attn.k_proj",
            Part::V => "self_attn.v_proj",
            Part::Qkv => "self_attn.qkv_proj",
            Part::QNorm => "self_attn.q_norm",
            Part::KNorm => "self_attn.k_norm",
            Part::O => "self_attn.o_proj",
            Part::FfnNorm => "post_attention_layernorm",
            Part::Gate => "mlp.gate_proj",
            Part::Up => "mlp.up_proj",
            Part::GateUp => "mlp.gate_up_proj",
            Part::Down => "mlp.down_proj",
        };
        format!("model.layers.{i}.{part}")
    },
};

/// Where the weights come from, under the names of their format.
pub(crate) trait Source {
    /// A tensor read whole (norms, biases, rope factors).
    fn vector(&mut self, name: &str) -> candle_core::Result<Tensor>;
    /// A matrix for `x @ w.T`; `shape` (`[out, in]`) is checked where the format allows.
    fn matrix(&mut self, name: &str, shape: Option<(usize, usize)>)
    -> candle_core::Result<QMatMul>;
    fn has(&self, name: &str) -> bool;
}

/// The expected `[out, in]` shape of a block matrix, so a mislabelled checkpoint fails to load
/// instead of producing garbage.
pub(crate) fn matrix_shape(config: &DecoderConfig, part: Part) -> Option<(usize, usize)> {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let (q, kv) = (config.q_width(), config.kv_width());
    Some(match part {
        Part::Q => (q, h),
        Part::K | Part::V => (kv, h),
        Part::Qkv => (q + 2 * kv, h),
        Part::O => (h, q),
        Part::Gate | Part::Up => (i, h),
        Part::GateUp => (2 * i, h),
        Part::Down => (h, i),
        Part::AttnNorm | Part::QNorm | Part::KNorm | Part::FfnNorm => return None,
    })
}

/// A llama.cpp GGUF file; quantized matrices stay quantized.
pub(crate) struct GgufSource<'a, R> {
    pub content: &'a gguf_file::Content,
    pub reader: &'a mut R,
    pub device: &'a Device,
}

impl<R: Read + Seek> Source for GgufSource<'_, R> {
    fn vector(&mut self, name: &str) -> candle_core::Result<Tensor> {
        self.content
            .tensor(self.reader, name, self.device)?
            .dequantize(self.device)
    }

    fn matrix(
        &mut self,
        name: &str,
        shape: Option<(usize, usize)>,
    ) -> candle_core::Result<QMatMul> {
        let tensor = self.content.tensor(self.reader, name, self.device)?;
        if let Some((rows, cols)) = shape {
            let dims = tensor.shape().dims();
            if dims != [rows, cols] {
                candle_core::bail!("{name} has shape {dims:?}, expected [{rows}, {cols}]");
            }
        }
        QMatMul::from_arc(Arc::new(tensor))
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}

/// Memory-mapped Hugging Face safetensors.
pub(crate) struct SafetensorsSource<'a> {
    pub vb: VarBuilder<'a>,
}

impl Source for SafetensorsSource<'_> {
    fn vector(&mut self, name: &str) -> candle_core::Result<Tensor> {
        self.vb.get_unchecked(name)
    }

    fn matrix(
        &mut self,
        name: &str,
        shape: Option<(usize, usize)>,
    ) -> candle_core::Result<QMatMul> {
        let tensor = match shape {
            Some(shape) => self.vb.get(shape, name)?,
            None => self.vb.get_unchecked(name)?,
        };
        Ok(QMatMul::Tensor(tensor))
    }

    fn has(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }
}
