//! Writing a checkpoint as a llama.cpp GGUF file: `qwen2` architecture metadata, the tokenizer as
//! `tokenizer.ggml.*` keys and the weights under llama.cpp's names.
//!
//! Qwen2 uses NEOX-style rotary embeddings in llama.cpp (halves rotated, as in Hugging Face), so
//! unlike LLaMA the Q and K projections are stored without permutation.

use std::{fs::File, io::BufWriter, path::Path};

use candle_core::{
    Device, Tensor,
    quantized::{GgmlDType, QTensor, gguf_file},
};

use crate::models::{
    NamedTensor, QWEN2_5_CHAT_TEMPLATE, Qwen2Spec, TestkitError, Vocabulary, WeightDtype,
    weights::gguf_name,
};

/// llama.cpp `general.file_type` values (`llama_ftype`).
fn file_type(dtype: WeightDtype) -> u32 {
    match dtype {
        WeightDtype::F32 => 0,
        WeightDtype::F16 => 1,
        WeightDtype::Q8_0 => 7,
        // MOSTLY_Q4_K_M: k-quants with higher-precision fallbacks, which is what both write.
        WeightDtype::Q4K | WeightDtype::Q4KM => 15,
        WeightDtype::Bf16 => 32,
    }
}

/// How the matrices of one file are stored: the requested [`WeightDtype`] plus what llama.cpp's
/// `llama-quantize` needs to pick per-tensor types for a mix such as Q4_K_M.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuantPlan {
    pub dtype: WeightDtype,
    /// `block_count`: llama.cpp gives some layers more bits.
    pub layers: usize,
    /// No `output.weight`: the token embeddings double as the output projection.
    pub tied_embeddings: bool,
}

impl QuantPlan {
    /// The storage type of the tensor with GGUF name `name`: vectors stay F32 as in llama.cpp;
    /// matrices take the plan's type, falling back as llama.cpp does when rows are too short.
    pub fn tensor_type(&self, name: &str, shape: &[usize]) -> Result<GgmlDType, TestkitError> {
        if shape.len() < 2 {
            return Ok(GgmlDType::F32);
        }
        let row = shape[shape.len() - 1];
        let wanted = match self.dtype {
            WeightDtype::F32 => GgmlDType::F32,
            WeightDtype::F16 => GgmlDType::F16,
            WeightDtype::Bf16 => GgmlDType::BF16,
            WeightDtype::Q8_0 => GgmlDType::Q8_0,
            WeightDtype::Q4K if row.is_multiple_of(GgmlDType::Q4K.block_size()) => GgmlDType::Q4K,
            WeightDtype::Q4K => GgmlDType::Q8_0,
            WeightDtype::Q4KM => self.q4_k_m(name, row),
        };
        if !row.is_multiple_of(wanted.block_size()) {
            return Err(TestkitError::InvalidSpec(format!(
                "rows of {row} values cannot be stored as {wanted:?} (blocks of {})",
                wanted.block_size()
            )));
        }
        Ok(wanted)
    }

    /// `llama_tensor_get_type` for `LLAMA_FTYPE_MOSTLY_Q4_K_M` (llama.cpp `src/llama-quant.cpp`,
    /// dense non-Falcon models): Q4_K by default; Q6_K for the output matrix (the tied
    /// embeddings) and for `attn_v` and `ffn_down` in the layers `use_more_bits` picks; then
    /// the fallback for rows that are not a multiple of 256: Q4_K to Q5_0, Q6_K to Q8_0.
    fn q4_k_m(&self, name: &str, row: usize) -> GgmlDType {
        let more_bits = |layer: usize| {
            let n = self.layers;
            // Past the first test, layer >= n / 8, so the subtraction cannot underflow.
            layer < n / 8 || layer >= 7 * n / 8 || (layer - n / 8) % 3 == 2
        };
        let layer_of = |part: &str| -> Option<usize> {
            let rest = name.strip_prefix("blk.")?;
            let (layer, tensor) = rest.split_once('.')?;
            (tensor == format!("{part}.weight"))
                .then(|| layer.parse().ok())
                .flatten()
        };
        let is_output =
            name == "output.weight" || (self.tied_embeddings && name == "token_embd.weight");
        let wanted = if is_output {
            if row.is_multiple_of(GgmlDType::Q6K.block_size()) {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q8_0
            }
        } else if layer_of("attn_v")
            .or_else(|| layer_of("ffn_down"))
            .is_some_and(more_bits)
        {
            GgmlDType::Q6K
        } else {
            GgmlDType::Q4K
        };
        match wanted {
            _ if row.is_multiple_of(wanted.block_size()) => wanted,
            GgmlDType::Q4K => GgmlDType::Q5_0,
            _ => GgmlDType::Q8_0,
        }
    }
}

/// Writes `tensors` and the tokenizer as a GGUF file at `path`.
pub fn write_gguf(
    path: &Path,
    spec: &Qwen2Spec,
    vocab: &Vocabulary,
    tensors: &[NamedTensor],
    dtype: WeightDtype,
) -> Result<(), TestkitError> {
    use gguf_file::Value as V;
    let u32_of = |n: usize| {
        u32::try_from(n).map_err(|_| TestkitError::InvalidSpec(format!("{n} does not fit in u32")))
    };
    let metadata: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("qwen2".to_owned())),
        ("general.name", V::String(spec.name.clone())),
        ("general.file_type", V::U32(file_type(dtype))),
        ("qwen2.block_count", V::U32(u32_of(spec.num_hidden_layers)?)),
        (
            "qwen2.context_length",
            V::U32(u32_of(spec.max_position_embeddings)?),
        ),
        ("qwen2.embedding_length", V::U32(u32_of(spec.hidden_size)?)),
        (
            "qwen2.feed_forward_length",
            V::U32(u32_of(spec.intermediate_size)?),
        ),
        (
            "qwen2.attention.head_count",
            V::U32(u32_of(spec.num_attention_heads)?),
        ),
        (
            "qwen2.attention.head_count_kv",
            V::U32(u32_of(spec.num_key_value_heads)?),
        ),
        ("qwen2.rope.freq_base", V::F32(spec.rope_theta as f32)),
        (
            "qwen2.attention.layer_norm_rms_epsilon",
            V::F32(spec.rms_norm_eps as f32),
        ),
        ("tokenizer.ggml.model", V::String("gpt2".to_owned())),
        ("tokenizer.ggml.pre", V::String("qwen2".to_owned())),
        (
            "tokenizer.ggml.tokens",
            V::Array(vocab.tokens().iter().cloned().map(V::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            V::Array(
                vocab
                    .kinds()
                    .iter()
                    .map(|k| V::I32(k.gguf_type()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges",
            V::Array(
                vocab
                    .merges()
                    .iter()
                    .map(|(a, b)| V::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.eos_token_id", V::U32(vocab.im_end_id())),
        (
            "tokenizer.ggml.padding_token_id",
            V::U32(vocab.endoftext_id()),
        ),
        ("tokenizer.ggml.bos_token_id", V::U32(vocab.endoftext_id())),
        ("tokenizer.ggml.add_bos_token", V::Bool(false)),
        (
            "tokenizer.chat_template",
            V::String(QWEN2_5_CHAT_TEMPLATE.to_owned()),
        ),
    ];

    let plan = QuantPlan {
        dtype,
        layers: spec.num_hidden_layers,
        tied_embeddings: spec.tie_word_embeddings,
    };
    let mut quantized = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let name = gguf_name(&tensor.name).ok_or_else(|| {
            TestkitError::InvalidSpec(format!("no GGUF name for tensor {}", tensor.name))
        })?;
        let data = Tensor::from_slice(&tensor.data, tensor.shape.as_slice(), &Device::Cpu)?;
        let qtensor = QTensor::quantize(&data, plan.tensor_type(&name, &tensor.shape)?)?;
        quantized.push((name, qtensor));
    }

    let metadata_refs: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = BufWriter::new(File::create(path)?);
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs)?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dtype: WeightDtype) -> QuantPlan {
        QuantPlan {
            dtype,
            layers: 24,
            tied_embeddings: true,
        }
    }

    #[test]
    fn vectors_stay_f32_and_q4k_falls_back_on_short_rows() {
        let q8 = plan(WeightDtype::Q8_0);
        let q4 = plan(WeightDtype::Q4K);
        assert_eq!(q8.tensor_type("x", &[64]).unwrap(), GgmlDType::F32);
        assert_eq!(q8.tensor_type("x", &[64, 64]).unwrap(), GgmlDType::Q8_0);
        assert_eq!(q4.tensor_type("x", &[64, 896]).unwrap(), GgmlDType::Q8_0);
        assert_eq!(q4.tensor_type("x", &[896, 4864]).unwrap(), GgmlDType::Q4K);
        assert!(q8.tensor_type("x", &[64, 48]).is_err());
    }

    #[test]
    fn q4_k_m_follows_llama_quantize_for_qwen2_5_0_5b() {
        let q = plan(WeightDtype::Q4KM);
        let t = |name: &str, shape: &[usize]| q.tensor_type(name, shape).unwrap();
        // Tied embeddings are the output matrix: Q6_K, but 896-wide rows fall back to Q8_0.
        assert_eq!(t("token_embd.weight", &[151_936, 896]), GgmlDType::Q8_0);
        // Q4_K on 896-wide rows falls back to Q5_0.
        assert_eq!(t("blk.3.attn_q.weight", &[896, 896]), GgmlDType::Q5_0);
        assert_eq!(t("blk.3.ffn_up.weight", &[4864, 896]), GgmlDType::Q5_0);
        // use_more_bits: layers 0-2, 21-23 and every third from 5.
        assert_eq!(t("blk.0.attn_v.weight", &[128, 896]), GgmlDType::Q8_0);
        assert_eq!(t("blk.4.attn_v.weight", &[128, 896]), GgmlDType::Q5_0);
        assert_eq!(t("blk.5.ffn_down.weight", &[896, 4864]), GgmlDType::Q6K);
        assert_eq!(t("blk.6.ffn_down.weight", &[896, 4864]), GgmlDType::Q4K);
        assert_eq!(t("blk.23.ffn_down.weight", &[896, 4864]), GgmlDType::Q6K);
        assert_eq!(t("blk.6.attn_norm.weight", &[896]), GgmlDType::F32);
        let untied = QuantPlan {
            tied_embeddings: false,
            ..q
        };
        assert_eq!(
            untied
                .tensor_type("token_embd.weight", &[1024, 512])
                .unwrap(),
            GgmlDType::Q4K
        );
        assert_eq!(
            untied.tensor_type("output.weight", &[1024, 512]).unwrap(),
            GgmlDType::Q6K
        );
    }
}
