//! Converting a Hugging Face Llama, Qwen2, Qwen3 or Phi-3 directory to a llama.cpp GGUF file,
//! the way llama.cpp's `convert_hf_to_gguf.py` does: `<arch>.*` metadata, the byte-level BPE
//! tokenizer as `tokenizer.ggml.*` keys, llama.cpp's tensor names (Phi-3's fused `qkv_proj` as
//! `attn_qkv` and `gate_up_proj` as `ffn_up`), and per family:
//!
//! - Llama: Q and K rows permuted for llama.cpp's interleaved rotation, and Llama 3.1+ rope
//!   scaling stored as the `rope_freqs.weight` divisors.
//! - Phi-3: `longrope` factors as `rope_factors_short.weight`/`rope_factors_long.weight` with
//!   `rope.scaling.attn_factor` and `rope.scaling.original_context_length`, and the
//!   `attention.sliding_window`.
//!
//! Tests use it to carry the weights `transformers` saved (the parity fixtures) into GGUF, so
//! that both loaders can be checked against the same reference logits.

use std::{fs, fs::File, io::BufWriter, path::Path};

use candle_core::{
    Device, Tensor,
    quantized::{QTensor, gguf_file},
};
use serde_json::Value;

use crate::models::{TestkitError, WeightDtype, gguf::QuantPlan};

/// llama.cpp `llama_token_type` values.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn invalid(why: impl Into<String>) -> TestkitError {
    TestkitError::InvalidSpec(why.into())
}

fn read_json(path: &Path) -> Result<Value, TestkitError> {
    Ok(serde_json::from_str(&fs::read_to_string(path)?)?)
}

fn usize_field(config: &Value, key: &str) -> Result<usize, TestkitError> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| invalid(format!("config.json has no integer `{key}`")))
}

fn u32_of(n: usize) -> Result<u32, TestkitError> {
    u32::try_from(n).map_err(|_| invalid(format!("{n} does not fit in u32")))
}

/// The GGUF name of a Hugging Face decoder tensor.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (part, suffix) = part.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let part = match part {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.{suffix}"))
}

/// llama.cpp's `LlamaModel.permute`: within each head, rows `[first half, second half]` become
/// interleaved pairs, so its pairwise rotation equals the rotation of halves.
fn permute(weight: &Tensor, heads: usize) -> Result<Tensor, TestkitError> {
    let (rows, cols) = weight.dims2()?;
    Ok(weight
        .reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The `rope_freqs.weight` divisors for `rope_type: "llama3"` scaling, as llama.cpp computes
/// them.
fn llama3_rope_divisors(
    rope: &Value,
    theta: f64,
    head_dim: usize,
) -> Result<Vec<f32>, TestkitError> {
    let f = |key: &str, default: f64| rope.get(key).and_then(Value::as_f64).unwrap_or(default);
    let factor = rope
        .get("factor")
        .and_then(Value::as_f64)
        .ok_or_else(|| invalid("llama3 rope scaling without `factor`"))?;
    let low = f("low_freq_factor", 1.0);
    let high = f("high_freq_factor", 4.0);
    let old = f("original_max_position_embeddings", 8192.0);
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Ok((0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect())
}

/// The vocabulary of `tokenizer.json` as GGUF lists it: tokens by id up to `rows`, their types,
/// and the merges.
struct GgufVocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

fn vocab(tokenizer: &Value, rows: usize) -> Result<GgufVocab, TestkitError> {
    let model = tokenizer
        .get("model")
        .ok_or_else(|| invalid("tokenizer.json has no model"))?;
    let mut tokens = vec![None; rows];
    let mut types = vec![UNUSED; rows];
    let entries = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("tokenizer.json has no BPE vocab"))?;
    let mut place = |id: u64, content: &str, kind: i32| -> Result<(), TestkitError> {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| invalid(format!("token id {id} is beyond {rows} embedding rows")))?;
        *slot = Some(content.to_owned());
        types[id as usize] = kind;
        Ok(())
    };
    for (content, id) in entries {
        let id = id
            .as_u64()
            .ok_or_else(|| invalid("vocab ids must be integers"))?;
        place(id, content, NORMAL)?;
    }
    for added in tokenizer
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = added.get("id").and_then(Value::as_u64);
        let content = added.get("content").and_then(Value::as_str);
        let special = added
            .get("special")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (Some(id), Some(content)) = (id, content) else {
            return Err(invalid("an added token lacks its id or content"));
        };
        place(id, content, if special { CONTROL } else { USER_DEFINED })?;
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| token.unwrap_or_else(|| format!("[PAD{id}]")))
        .collect();
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("tokenizer.json has no merges"))?
        .iter()
        .map(|merge| match merge {
            Value::String(pair) => Ok(pair.clone()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                _ => Err(invalid("a merge is not a pair of strings")),
            },
            _ => Err(invalid("a merge is neither a string nor a pair")),
        })
        .collect::<Result<_, _>>()?;
    Ok(GgufVocab {
        tokens,
        types,
        merges,
    })
}

/// Writes the Llama checkpoint in `hf_dir` as a GGUF file at `out`, matrices stored as `dtype`.
pub fn convert_llama_to_gguf(
    hf_dir: &Path,
    out: &Path,
    dtype: WeightDtype,
) -> Result<(), TestkitError> {
    let config = read_json(&hf_dir.join("config.json"))?;
    if config.get("model_type").and_then(Value::as_str) != Some("llama") {
        return Err(invalid("config.json does not declare model_type llama"));
    }
    convert_hf_to_gguf(hf_dir, out, dtype)
}

/// A special token of `tokenizer_config.json`: a string or an `AddedToken` object.
fn special_token(tokenizer_config: &Value, key: &str) -> Option<String> {
    let value = tokenizer_config.get(key)?;
    value
        .as_str()
        .or_else(|| value.get("content").and_then(Value::as_str))
        .map(str::to_owned)
}

/// Writes the Llama, Qwen2, Qwen3 or Phi-3 checkpoint in `hf_dir` as a GGUF file at `out`,
/// matrices stored as `dtype`.
pub fn convert_hf_to_gguf(
    hf_dir: &Path,
    out: &Path,
    dtype: WeightDtype,
) -> Result<(), TestkitError> {
    use gguf_file::Value as V;
    let config = read_json(&hf_dir.join("config.json"))?;
    let arch = match config.get("model_type").and_then(Value::as_str) {
        Some(arch @ ("llama" | "qwen2" | "qwen3" | "phi3")) => arch.to_owned(),
        other => {
            return Err(invalid(format!(
                "config.json model_type {other:?} is not llama, qwen2, qwen3 or phi3"
            )));
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = usize_field(&config, "hidden_size")?;
    let heads = usize_field(&config, "num_attention_heads")?;
    let kv_heads = usize_field(&config, "num_key_value_heads").unwrap_or(heads);
    let head_dim = usize_field(&config, "head_dim").unwrap_or(hidden / heads);
    let rows = usize_field(&config, "vocab_size")?;
    let context = usize_field(&config, "max_position_embeddings")?;
    let rope = config
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .or_else(|| config.get("rope_scaling").filter(|v| !v.is_null()));
    let rope_type = rope
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .and_then(Value::as_str);
    let theta = config
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| {
            rope.and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(10_000.0);
    let eps = config
        .get("rms_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-6);

    let tokenizer = read_json(&hf_dir.join("tokenizer.json"))?;
    let tokenizer_config = read_json(&hf_dir.join("tokenizer_config.json")).unwrap_or(Value::Null);
    let vocab = vocab(&tokenizer, rows)?;
    let token_id = |text: &str| {
        vocab
            .tokens
            .iter()
            .position(|t| t == text)
            .map(|i| i as u32)
    };
    let bos = special_token(&tokenizer_config, "bos_token")
        .unwrap_or_else(|| "<|begin_of_text|>".to_owned());
    let eos =
        special_token(&tokenizer_config, "eos_token").unwrap_or_else(|| "<|eot_id|>".to_owned());
    let template_file = hf_dir.join("chat_template.jinja");
    let template = if template_file.is_file() {
        Some(fs::read_to_string(template_file)?)
    } else {
        None
    };

    // llama.cpp sets token attributes by model name: a name containing "phi3" must have Phi-3's
    // SentencePiece tokens (`<s>`, `</s>`, `<unk>`), which the byte-level vocabularies converted
    // here lack, so llama.cpp would refuse the file (llama-vocab.cpp, `_set_token_attr`).
    let name = match arch.as_str() {
        "phi3" => "passerelle-converted-phi".to_owned(),
        other => format!("passerelle-converted-{other}"),
    };
    let mut metadata: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.clone())),
        ("general.name".into(), V::String(name)),
        (
            key("block_count"),
            V::U32(u32_of(usize_field(&config, "num_hidden_layers")?)?),
        ),
        (key("context_length"), V::U32(u32_of(context)?)),
        (key("embedding_length"), V::U32(u32_of(hidden)?)),
        (
            key("feed_forward_length"),
            V::U32(u32_of(usize_field(&config, "intermediate_size")?)?),
        ),
        (key("attention.head_count"), V::U32(u32_of(heads)?)),
        (key("attention.head_count_kv"), V::U32(u32_of(kv_heads)?)),
        (key("attention.key_length"), V::U32(u32_of(head_dim)?)),
        (key("attention.value_length"), V::U32(u32_of(head_dim)?)),
        (key("rope.dimension_count"), V::U32(u32_of(head_dim)?)),
        (key("rope.freq_base"), V::F32(theta as f32)),
        (key("attention.layer_norm_rms_epsilon"), V::F32(eps as f32)),
        (key("vocab_size"), V::U32(u32_of(rows)?)),
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            V::String(
                if arch.starts_with("qwen") {
                    "qwen2"
                } else {
                    "llama-bpe"
                }
                .into(),
            ),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            V::Array(vocab.tokens.iter().cloned().map(V::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            V::Array(vocab.types.iter().copied().map(V::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            V::Array(vocab.merges.iter().cloned().map(V::String).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            V::Bool(arch == "llama"),
        ),
    ];
    if let Some(id) = token_id(&bos) {
        metadata.push(("tokenizer.ggml.bos_token_id".into(), V::U32(id)));
    }
    if let Some(id) = token_id(&eos) {
        metadata.push(("tokenizer.ggml.eos_token_id".into(), V::U32(id)));
    }
    if let Some(template) = template {
        metadata.push(("tokenizer.chat_template".into(), V::String(template)));
    }
    if arch == "phi3"
        && let Some(window) = config.get("sliding_window").and_then(Value::as_u64)
    {
        metadata.push((
            key("attention.sliding_window"),
            V::U32(u32_of(window as usize)?),
        ));
    }

    let weights = candle_core::safetensors::load(hf_dir.join("model.safetensors"), &Device::Cpu)?;
    let plan = QuantPlan {
        dtype,
        layers: usize_field(&config, "num_hidden_layers")?,
        tied_embeddings: !weights.contains_key("lm_head.weight"),
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(weights.len() + 2);
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    for hf in names {
        let name = gguf_name(hf).ok_or_else(|| invalid(format!("no GGUF name for {hf}")))?;
        let mut data = weights[hf].to_dtype(candle_core::DType::F32)?;
        if arch == "llama" && hf.ends_with("q_proj.weight") {
            data = permute(&data, heads)?;
        } else if arch == "llama" && hf.ends_with("k_proj.weight") {
            data = permute(&data, kv_heads)?;
        }
        let stored = plan.tensor_type(&name, data.dims())?;
        tensors.push((name, QTensor::quantize(&data, stored)?));
    }
    let vector = |values: Vec<f32>| -> Result<QTensor, TestkitError> {
        let tensor = Tensor::new(values, &Device::Cpu)?;
        Ok(QTensor::quantize(
            &tensor,
            candle_core::quantized::GgmlDType::F32,
        )?)
    };
    match (rope, rope_type) {
        (Some(rope), Some("llama3")) if arch == "llama" => {
            let divisors = llama3_rope_divisors(rope, theta, head_dim)?;
            tensors.push(("rope_freqs.weight".into(), vector(divisors)?));
        }
        (Some(rope), Some("longrope" | "su")) if arch == "phi3" => {
            let factors = |k: &str| -> Result<Vec<f32>, TestkitError> {
                rope.get(k)
                    .and_then(Value::as_array)
                    .ok_or_else(|| invalid(format!("longrope without `{k}`")))?
                    .iter()
                    .map(|v| {
                        v.as_f64()
                            .map(|f| f as f32)
                            .ok_or_else(|| invalid(format!("`{k}` holds a non-number")))
                    })
                    .collect()
            };
            let original = rope
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .or_else(|| usize_field(&config, "original_max_position_embeddings").ok())
                .ok_or_else(|| invalid("longrope without original_max_position_embeddings"))?;
            // convert_hf_to_gguf.py's Phi3MiniModel: the factor is the context extension.
            let scale = context as f64 / original as f64;
            let attn_factor = if scale <= 1.0 {
                1.0
            } else {
                (1.0 + scale.ln() / (original as f64).ln()).sqrt()
            };
            tensors.push((
                "rope_factors_long.weight".into(),
                vector(factors("long_factor")?)?,
            ));
            tensors.push((
                "rope_factors_short.weight".into(),
                vector(factors("short_factor")?)?,
            ));
            metadata.push((key("rope.scaling.attn_factor"), V::F32(attn_factor as f32)));
            metadata.push((
                key("rope.scaling.original_context_length"),
                V::U32(u32_of(original)?),
            ));
        }
        (_, None | Some("default")) => {}
        (_, Some(other)) => {
            return Err(invalid(format!(
                "rope scaling `{other}` of {arch} is not converted"
            )));
        }
    }

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    let metadata_refs: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = BufWriter::new(File::create(out)?);
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs)?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_interleaves_the_halves_of_each_head() {
        // One head of width 4: rows [a, b, c, d] (halves [a, b] and [c, d]) become [a, c, b, d].
        let rows: Vec<f32> = vec![0., 1., 2., 3.];
        let weight = Tensor::from_vec(rows, (4, 1), &Device::Cpu).unwrap();
        let permuted: Vec<f32> = permute(&weight, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(permuted, vec![0., 2., 1., 3.]);
    }

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.o_proj.weight").as_deref(),
            Some("blk.3.attn_output.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.q_proj.bias").as_deref(),
            Some("blk.0.attn_q.bias")
        );
        assert_eq!(
            gguf_name("model.layers.1.mlp.gate_up_proj.weight").as_deref(),
            Some("blk.1.ffn_up.weight")
        );
        assert_eq!(gguf_name("model.layers.0.mlp.gate_proj.scales"), None);
    }
}
