//! Building a `tokenizers::Tokenizer` from a GGUF file's `tokenizer.ggml.*` metadata, the way
//! llama.cpp builds its own for `tokenizer.ggml.model == "gpt2"`.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::{
    AddedToken, SplitDelimiterBehavior, Tokenizer,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::{BPE, Vocab},
    normalizers::unicode::NFC,
    pre_tokenizers::{
        PreTokenizerWrapper,
        byte_level::ByteLevel,
        sequence::Sequence,
        split::{Split, SplitPattern},
    },
};

use crate::error::LoadError;

/// Qwen2's pre-tokenizer regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's pre-tokenizer regex (`LLAMA_VOCAB_PRE_TYPE_LLAMA3`): like Qwen2's, but digits go
/// in runs of up to three.
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The byte-level BPE pre-tokenizers supported, by `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizer {
    Qwen2,
    Llama3,
}

impl PreTokenizer {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "qwen2" => Some(Self::Qwen2),
            "llama-bpe" | "llama3" | "llama-v3" => Some(Self::Llama3),
            _ => None,
        }
    }

    fn regex(self) -> &'static str {
        match self {
            Self::Qwen2 => QWEN2_SPLIT_REGEX,
            Self::Llama3 => LLAMA3_SPLIT_REGEX,
        }
    }
}

/// llama.cpp `llama_token_type` values: control and user-defined tokens become added tokens;
/// unused ones (embedding padding) are left out, so nothing encodes to them and they decode to
/// nothing, as in llama.cpp and in the `tokenizer.json` such files are converted from.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_UNUSED: i32 = 5;

/// Reads a metadata value, naming the key in errors.
pub(crate) fn metadata<'a>(
    md: &'a HashMap<String, Value>,
    key: &str,
) -> Result<&'a Value, LoadError> {
    md.get(key).ok_or_else(|| LoadError::GgufMetadata {
        key: key.to_owned(),
        reason: "missing".to_owned(),
    })
}

pub(crate) fn bad_metadata(key: &str, err: impl std::fmt::Display) -> LoadError {
    LoadError::GgufMetadata {
        key: key.to_owned(),
        reason: err.to_string(),
    }
}

fn string_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, LoadError> {
    metadata(md, key)?
        .to_vec()
        .map_err(|e| bad_metadata(key, e))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| bad_metadata(key, e)))
        .collect()
}

/// Builds the tokenizer a GGUF file describes. Only byte-level BPE (`gpt2`) with Qwen2's or
/// Llama 3's pre-tokenizer is supported; anything else is refused by name.
pub fn tokenizer_from_gguf(md: &HashMap<String, Value>) -> Result<Tokenizer, LoadError> {
    let model = metadata(md, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| bad_metadata("tokenizer.ggml.model", e))?;
    if model != "gpt2" {
        return Err(LoadError::UnsupportedTokenizer(format!(
            "GGUF tokenizer.ggml.model `{model}` (only `gpt2`, byte-level BPE, is supported)"
        )));
    }
    let pre = match md.get("tokenizer.ggml.pre") {
        Some(v) => v
            .to_string()
            .map_err(|e| bad_metadata("tokenizer.ggml.pre", e))?
            .as_str(),
        None => "(missing)",
    };
    let Some(pre) = PreTokenizer::from_name(pre) else {
        return Err(LoadError::UnsupportedTokenizer(format!(
            "GGUF tokenizer.ggml.pre `{pre}` (only `qwen2` and `llama-bpe` are supported)"
        )));
    };

    let tokens = string_array(md, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| bad_metadata("tokenizer.ggml.token_type", e))?
            .iter()
            .map(|t| {
                t.to_i32()
                    .map_err(|e| bad_metadata("tokenizer.ggml.token_type", e))
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let merges = string_array(md, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|merge| {
            // Byte-level symbols spell spaces as `Ġ`, so the only space separates the pair.
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| {
                    bad_metadata("tokenizer.ggml.merges", format!("`{merge}` is not a pair"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let kind = |id: usize| types.get(id).copied().unwrap_or(1);
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| kind(*id) != TOKEN_TYPE_UNUSED)
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(LoadError::Tokenizer)?;
    let mut tokenizer = Tokenizer::new(bpe);
    // Qwen2's own tokenizer.json normalises to NFC; llama.cpp skips that step, but the GGUF names
    // Qwen2's pipeline and both must encode the same text alike. Llama 3's has no normaliser.
    if pre == PreTokenizer::Qwen2 {
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(LoadError::Tokenizer)?;
    }
    let split = Split::new(
        SplitPattern::Regex(pre.regex().to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(LoadError::Tokenizer)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]))));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, false, false)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));

    // Control tokens are special (never produced from text by BPE, skipped when decoding);
    // user-defined ones are matched whole in text but decode as text.
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter().copied().chain(std::iter::repeat(1)))
        .filter_map(|(token, kind)| match kind {
            TOKEN_TYPE_CONTROL => Some(AddedToken::from(token.clone(), true).normalized(false)),
            TOKEN_TYPE_USER_DEFINED => {
                Some(AddedToken::from(token.clone(), false).normalized(false))
            }
            _ => None,
        })
        .collect();
    tokenizer
        .add_special_tokens(added)
        .map_err(LoadError::Tokenizer)?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(entries: &[(&str, Value)]) -> HashMap<String, Value> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn refuses_other_tokenizer_models_by_name() {
        let err = tokenizer_from_gguf(&md(&[(
            "tokenizer.ggml.model",
            Value::String("llama".into()),
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("`llama`"), "{err}");
        let err = tokenizer_from_gguf(&md(&[
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("gemma".into())),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("`gemma`"), "{err}");
    }

    #[test]
    fn builds_merges_and_special_tokens() {
        let tokens = ["a", "b", "ab", "Ġ", "<|im_end|>", "[PAD5]"].map(|t| Value::String(t.into()));
        let tokenizer = tokenizer_from_gguf(&md(&[
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("qwen2".into())),
            ("tokenizer.ggml.tokens", Value::Array(tokens.to_vec())),
            (
                "tokenizer.ggml.token_type",
                Value::Array([1, 1, 1, 1, 3, 5].map(Value::I32).to_vec()),
            ),
            (
                "tokenizer.ggml.merges",
                Value::Array(vec![Value::String("a b".into())]),
            ),
        ]))
        .unwrap();
        let ids = tokenizer
            .encode("ab<|im_end|>", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, vec![2, 4]);
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "ab");
        assert_eq!(
            tokenizer.decode(&[5], false).unwrap(),
            "",
            "unused padding decodes to nothing"
        );
        assert_eq!(tokenizer.token_to_id("[PAD5]"), None);
    }
}
