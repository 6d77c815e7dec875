//! Loading a llama.cpp GGUF file: weights, tokenizer and chat template all come from the file.

use std::{collections::BTreeSet, fs::File, path::Path};

use candle_core::{Device, quantized::gguf_file};

use crate::{
    error::LoadError,
    model::{Architecture, ModelAssets, ModelFormat, decoder::Decoder},
    sampler::SamplingDefaults,
    tokenizer::{TextTokenizer, bad_metadata, metadata},
};

/// Texts llama.cpp treats as end-of-generation when they are control tokens, whatever
/// `eos_token_id` says (`llama_vocab::impl::load`): an instruct model's end-of-turn token
/// and its base end-of-text token both end a completion.
const END_OF_GENERATION_TEXTS: [&str; 9] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<|eom_id|>",
];

pub(super) fn load(path: &Path, device: &Device) -> Result<(Decoder, ModelAssets), LoadError> {
    let mut file = File::open(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut file).map_err(|err| LoadError::NotAModel {
        path: path.to_path_buf(),
        reason: format!("not a readable GGUF file: {err}"),
    })?;
    let md = &content.metadata;
    let architecture = metadata(md, "general.architecture")?
        .to_string()
        .map_err(|e| bad_metadata("general.architecture", e))?;
    let Some(arch) = Architecture::from_name(architecture) else {
        return Err(LoadError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found: architecture.clone(),
        });
    };
    let context_key = format!("{}.context_length", arch.as_str());
    let context_length = metadata(md, &context_key)?
        .to_u32()
        .map_err(|e| bad_metadata(&context_key, e))? as usize;
    let vocab_size = content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|info| info.shape.dims().first().copied())
        .ok_or_else(|| LoadError::NotAModel {
            path: path.to_path_buf(),
            reason: "has no token_embd.weight tensor".to_owned(),
        })?;

    let tokenizer = TextTokenizer::from_gguf(md)?;
    let token_id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let token_text = |key: &str| token_id(key).map(|id| tokenizer.pieces().text(id));
    let bos_token = token_text("tokenizer.ggml.bos_token_id");
    let eos_token = token_text("tokenizer.ggml.eos_token_id");
    let chat_template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();

    let mut eos_token_ids: BTreeSet<u32> = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .into_iter()
    .filter_map(token_id)
    .collect();
    eos_token_ids.extend(
        END_OF_GENERATION_TEXTS
            .iter()
            .filter_map(|text| tokenizer.token_id(text))
            .filter(|id| tokenizer.pieces().is_special(*id)),
    );

    let weights = Decoder::from_gguf(&content, &mut file, device)?;
    let assets = ModelAssets {
        format: ModelFormat::Gguf,
        architecture: arch,
        context_length,
        vocab_size,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        eos_token_ids,
        // GGUF files carry no sampling defaults.
        sampling_defaults: SamplingDefaults::default(),
    };
    Ok((weights, assets))
}
