//! A byte-level BPE vocabulary laid out like Qwen2's, learned deterministically from bundled
//! English text, and the `tokenizers` pipeline Qwen2 wraps around it.
//!
//! Ids `0..256` are the GPT-2 byte symbols in GPT-2's order, then the learned merges, then the
//! added tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>` special; `<tool_call>`,
//! `</tool_call>` not special, as in Qwen2.5), then `<|reserved_N|>` padding up to the embedding
//! size. As in the real checkpoints, `tokenizer.json` stops before the padding (Qwen2.5 has
//! 151,665 tokens for 151,936 embedding rows) while GGUF lists every row, marking the padding
//! UNUSED the way llama.cpp's converter does; no text maps to it and it decodes to nothing.
//!
//! With [`VocabFill::Words`] the rows after the added tokens hold synthetic words instead
//! (`Ġw0`, `Ġw1`, ...): ordinary BPE tokens that no merge produces, so no text encodes to them,
//! but each decodes to its own text. `tokenizer.json` then lists the added tokens in the BPE
//! vocabulary too, as llama.cpp and GGUF readers do, so that they keep their ids below the words.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokenizers::{
    AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    SplitDelimiterBehavior, Tokenizer,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::BPE,
    normalizers::unicode::NFC,
    pre_tokenizers::{
        PreTokenizerWrapper, byte_level::ByteLevel, sequence::Sequence, split::Split,
        split::SplitPattern,
    },
};

use crate::models::{Qwen2Spec, TestkitError, VocabFill};

/// Qwen2's pre-tokenizer regex, verbatim from its `tokenizer.json`.
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const CORPUS: &str = include_str!("corpus.txt");

/// Added tokens in id order: content and whether it is special.
const ADDED: [(&str, bool); 5] = [
    ("<|endoftext|>", true),
    ("<|im_start|>", true),
    ("<|im_end|>", true),
    ("<tool_call>", false),
    ("</tool_call>", false),
];

/// What a token is, in GGUF's `tokenizer.ggml.token_type` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A byte symbol or a merge.
    Normal,
    /// A special added token (skipped when decoding).
    Control,
    /// An added token that is ordinary text.
    UserDefined,
    /// Embedding padding no text maps to.
    Unused,
}

impl TokenKind {
    /// The llama.cpp `llama_token_type` value.
    pub fn gguf_type(self) -> i32 {
        match self {
            Self::Normal => 1,
            Self::Control => 3,
            Self::UserDefined => 4,
            Self::Unused => 5,
        }
    }
}

/// A Qwen2-style vocabulary: tokens by id, their kinds and the BPE merges.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    merges: Vec<(String, String)>,
    fill: VocabFill,
}

impl Vocabulary {
    /// Learns `spec.merges` merges and pads to the spec's embedding size.
    pub fn for_spec(spec: &Qwen2Spec) -> Result<Self, TestkitError> {
        let table = byte_to_char();
        let mut tokens: Vec<String> = gpt2_byte_order()
            .map(|b| table[usize::from(b)].to_string())
            .collect();
        let merges = learn_merges(spec.merges, &mut tokens)?;
        let mut kinds = vec![TokenKind::Normal; tokens.len()];
        for (content, special) in ADDED {
            tokens.push(content.to_owned());
            kinds.push(if special {
                TokenKind::Control
            } else {
                TokenKind::UserDefined
            });
        }
        let target = spec
            .vocab_size
            .unwrap_or_else(|| tokens.len().next_multiple_of(64));
        if target < tokens.len() {
            return Err(TestkitError::InvalidSpec(format!(
                "vocab_size {target} is smaller than the {} tokens of the tokenizer",
                tokens.len()
            )));
        }
        let rows = target - tokens.len();
        match spec.vocab_fill {
            VocabFill::Reserved => {
                for n in 0..rows {
                    tokens.push(format!("<|reserved_{n}|>"));
                    kinds.push(TokenKind::Unused);
                }
            }
            VocabFill::Words => {
                let space = byte_to_char()[usize::from(b' ')];
                let taken: HashSet<String> = tokens.iter().cloned().collect();
                let words = (0..)
                    .map(|n| format!("{space}w{n}"))
                    .filter(|word| !taken.contains(word))
                    .take(rows);
                for word in words {
                    tokens.push(word);
                    kinds.push(TokenKind::Normal);
                }
            }
        }
        Ok(Self {
            tokens,
            kinds,
            merges,
            fill: spec.vocab_fill,
        })
    }

    /// Tokens by id: byte-level symbols for BPE tokens, literal text for the others.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Kinds by id.
    pub fn kinds(&self) -> &[TokenKind] {
        &self.kinds
    }

    /// BPE merges in rank order.
    pub fn merges(&self) -> &[(String, String)] {
        &self.merges
    }

    /// Number of ids (rows of the embedding matrix).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Never true: the 256 byte symbols are always there.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of a token given by its vocabulary string.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.tokens
            .iter()
            .position(|t| t == token)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// `<|endoftext|>`: BOS/pad token of Qwen2.
    pub fn endoftext_id(&self) -> u32 {
        self.required_id("<|endoftext|>")
    }

    /// `<|im_start|>`.
    pub fn im_start_id(&self) -> u32 {
        self.required_id("<|im_start|>")
    }

    /// `<|im_end|>`: the chat end-of-turn, Qwen2.5-Instruct's EOS.
    pub fn im_end_id(&self) -> u32 {
        self.required_id("<|im_end|>")
    }

    fn required_id(&self, token: &str) -> u32 {
        // Every vocabulary is built with the ADDED tokens, so they are always present.
        self.id(token)
            .unwrap_or_else(|| unreachable!("{token} is always added"))
    }

    /// The added tokens (content, special) with their ids.
    pub fn added_tokens(&self) -> impl Iterator<Item = (u32, &str, bool)> + '_ {
        self.kinds.iter().enumerate().filter_map(|(id, kind)| {
            let special = match kind {
                TokenKind::Control => true,
                TokenKind::UserDefined => false,
                TokenKind::Normal | TokenKind::Unused => return None,
            };
            Some((u32::try_from(id).ok()?, self.tokens[id].as_str(), special))
        })
    }

    /// Ids the tokenizer knows: everything but the padding.
    pub fn tokenizer_len(&self) -> usize {
        self.kinds
            .iter()
            .filter(|k| **k != TokenKind::Unused)
            .count()
    }

    /// The tokenizer Qwen2 ships: NFC, Qwen2 regex split, byte-level BPE, byte-level decoder,
    /// with the added tokens numbered right after the BPE tokens.
    pub fn tokenizer(&self) -> Result<Tokenizer, TestkitError> {
        // `tokenizers` numbers an added token after the model's ids unless the model already
        // knows it, so with words after the added tokens the BPE vocabulary lists those too.
        let in_bpe = |kind: TokenKind| match self.fill {
            VocabFill::Reserved => kind == TokenKind::Normal,
            VocabFill::Words => kind != TokenKind::Unused,
        };
        let vocab: tokenizers::models::bpe::Vocab = self
            .tokens
            .iter()
            .zip(&self.kinds)
            .enumerate()
            .filter(|(_, (_, kind))| in_bpe(**kind))
            .map(|(id, (token, _))| (token.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .build()
            .map_err(TestkitError::tokenizer)?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(TestkitError::tokenizer)?;
        tokenizer.with_pre_tokenizer(Some(qwen2_pre_tokenizer()?));
        tokenizer.with_post_processor(Some(ByteLevel::new(false, false, false)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
        let added: Vec<AddedToken> = self
            .added_tokens()
            .map(|(_, content, special)| AddedToken::from(content, special).normalized(false))
            .collect();
        tokenizer
            .add_special_tokens(added)
            .map_err(TestkitError::tokenizer)?;
        // `tokenizers` numbers added tokens after the model's; the layout above must agree.
        for (id, content, _) in self.added_tokens() {
            if tokenizer.token_to_id(content) != Some(id) {
                return Err(TestkitError::InvalidSpec(format!(
                    "{content} did not get id {id}"
                )));
            }
        }
        Ok(tokenizer)
    }
}

/// Qwen2's pre-tokenizer: the regex split, then byte-level symbols without a regex of its own.
pub fn qwen2_pre_tokenizer() -> Result<PreTokenizerWrapper, TestkitError> {
    let split = Split::new(
        SplitPattern::Regex(QWEN2_SPLIT_REGEX.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(TestkitError::tokenizer)?;
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ])))
}

/// GPT-2's `bytes_to_unicode`: every byte as a printable char, printable ASCII and Latin-1 as
/// themselves and the rest shifted past U+0100.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for byte in 0..=255u8 {
        table[usize::from(byte)] = if is_printable(byte) {
            char::from(byte)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
}

fn is_printable(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Bytes in GPT-2 vocabulary order: printable ones first, then the shifted ones.
fn gpt2_byte_order() -> impl Iterator<Item = u8> {
    (0..=255u8)
        .filter(|b| is_printable(*b))
        .chain((0..=255u8).filter(|b| !is_printable(*b)))
}

/// Classic BPE training over the corpus' pre-tokenized words: repeatedly merge the most frequent
/// adjacent pair, ties broken by the pair's text so the result never depends on hash order.
/// New tokens are appended to `tokens`.
fn learn_merges(
    count: usize,
    tokens: &mut Vec<String>,
) -> Result<Vec<(String, String)>, TestkitError> {
    let mut ids: HashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let mut words: Vec<(Vec<u32>, u64)> = pre_tokenized_words(CORPUS)?
        .into_iter()
        .map(|(word, freq)| (word.chars().map(|c| ids[&c.to_string()]).collect(), freq))
        .collect();
    let mut merges = Vec::with_capacity(count);
    while merges.len() < count {
        let mut pairs: HashMap<(u32, u32), u64> = HashMap::new();
        for (symbols, freq) in &words {
            for pair in symbols.windows(2) {
                *pairs.entry((pair[0], pair[1])).or_default() += freq;
            }
        }
        let Some((&(left, right), &best)) = pairs.iter().max_by(|(a, ca), (b, cb)| {
            ca.cmp(cb).then_with(|| {
                let text = |p: &(u32, u32)| (&tokens[p.0 as usize], &tokens[p.1 as usize]);
                // Reversed so that, among equal counts, the lexicographically smallest pair wins.
                text(b).cmp(&text(a))
            })
        }) else {
            break;
        };
        if best < 2 {
            break;
        }
        let merged = format!("{}{}", tokens[left as usize], tokens[right as usize]);
        let merged_id = *ids.entry(merged.clone()).or_insert_with(|| {
            tokens.push(merged);
            (tokens.len() - 1) as u32
        });
        merges.push((
            tokens[left as usize].clone(),
            tokens[right as usize].clone(),
        ));
        for (symbols, _) in &mut words {
            merge_pair(symbols, (left, right), merged_id);
        }
    }
    Ok(merges)
}

fn merge_pair(symbols: &mut Vec<u32>, pair: (u32, u32), merged: u32) {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && (symbols[i], symbols[i + 1]) == pair {
            out.push(merged);
            i += 2;
        } else {
            out.push(symbols[i]);
            i += 1;
        }
    }
    *symbols = out;
}

/// The corpus split into byte-level words by Qwen2's own pre-tokenizer, with their counts.
fn pre_tokenized_words(text: &str) -> Result<BTreeMap<String, u64>, TestkitError> {
    let pre_tokenizer = qwen2_pre_tokenizer()?;
    let mut pre_tokenized = PreTokenizedString::from(text);
    pre_tokenizer
        .pre_tokenize(&mut pre_tokenized)
        .map_err(TestkitError::tokenizer)?;
    let mut words = BTreeMap::new();
    for (word, _, _) in pre_tokenized.get_splits(OffsetReferential::Original, OffsetType::Byte) {
        *words.entry(word.to_owned()).or_default() += 1;
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_onto_printable_chars() {
        let table = byte_to_char();
        let mut seen: Vec<char> = table.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[usize::from(b'\n')], 'Ċ');
        assert_eq!(table[usize::from(b'a')], 'a');
    }

    #[test]
    fn words_fill_the_rows_after_the_added_tokens_and_decode_to_text() {
        let spec = Qwen2Spec {
            vocab_size: Some(1024),
            vocab_fill: VocabFill::Words,
            ..Qwen2Spec::tiny()
        };
        let words = Vocabulary::for_spec(&spec).unwrap();
        let reserved = Vocabulary::for_spec(&Qwen2Spec {
            vocab_fill: VocabFill::Reserved,
            ..spec.clone()
        })
        .unwrap();
        assert_eq!(words.len(), 1024);
        assert_eq!(words.tokenizer_len(), 1024);
        assert!(!words.kinds().contains(&TokenKind::Unused));
        // Everything up to the padding is the same vocabulary, special ids included.
        let learned = reserved.tokenizer_len();
        assert_eq!(words.tokens()[..learned], reserved.tokens()[..learned]);
        assert_eq!(words.im_end_id(), reserved.im_end_id());
        assert_eq!(words.tokens()[learned], "Ġw0");
        let distinct: HashSet<&String> = words.tokens().iter().collect();
        assert_eq!(distinct.len(), words.len());

        let tokenizer = words.tokenizer().unwrap();
        assert_eq!(tokenizer.get_vocab_size(true), 1024);
        for id in 0..1024u32 {
            let text = tokenizer.decode(&[id], false).unwrap();
            assert!(!text.is_empty(), "id {id} decodes to nothing");
        }
        assert_eq!(
            tokenizer.decode(&[learned as u32 + 7], true).unwrap(),
            " w7"
        );
        // Text still encodes through the learned merges, never to a synthetic word.
        let ids = tokenizer.encode(" w7 the model", false).unwrap();
        assert!(ids.get_ids().iter().all(|id| (*id as usize) < learned));
    }

    #[test]
    fn learning_is_deterministic_and_makes_common_words_single_tokens() {
        let spec = Qwen2Spec::tiny();
        let a = Vocabulary::for_spec(&spec).unwrap();
        let b = Vocabulary::for_spec(&spec).unwrap();
        assert_eq!(a.tokens(), b.tokens());
        assert_eq!(a.merges(), b.merges());
        assert_eq!(a.len() % 64, 0);
        assert_eq!(a.tokens()[0], "!");
        for word in ["Ġthe", "Ġand", "Ġmodel", "The"] {
            assert!(a.id(word).is_some(), "{word} should be one token");
        }
    }
}
