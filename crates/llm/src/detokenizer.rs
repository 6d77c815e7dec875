//! Incremental detokenization that never emits broken UTF-8.
//!
//! Token bytes are appended to a buffer and only whole characters leave it: a character whose
//! bytes are split across tokens (emoji, CJK) waits for its last byte. Bytes that can never
//! become valid UTF-8 are emitted as U+FFFD rather than held forever.

use crate::tokenizer::TokenPieces;

/// Turns generated token ids into text, one token at a time.
#[derive(Debug)]
pub struct Detokenizer<'a> {
    pieces: &'a TokenPieces,
    pending: Vec<u8>,
}

impl<'a> Detokenizer<'a> {
    pub fn new(pieces: &'a TokenPieces) -> Self {
        Self {
            pieces,
            pending: Vec::new(),
        }
    }

    /// The text completed by `token`; empty while a character is incomplete. Special tokens
    /// add no text.
    pub fn push(&mut self, token: u32) -> String {
        if !self.pieces.is_special(token) {
            self.pending.extend_from_slice(self.pieces.bytes(token));
        }
        self.take_complete()
    }

    /// Whatever is still held, with incomplete characters as U+FFFD: the generation is over.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    // `valid_up_to` bytes were just checked to be UTF-8.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match err.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }
}
