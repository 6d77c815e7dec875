//! The model's tokenizer: loaded from `tokenizer.json`, or rebuilt from a GGUF file's metadata,
//! plus the per-token bytes that incremental decoding and logprobs need.

mod gguf;
mod pieces;

use std::{collections::HashMap, path::Path};

use candle_core::quantized::gguf_file::Value;
use tokenizers::Tokenizer;

pub use gguf::tokenizer_from_gguf;
pub(crate) use gguf::{bad_metadata, metadata};
pub use pieces::TokenPieces;

use crate::error::LoadError;

/// A tokenizer and the bytes of each of its tokens.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pieces: TokenPieces,
    /// The text of every special token (`<|im_start|>`), for [`TextTokenizer::neutralize`].
    special_texts: Vec<String>,
}

/// Breaks a special token's text without changing what a reader sees.
const WORD_JOINER: char = '\u{2060}';

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        Self::new(Tokenizer::from_file(path).map_err(LoadError::Tokenizer)?)
    }

    /// Builds the tokenizer described by GGUF metadata.
    pub fn from_gguf(md: &HashMap<String, Value>) -> Result<Self, LoadError> {
        Self::new(tokenizer_from_gguf(md)?)
    }

    fn new(inner: Tokenizer) -> Result<Self, LoadError> {
        let pieces = TokenPieces::from_tokenizer(&inner)?;
        let mut special_texts: Vec<String> = inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|token| token.special && token.content.chars().count() > 1)
            .map(|token| token.content)
            .collect();
        special_texts.sort();
        Ok(Self {
            inner,
            pieces,
            special_texts,
        })
    }

    /// `text` with every special token's text broken by a word joiner after its first
    /// character, so that text from a message can never become a special token (a user's
    /// `<|im_start|>system` opening a turn of its own). Borrowed when there is none.
    pub fn neutralize<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut text = std::borrow::Cow::Borrowed(text);
        for special in &self.special_texts {
            if text.contains(special.as_str()) {
                let mut chars = special.chars();
                let first = chars.next().map(String::from).unwrap_or_default();
                let broken = format!("{first}{WORD_JOINER}{}", chars.as_str());
                text = std::borrow::Cow::Owned(text.replace(special.as_str(), &broken));
            }
        }
        text
    }

    /// Token ids of `text`. Special-token text (`<|im_start|>`) always maps to its id;
    /// `add_special_tokens` only controls the post-processor (BOS/EOS insertion).
    pub fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, tokenizers::Error> {
        Ok(self
            .inner
            .encode(text, add_special_tokens)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, optionally leaving special tokens out.
    pub fn decode(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
    ) -> Result<String, tokenizers::Error> {
        self.inner.decode(ids, skip_special_tokens)
    }

    /// The id of a token given by its text, added tokens included.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn pieces(&self) -> &TokenPieces {
        &self.pieces
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
