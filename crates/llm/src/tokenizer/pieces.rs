//! The raw bytes behind every token id, for incremental decoding and logprobs.
//!
//! Byte-level BPE vocabularies (GPT-2, Qwen2) spell each byte as a printable character; undoing
//! that per token gives exact bytes, so a multi-byte character split across tokens is never
//! decoded into replacement characters mid-stream.

use tokenizers::{DecoderWrapper, Tokenizer};

use crate::error::LoadError;

/// GPT-2's `bytes_to_unicode`: printable ASCII and Latin-1 bytes as themselves, the other bytes
/// shifted to U+0100 and up, in byte order.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(byte)] = if printable {
            char::from(byte)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
}

/// Token id -> bytes, and whether the token is special (left out of generated text).
#[derive(Debug, Clone)]
pub struct TokenPieces {
    bytes: Vec<Box<[u8]>>,
    special: Vec<bool>,
}

impl TokenPieces {
    /// Reads every token of a byte-level BPE tokenizer. Other decoders are refused: their tokens
    /// do not map to bytes one by one.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self, LoadError> {
        match tokenizer.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => {}
            other => {
                return Err(LoadError::UnsupportedTokenizer(format!(
                    "decoder {} (only byte-level BPE tokenizers such as Qwen2's are supported)",
                    other.map_or("none".to_owned(), |d| format!("{d:?}"))
                )));
            }
        }
        let table = byte_to_char();
        let mut char_to_byte = std::collections::HashMap::with_capacity(256);
        for (byte, ch) in table.iter().enumerate() {
            char_to_byte.insert(*ch, byte as u8);
        }
        let added = tokenizer.get_added_tokens_decoder();
        let model_vocab = tokenizer.get_vocab(false);
        let len = model_vocab
            .values()
            .chain(added.keys())
            .map(|id| *id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut bytes: Vec<Box<[u8]>> = vec![Box::default(); len];
        let mut special = vec![false; len];
        for (token, id) in model_vocab {
            let mut out = Vec::with_capacity(token.len());
            for ch in token.chars() {
                match char_to_byte.get(&ch) {
                    Some(byte) => out.push(*byte),
                    // Not a byte symbol: keep the character itself, as the decoder would.
                    None => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            bytes[id as usize] = out.into_boxed_slice();
        }
        // Added tokens are literal text and take precedence over a model entry with their id.
        for (id, token) in added {
            bytes[id as usize] = token.content.as_bytes().into();
            special[id as usize] = token.special;
        }
        Ok(Self { bytes, special })
    }

    /// The bytes of `id`; empty for ids beyond the tokenizer (padding rows of the embedding).
    pub fn bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], |b| b)
    }

    /// Special tokens are control markers, not text.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The token as text, lossily when it is part of a multi-byte character.
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.bytes(id)).into_owned()
    }

    /// Number of ids the tokenizer knows.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_symbols_cover_every_byte_once() {
        let table = byte_to_char();
        let unique: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(unique.len(), 256);
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[0xF0], 'ð');
    }
}
