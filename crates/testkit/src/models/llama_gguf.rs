//! Converting a Hugging Face Llama directory to a llama.cpp GGUF file, the way llama.cpp's
//! `convert_hf_to_gguf.py` does for `LlamaForCausalLM`: `llama.*` metadata, the byte-level BPE
//! tokenizer as `tokenizer.ggml.*` keys with the `llama-bpe` pre-tokenizer, Q and K rows
//! permuted for llama.cpp's interleaved rotation, and Llama 3.1+ rope scaling stored as the
//! `rope_freqs.weight` divisors.
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

/// The GGUF name of a Hugging Face Llama tensor.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.weight"))
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
    use gguf_file::Value as V;
    let config = read_json(&hf_dir.join("config.json"))?;
    if config.get("model_type").and_then(Value::as_str) != Some("llama") {
        return Err(invalid("config.json does not declare model_type llama"));
    }
    let hidden = usize_field(&config, "hidden_size")?;
    let heads = usize_field(&config, "num_attention_heads")?;
    let kv_heads = usize_field(&config, "num_key_value_heads").unwrap_or(heads);
    let head_dim = usize_field(&config, "head_dim").unwrap_or(hidden / heads);
    let rows = usize_field(&config, "vocab_size")?;
    let rope = config
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .or_else(|| config.get("rope_parameters"));
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
    let vocab = vocab(&tokenizer, rows)?;
    let token_id = |text: &str| {
        vocab
            .tokens
            .iter()
            .position(|t| t == text)
            .map(|i| i as u32)
    };
    let template_file = hf_dir.join("chat_template.jinja");
    let template = if template_file.is_file() {
        Some(fs::read_to_string(template_file)?)
    } else {
        None
    };

    let mut metadata: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        (
            "general.name",
            V::String("passerelle-converted-llama".into()),
        ),
        (
            "llama.block_count",
            V::U32(u32_of(usize_field(&config, "num_hidden_layers")?)?),
        ),
        (
            "llama.context_length",
            V::U32(u32_of(usize_field(&config, "max_position_embeddings")?)?),
        ),
        ("llama.embedding_length", V::U32(u32_of(hidden)?)),
        (
            "llama.feed_forward_length",
            V::U32(u32_of(usize_field(&config, "intermediate_size")?)?),
        ),
        ("llama.attention.head_count", V::U32(u32_of(heads)?)),
        ("llama.attention.head_count_kv", V::U32(u32_of(kv_heads)?)),
        ("llama.attention.key_length", V::U32(u32_of(head_dim)?)),
        ("llama.attention.value_length", V::U32(u32_of(head_dim)?)),
        ("llama.rope.dimension_count", V::U32(u32_of(head_dim)?)),
        ("llama.rope.freq_base", V::F32(theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(eps as f32)),
        ("llama.vocab_size", V::U32(u32_of(rows)?)),
        ("tokenizer.ggml.model", V::String("gpt2".into())),
        ("tokenizer.ggml.pre", V::String("llama-bpe".into())),
        (
            "tokenizer.ggml.tokens",
            V::Array(vocab.tokens.iter().cloned().map(V::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            V::Array(vocab.types.iter().copied().map(V::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            V::Array(vocab.merges.iter().cloned().map(V::String).collect()),
        ),
        ("tokenizer.ggml.add_bos_token", V::Bool(true)),
    ];
    if let Some(id) = token_id("<|begin_of_text|>") {
        metadata.push(("tokenizer.ggml.bos_token_id", V::U32(id)));
    }
    if let Some(id) = token_id("<|eot_id|>") {
        metadata.push(("tokenizer.ggml.eos_token_id", V::U32(id)));
    }
    if let Some(template) = template {
        metadata.push(("tokenizer.chat_template", V::String(template)));
    }

    let weights = candle_core::safetensors::load(hf_dir.join("model.safetensors"), &Device::Cpu)?;
    let plan = QuantPlan {
        dtype,
        layers: usize_field(&config, "num_hidden_layers")?,
        tied_embeddings: !weights.contains_key("lm_head.weight"),
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(weights.len() + 1);
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    for hf in names {
        let name = gguf_name(hf).ok_or_else(|| invalid(format!("no GGUF name for {hf}")))?;
        let mut data = weights[hf].to_dtype(candle_core::DType::F32)?;
        if hf.ends_with("q_proj.weight") {
            data = permute(&data, heads)?;
        } else if hf.ends_with("k_proj.weight") {
            data = permute(&data, kv_heads)?;
        }
        let stored = plan.tensor_type(&name, data.dims())?;
        tensors.push((name, QTensor::quantize(&data, stored)?));
    }
    let scaled = rope.filter(|r| {
        r.get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(Value::as_str)
            == Some("llama3")
    });
    if let Some(rope) = scaled {
        let divisors = llama3_rope_divisors(rope, theta, head_dim)?;
        let tensor = Tensor::new(divisors, &Device::Cpu)?;
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&tensor, candle_core::quantized::GgmlDType::F32)?,
        ));
    }

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    let metadata_refs: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
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
        assert_eq!(gguf_name("model.layers.0.mlp.gate_proj.bias"), None);
    }
}
