//! A decoder's shape from llama.cpp GGUF metadata (`<architecture>.*` keys) and rope tensors.

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;

use crate::model::{
    Architecture,
    decoder::{
        DecoderConfig,
        rope::{LongRope, RopeConfig, RopeLayout, RopeScaling},
        source::{GgufSource, Source},
    },
};

fn read_f64s<R: Read + Seek>(
    source: &mut GgufSource<'_, R>,
    name: &str,
) -> candle_core::Result<Vec<f64>> {
    let values: Vec<f32> = source.vector(name)?.flatten_all()?.to_vec1()?;
    Ok(values.into_iter().map(f64::from).collect())
}

/// The config of the file in `content`; rope factors are read through `source`.
pub(super) fn config<R: Read + Seek>(
    content: &gguf_file::Content,
    source: &mut GgufSource<'_, R>,
) -> candle_core::Result<DecoderConfig> {
    let md = &content.metadata;
    let name = md
        .get("general.architecture")
        .ok_or_else(|| candle_core::Error::Msg("GGUF has no general.architecture".into()))?
        .to_string()?;
    let architecture = Architecture::from_name(name).ok_or_else(|| {
        candle_core::Error::Msg(format!("GGUF architecture `{name}` is not supported"))
    })?;
    let arch = architecture.as_str();
    let key = |k: &str| format!("{arch}.{k}");
    let optional_u32 = |k: &str| -> candle_core::Result<Option<usize>> {
        md.get(&key(k))
            .map(|v| v.to_u32().map(|n| n as usize))
            .transpose()
    };
    let required_u32 = |k: &str| -> candle_core::Result<usize> {
        optional_u32(k)?.ok_or_else(|| candle_core::Error::Msg(format!("GGUF has no {}", key(k))))
    };
    let optional_f32 = |k: &str| -> candle_core::Result<Option<f64>> {
        md.get(&key(k))
            .map(|v| v.to_f32().map(f64::from))
            .transpose()
    };

    let num_heads = required_u32("attention.head_count")?;
    let hidden_size = required_u32("embedding_length")?;
    let head_dim = match optional_u32("attention.key_length")? {
        Some(d) => d,
        None => hidden_size / num_heads.max(1),
    };
    if let Some(rotated) = optional_u32("rope.dimension_count")?
        && rotated != head_dim
    {
        candle_core::bail!(
            "partial rotary embeddings ({rotated} of {head_dim} dimensions) are not supported"
        );
    }
    let num_layers = required_u32("block_count")?;
    let scaling = if source.has("rope_freqs.weight") {
        Some(RopeScaling::Divisors(read_f64s(
            source,
            "rope_freqs.weight",
        )?))
    } else if source.has("rope_factors_long.weight") {
        let original = required_u32("rope.scaling.original_context_length")?;
        Some(RopeScaling::LongRope(LongRope {
            short_factor: read_f64s(source, "rope_factors_short.weight")?,
            long_factor: read_f64s(source, "rope_factors_long.weight")?,
            original_max_position_embeddings: original,
            attention_factor: match optional_f32("rope.scaling.attn_factor")? {
                Some(factor) => factor,
                None => LongRope::default_attention_factor(
                    required_u32("context_length")? as f64 / original as f64,
                    original,
                ),
            },
        }))
    } else {
        None
    };
    let window = optional_u32("attention.sliding_window")?.filter(|w| *w > 0);
    Ok(DecoderConfig {
        architecture,
        hidden_size,
        intermediate_size: required_u32("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads: optional_u32("attention.head_count_kv")?.unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: optional_f32("attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "GGUF has no {}",
                key("attention.layer_norm_rms_epsilon")
            ))
        })?,
        rope: RopeConfig {
            theta: optional_f32("rope.freq_base")?.unwrap_or(10_000.0),
            // llama.cpp rotates Llama in pairs (its converter permutes Q and K), the others in
            // halves (NEOX).
            layout: match architecture {
                Architecture::Llama => RopeLayout::Interleaved,
                Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Phi3 => {
                    RopeLayout::Halves
                }
            },
            scaling,
        },
        // Only Phi-3 declares a window in GGUF, and it applies to every layer.
        layer_windows: vec![window; if window.is_some() { num_layers } else { 0 }],
    })
}
