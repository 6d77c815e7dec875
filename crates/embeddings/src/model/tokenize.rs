//! The model's `tokenizer.json`, set up as sentence-transformers uses it.
//!
//! sentence-transformers ignores the truncation and padding stored in `tokenizer.json` (MiniLM's
//! says "pad to 128, truncate at 128") and truncates at the model's `max_seq_length` instead, so
//! this does too. Padding is left to the batch builder, which pads each batch to its own longest
//! input. `do_lower_case` puts a lowercasing step in front of the tokenizer's normaliser, as
//! sentence-transformers does.

use std::path::Path;

use tokenizers::{
    NormalizerWrapper, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
    normalizers::{Lowercase, Sequence},
};

use crate::error::LoadError;

/// One tokenized input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The input was longer than `max_seq_length` and lost its tail.
    pub truncated: bool,
}

/// A tokenizer that truncates at the model's limit and never pads.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for the one case where the truncating one cannot
    /// tell whether it cut anything (see [`TextEncoder::encode`]).
    untruncated: Tokenizer,
    max_seq_length: usize,
    pad_id: u32,
}

impl TextEncoder {
    pub fn load(
        path: &Path,
        max_seq_length: usize,
        lowercase: bool,
        default_pad_id: u32,
    ) -> Result<Self, LoadError> {
        let tokenizer_error = |err: tokenizers::Error| LoadError::Tokenizer {
            path: path.to_path_buf(),
            reason: err.to_string(),
        };
        let mut tokenizer = Tokenizer::from_file(path).map_err(tokenizer_error)?;
        let pad_id = tokenizer
            .get_padding()
            .map_or(default_pad_id, |padding| padding.pad_id);
        tokenizer.with_padding(None);
        let untruncated = {
            let mut copy = tokenizer.clone();
            copy.with_truncation(None).map_err(tokenizer_error)?;
            copy
        };
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(tokenizer_error)?;
        let mut untruncated = untruncated;
        if lowercase {
            let mut steps = vec![NormalizerWrapper::Lowercase(Lowercase)];
            steps.extend(tokenizer.get_normalizer().cloned());
            let normalizer = Sequence::new(steps);
            untruncated
                .with_normalizer(Some(normalizer.clone()))
                .map_err(tokenizer_error)?;
            tokenizer
                .with_normalizer(Some(normalizer))
                .map_err(tokenizer_error)?;
        }
        Ok(Self {
            tokenizer,
            untruncated,
            max_seq_length,
            pad_id,
        })
    }

    /// The id padding positions carry; the attention mask hides them anyway.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The byte offset in `text` at which each of its tokens starts, without special tokens
    /// and without truncation: what the chunker counts tokens with.
    pub fn token_starts(&self, text: &str) -> Result<Vec<usize>, tokenizers::Error> {
        let encoding = self.untruncated.encode(text, false)?;
        let mut starts: Vec<usize> = encoding.get_offsets().iter().map(|(s, _)| *s).collect();
        // Sorted already for BERT tokenizers; sorting keeps counting right for any other.
        starts.sort_unstable();
        Ok(starts)
    }

    /// How many special tokens ([CLS], [SEP]) the model adds to every input.
    pub fn special_tokens(&self) -> usize {
        self.untruncated
            .encode("", true)
            .map_or(2, |encoding| encoding.len())
    }

    /// Tokenizes `texts` with the model's special tokens, in parallel on the current rayon pool.
    ///
    /// The truncating tokenizer stops reading a text once it has `max_seq_length` tokens (which
    /// bounds the cost of a huge input), then cuts to make room for the special tokens; what it
    /// cut is kept as overflow. So an input is known to be truncated when it has overflow, and
    /// known not to be when it is shorter than the limit. Only an input exactly at the limit,
    /// from a tokenizer that adds no special tokens, is ambiguous; it is re-read in full.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Encoded>, tokenizers::Error> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self.tokenizer.encode_batch(inputs, true)?;
        encodings
            .into_iter()
            .zip(texts)
            .map(|(encoding, text)| {
                let at_limit = encoding.len() >= self.max_seq_length;
                let truncated = !encoding.get_overflowing().is_empty()
                    || (at_limit
                        && self.untruncated.encode(text.as_str(), true)?.len() > encoding.len());
                Ok(Encoded {
                    truncated,
                    ids: encoding.get_ids().to_vec(),
                    type_ids: encoding.get_type_ids().to_vec(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer whose file asks for fixed padding to 8 and truncation at 8, as
    /// MiniLM's asks for 128: both must be ignored.
    const TOKENIZER: &str = r#"{
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 9, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "[UNK]",
                  "vocab": {"[UNK]": 0, "hello": 1, "HELLO": 2, "world": 3, "[PAD]": 9}}
    }"#;

    fn encoder(max_seq_length: usize, lowercase: bool) -> TextEncoder {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, TOKENIZER).unwrap();
        TextEncoder::load(&path, max_seq_length, lowercase, 0).unwrap()
    }

    fn encode(encoder: &TextEncoder, text: &str) -> Encoded {
        encoder.encode(&[text.to_owned()]).unwrap().remove(0)
    }

    #[test]
    fn truncates_at_max_seq_length_and_never_pads() {
        let encoder = encoder(2, false);
        assert_eq!(encoder.pad_id(), 9);
        let short = encode(&encoder, "hello");
        assert_eq!(short.ids, vec![1]);
        assert!(!short.truncated);
        let long = encode(&encoder, "hello world hello");
        assert_eq!(long.ids, vec![1, 3]);
        assert!(long.truncated);
        // Exactly at the limit is not truncated, though the tokenizer stopped reading there.
        let exact = encode(&encoder, "hello world");
        assert_eq!(exact.ids, vec![1, 3]);
        assert!(!exact.truncated);
    }

    #[test]
    fn do_lower_case_lowercases_before_the_vocabulary() {
        assert_eq!(encode(&encoder(8, false), "HELLO").ids, vec![2]);
        assert_eq!(encode(&encoder(8, true), "HELLO World").ids, vec![1, 3]);
    }
}
