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
        // MOSTLY_Q4_K_M: k-quants with higher-precision fallbacks, which is what we write.
        WeightDtype::Q4K => 15,
        WeightDtype::Bf16 => 32,
    }
}

/// The storage type of one tensor: vectors stay F32 as in llama.cpp; matrices take `dtype`,
/// falling back from Q4_K to Q8_0 when rows are not a multiple of 256.
pub(crate) fn tensor_dtype(shape: &[usize], dtype: WeightDtype) -> Result<GgmlDType, TestkitError> {
    if shape.len() < 2 {
        return Ok(GgmlDType::F32);
    }
    let row = shape[shape.len() - 1];
    let wanted = match dtype {
        WeightDtype::F32 => GgmlDType::F32,
        WeightDtype::F16 => GgmlDType::F16,
        WeightDtype::Bf16 => GgmlDType::BF16,
        WeightDtype::Q8_0 => GgmlDType::Q8_0,
        WeightDtype::Q4K if row.is_multiple_of(GgmlDType::Q4K.block_size()) => GgmlDType::Q4K,
        WeightDtype::Q4K => GgmlDType::Q8_0,
    };
    if !row.is_multiple_of(wanted.block_size()) {
        return Err(TestkitError::InvalidSpec(format!(
            "rows of {row} values cannot be stored as {wanted:?} (blocks of {})",
            wanted.block_size()
        )));
    }
    Ok(wanted)
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

    let mut quantized = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let name = gguf_name(&tensor.name).ok_or_else(|| {
            TestkitError::InvalidSpec(format!("no GGUF name for tensor {}", tensor.name))
        })?;
        let data = Tensor::from_slice(&tensor.data, tensor.shape.as_slice(), &Device::Cpu)?;
        let qtensor = QTensor::quantize(&data, tensor_dtype(&tensor.shape, dtype)?)?;
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

    #[test]
    fn vectors_stay_f32_and_q4k_falls_back_on_short_rows() {
        assert_eq!(
            tensor_dtype(&[64], WeightDtype::Q8_0).unwrap(),
            GgmlDType::F32
        );
        assert_eq!(
            tensor_dtype(&[64, 64], WeightDtype::Q8_0).unwrap(),
            GgmlDType::Q8_0
        );
        assert_eq!(
            tensor_dtype(&[64, 896], WeightDtype::Q4K).unwrap(),
            GgmlDType::Q8_0
        );
        assert_eq!(
            tensor_dtype(&[896, 4864], WeightDtype::Q4K).unwrap(),
            GgmlDType::Q4K
        );
        assert!(tensor_dtype(&[64, 48], WeightDtype::Q8_0).is_err());
    }
}
