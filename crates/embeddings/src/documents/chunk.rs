//! Cutting a document into chunks: a pure policy over the text and the byte offsets at which
//! the model's tokenizer starts its tokens.
//!
//! The text is first cut into pieces at sentence ends and line breaks. A sentence longer than a
//! chunk is cut between words, and a word longer than a chunk (a long URL, a run of CJK text
//! without spaces) between tokens. Pieces are then packed in order into chunks of at most
//! `max_tokens` tokens. Each chunk after the first starts with the last pieces of the one
//! before, up to `overlap_tokens`, so a passage that straddles a chunk edge is whole in one of
//! them. A chunk is the slice of the text from its first piece's start to its last piece's
//! end: it keeps the document's own spacing, and never ends inside a word unless that word is
//! longer than a whole chunk.
//!
//! Counting tokens over the whole text once, rather than per chunk, makes every count a binary
//! search. Pieces meet at whitespace, where BERT's pre-tokenizer splits anyway, so a chunk
//! tokenized alone has the tokens counted here.

use std::ops::Range;

/// How big chunks are, in tokens of the model's tokenizer (special tokens excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// Most tokens in one chunk; at least 1.
    pub max_tokens: usize,
    /// Most tokens a chunk repeats from the end of the one before; below `max_tokens`.
    pub overlap_tokens: usize,
}

/// One chunk: a byte range of the text and its token count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSpan {
    pub range: Range<usize>,
    pub tokens: usize,
}

/// Where a text's tokens start, for counting the tokens of any slice.
#[derive(Debug, Clone, Copy)]
pub struct TokenStarts<'a> {
    starts: &'a [usize],
}

impl<'a> TokenStarts<'a> {
    /// `starts`: the byte offset of each token's first character, in ascending order.
    pub fn new(starts: &'a [usize]) -> Self {
        Self { starts }
    }

    /// Tokens that start inside `range`.
    pub fn count(&self, range: &Range<usize>) -> usize {
        let before_end = self.starts.partition_point(|&s| s < range.end);
        let before_start = self.starts.partition_point(|&s| s < range.start);
        before_end - before_start
    }

    /// Token starts strictly inside `range` (not at its start).
    fn inside(&self, range: &Range<usize>) -> &'a [usize] {
        let from = self.starts.partition_point(|&s| s <= range.start);
        let to = self.starts.partition_point(|&s| s < range.end);
        &self.starts[from..to.max(from)]
    }
}

/// The chunks of `text`, in order. A text with nothing but whitespace has none.
pub fn chunk(text: &str, tokens: TokenStarts<'_>, params: ChunkParams) -> Vec<ChunkSpan> {
    let max = params.max_tokens.max(1);
    let overlap = params.overlap_tokens.min(max - 1);
    let mut pieces = Vec::new();
    for sentence in sentences(text) {
        if tokens.count(&sentence) <= max {
            pieces.push(sentence);
        } else {
            split_long(text, sentence, tokens, max, &mut pieces);
        }
    }
    let span = |first: usize, last: usize| pieces[first].start..pieces[last].end;
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < pieces.len() {
        let mut last = first;
        while last + 1 < pieces.len() && tokens.count(&span(first, last + 1)) <= max {
            last += 1;
        }
        let range = span(first, last);
        chunks.push(ChunkSpan {
            tokens: tokens.count(&range),
            range,
        });
        if last + 1 == pieces.len() {
            break;
        }
        // Back off from the next new piece over the pieces that fit in the overlap, but never
        // to this chunk's first piece (which would not progress)...
        let mut next = last + 1;
        while next > first + 1 && tokens.count(&span(next - 1, last)) <= overlap {
            next -= 1;
        }
        // ...and keep only as much overlap as leaves room for that new piece.
        while next <= last && tokens.count(&span(next, last + 1)) > max {
            next += 1;
        }
        first = next;
    }
    chunks
}

/// Sentences and lines of `text`, trimmed of whitespace, empty ones left out. A sentence ends
/// after `.`, `!`, `?` or `…` followed by whitespace, after the CJK full stops, and at every
/// line break.
pub fn sentences(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_is_space = chars.peek().is_none_or(|(_, n)| n.is_whitespace());
        let end = match c {
            '\n' => Some(i),
            '.' | '!' | '?' | '…' if next_is_space => Some(i + c.len_utf8()),
            '。' | '！' | '？' => Some(i + c.len_utf8()),
            _ => None,
        };
        if let Some(end) = end {
            out.extend(trimmed(text, start..end));
            start = end;
        }
    }
    out.extend(trimmed(text, start..text.len()));
    out
}

/// `range` without its leading and trailing whitespace; `None` when nothing is left.
fn trimmed(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let slice = &text[range.clone()];
    let start = range.start + (slice.len() - slice.trim_start().len());
    let end = range.end - (slice.len() - slice.trim_end().len());
    (start < end).then_some(start..end)
}

/// Cuts a sentence longer than `max` tokens into pieces of at most `max`: between words, and
/// between tokens inside a word longer than `max`.
fn split_long(
    text: &str,
    sentence: Range<usize>,
    tokens: TokenStarts<'_>,
    max: usize,
    pieces: &mut Vec<Range<usize>>,
) {
    let mut words = Vec::new();
    for word in words_of(text, sentence) {
        if tokens.count(&word) <= max {
            words.push(word);
            continue;
        }
        // Cut at every `max`-th token start inside the word that is a character boundary.
        let mut start = word.start;
        let mut taken = 0;
        for &cut in tokens.inside(&word) {
            taken += 1;
            if taken >= max && text.is_char_boundary(cut) {
                words.push(start..cut);
                start = cut;
                taken = 0;
            }
        }
        words.push(start..word.end);
    }
    let mut current: Option<Range<usize>> = None;
    for word in words {
        current = Some(match current {
            Some(open) if tokens.count(&(open.start..word.end)) <= max => open.start..word.end,
            Some(open) => {
                pieces.push(open);
                word
            }
            None => word,
        });
    }
    pieces.extend(current);
}

/// The whitespace-separated words inside `range`.
fn words_of(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in text[range.clone()].char_indices() {
        let at = range.start + i;
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                words.push(s..at);
                start = None;
            }
            (false, None) => start = Some(at),
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push(s..range.end);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in tokenizer: every word is one token, every punctuation mark another, and every
    /// CJK character its own, as BERT's basic tokenizer splits them.
    fn token_starts(text: &str) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut in_word = false;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() {
                in_word = false;
            } else if c.is_ascii_punctuation() || is_cjk(c) {
                starts.push(i);
                in_word = false;
            } else if !in_word {
                starts.push(i);
                in_word = true;
            }
        }
        starts
    }

    fn is_cjk(c: char) -> bool {
        ('\u{3000}'..='\u{9fff}').contains(&c)
    }

    fn chunks(text: &str, max_tokens: usize, overlap_tokens: usize) -> Vec<(String, usize)> {
        let starts = token_starts(text);
        chunk(
            text,
            TokenStarts::new(&starts),
            ChunkParams {
                max_tokens,
                overlap_tokens,
            },
        )
        .into_iter()
        .map(|c| (text[c.range].to_owned(), c.tokens))
        .collect()
    }

    fn texts(chunks: &[(String, usize)]) -> Vec<&str> {
        chunks.iter().map(|(t, _)| t.as_str()).collect()
    }

    #[test]
    fn sentences_end_at_stops_and_line_breaks_but_not_inside_numbers() {
        let text = "  Version 1.5 is out! Is it good? Yes.\nNext line\n\n  Para two…  end";
        let found: Vec<&str> = sentences(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(
            found,
            vec![
                "Version 1.5 is out!",
                "Is it good?",
                "Yes.",
                "Next line",
                "Para two…",
                "end"
            ]
        );
        assert!(sentences(" \n\t ").is_empty());
    }

    #[test]
    fn a_short_text_is_one_chunk_and_whitespace_none() {
        assert_eq!(
            chunks("One sentence. Two sentences.", 50, 10),
            vec![("One sentence. Two sentences.".to_owned(), 6)]
        );
        assert!(chunks("   \n ", 50, 10).is_empty());
        assert!(chunks("", 50, 10).is_empty());
    }

    #[test]
    fn chunks_respect_the_budget_and_overlap_by_whole_sentences() {
        // Sentences of 4 tokens each ("Sentence number N.").
        let text: String = (1..=10).map(|i| format!("Sentence number {i}. ")).collect();
        let got = chunks(&text, 12, 4);
        for (chunk, tokens) in &got {
            assert!(*tokens <= 12, "{chunk:?} has {tokens} tokens");
        }
        assert_eq!(
            texts(&got),
            vec![
                "Sentence number 1. Sentence number 2. Sentence number 3.",
                "Sentence number 3. Sentence number 4. Sentence number 5.",
                "Sentence number 5. Sentence number 6. Sentence number 7.",
                "Sentence number 7. Sentence number 8. Sentence number 9.",
                "Sentence number 9. Sentence number 10.",
            ]
        );
        // Without overlap every sentence is in exactly one chunk.
        let plain = chunks(&text, 12, 0);
        assert_eq!(plain.len(), 4);
        assert_eq!(
            plain[1].0,
            "Sentence number 4. Sentence number 5. Sentence number 6."
        );
    }

    #[test]
    fn a_long_sentence_is_cut_between_words_never_inside_one() {
        let words: Vec<String> = (0..25).map(|i| format!("word{i}")).collect();
        let text = words.join(" ");
        let got = chunks(&text, 10, 0);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(_, tokens)| *tokens <= 10));
        let rejoined: Vec<&str> = got.iter().flat_map(|(t, _)| t.split(' ')).collect();
        assert_eq!(
            rejoined,
            words.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }

    #[test]
    fn overlap_never_stalls_even_when_it_could_hold_everything() {
        let text: String = (1..=6).map(|i| format!("S{i}. ")).collect();
        // Overlap asked at the budget itself: clamped below it, and each chunk still adds text.
        let got = chunks(&text, 4, 100);
        assert!(got.len() >= 3);
        assert!(got.last().unwrap().0.ends_with("S6."));
        for pair in got.windows(2) {
            assert_ne!(pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn cjk_text_without_spaces_is_cut_at_character_tokens() {
        let text = "東京は日本の首都です。大阪は大きな都市です。".repeat(3);
        let got = chunks(&text, 8, 2);
        assert!(got.len() > 3);
        for (chunk, tokens) in &got {
            assert!(*tokens <= 8, "{chunk} has {tokens}");
            assert!(!chunk.is_empty());
        }
        // The chunks cover the text in order, each starting within or right after the last.
        let starts = token_starts(&text);
        let spans = chunk(
            &text,
            TokenStarts::new(&starts),
            ChunkParams {
                max_tokens: 8,
                overlap_tokens: 2,
            },
        );
        assert_eq!(spans[0].range.start, 0);
        assert_eq!(spans.last().unwrap().range.end, text.len());
        for pair in spans.windows(2) {
            assert!(pair[1].range.start > pair[0].range.start);
            assert!(pair[1].range.start <= pair[0].range.end);
        }
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_cut_between_its_tokens() {
        // One 30-token "word": a URL-like run of punctuation and letters.
        let word: String = (0..15).map(|i| format!("a{i}/")).collect();
        let text = format!("See {word} now.");
        let got = chunks(&text, 8, 0);
        assert!(got.iter().all(|(_, tokens)| *tokens <= 8), "{got:?}");
        let joined: String = got.iter().map(|(t, _)| t.replace(' ', "")).collect();
        assert_eq!(joined, text.replace(' ', ""));
    }

    #[test]
    fn multibyte_text_is_sliced_on_character_boundaries() {
        let text = "Ünïcödé façade naïve. Émoji 🎉 party time! Ça va? Très bien.";
        for max in 1..8 {
            for (chunk, tokens) in chunks(text, max, max / 2) {
                assert!(tokens <= max);
                assert!(text.contains(&chunk));
            }
        }
    }
}
