//! What the load tool reads in an answer's body: when each SSE event ended, which events
//! carried content, and the completion tokens the server reported. Found by byte search rather
//! than JSON parsing, so that reading every event of a stream costs the tool little next to
//! what it measures.
//!
//! The searches rely on JSON escaping: inside a string value every `"` is escaped, so
//! `"content"` or `"completion_tokens"` with both quotes bare can only be an object key.

use std::time::Duration;

use super::http1::BodySink;

/// One answer's body, read incrementally; reused across requests with [`Scan::reset`].
#[derive(Debug)]
pub struct Scan {
    stream: bool,
    /// A streamed answer: the bytes of the event not ended yet. Otherwise the whole body.
    pending: Vec<u8>,
    /// Bytes of `pending` already searched for an event's end.
    searched: usize,
    /// To the end of the first SSE event, whatever it carried.
    pub first_event: Option<Duration>,
    /// To the end of the first event carrying content: the time to first token.
    pub first_content: Option<Duration>,
    pub last_content: Option<Duration>,
    pub content_events: u64,
    /// Between consecutive content events.
    pub gaps: Vec<Duration>,
    /// `usage.completion_tokens`, when the answer carried it.
    pub usage_tokens: Option<u64>,
}

impl Scan {
    /// A scanner for streamed (SSE) answers or for whole JSON ones.
    pub fn new(stream: bool) -> Self {
        Self {
            stream,
            pending: Vec::with_capacity(if stream { 1024 } else { 4096 }),
            searched: 0,
            first_event: None,
            first_content: None,
            last_content: None,
            content_events: 0,
            gaps: Vec::new(),
            usage_tokens: None,
        }
    }

    /// Forgets the previous answer, keeping the buffers.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.searched = 0;
        self.first_event = None;
        self.first_content = None;
        self.last_content = None;
        self.content_events = 0;
        self.gaps.clear();
        self.usage_tokens = None;
    }

    /// To be called once the body is whole.
    pub fn finish(&mut self) {
        if !self.stream {
            self.usage_tokens = completion_tokens(&self.pending);
        }
    }

    /// The body's bytes not consumed as SSE events: the whole of an answer that was not a
    /// stream, such as an error.
    pub fn leftover(&self) -> &[u8] {
        &self.pending
    }

    /// Completion tokens: as the server reported them, else (streams) one per content event.
    pub fn tokens(&self) -> Option<u64> {
        self.usage_tokens
            .or(self.stream.then_some(self.content_events))
    }

    fn event(&mut self, event_end: usize, event_start: usize, at: Duration) {
        let event = &self.pending[event_start..event_end];
        self.first_event.get_or_insert(at);
        if carries_content(event) {
            self.content_events += 1;
            if let Some(last) = self.last_content {
                self.gaps.push(at.saturating_sub(last));
            }
            self.first_content.get_or_insert(at);
            self.last_content = Some(at);
        } else if let Some(tokens) = completion_tokens(event) {
            self.usage_tokens = Some(tokens);
        }
    }
}

impl BodySink for Scan {
    fn data(&mut self, bytes: &[u8], at: Duration) {
        self.pending.extend_from_slice(bytes);
        if !self.stream {
            return;
        }
        // Events end with a blank line; one may end across two reads.
        let mut start = 0;
        let mut from = self.searched.saturating_sub(1);
        while let Some(end) = find(&self.pending[from..], b"\n\n") {
            let end = from + end;
            self.event(end, start, at);
            start = end + 2;
            from = start;
        }
        self.pending.drain(..start);
        self.searched = self.pending.len();
    }
}

/// Whether an event's JSON has a `content` key with a non-empty string value.
fn carries_content(event: &[u8]) -> bool {
    let mut rest = event;
    while let Some(at) = find(rest, b"\"content\"") {
        rest = &rest[at + b"\"content\"".len()..];
        if let Some(value) = value_after_colon(rest)
            && value.len() >= 2
            && value[0] == b'"'
            && value[1] != b'"'
        {
            return true;
        }
    }
    false
}

/// The number after the first `"completion_tokens"` key.
fn completion_tokens(json: &[u8]) -> Option<u64> {
    let at = find(json, b"\"completion_tokens\"")?;
    let value = value_after_colon(&json[at + b"\"completion_tokens\"".len()..])?;
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&value[..digits]).ok()?.parse().ok()
}

/// What follows `: ` (any JSON whitespace around the colon), when a colon follows.
fn value_after_colon(rest: &[u8]) -> Option<&[u8]> {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let colon = rest.iter().position(|b| !is_space(b))?;
    if rest[colon] != b':' {
        return None;
    }
    let rest = &rest[colon + 1..];
    let value = rest.iter().position(|b| !is_space(b))?;
    Some(&rest[value..])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut from = 0;
    while let Some(at) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + at;
        if haystack.get(at + 1..at + needle.len()) == Some(tail) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const ROLE: &[u8] = br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#;

    fn content(text: &str) -> Vec<u8> {
        format!(
            r#"data: {{"choices":[{{"index":0,"delta":{{"content":"{text}"}}}}],"usage":null}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_stream_split_anywhere_gives_the_same_times_and_tokens() {
        let mut events: Vec<Vec<u8>> = vec![ROLE.to_vec(), content("Hel"), content("lo")];
        events.push(
            br#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#
                .to_vec(),
        );
        events.push(br#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#.to_vec());
        events.push(b"data: [DONE]".to_vec());
        let body: Vec<u8> = events
            .iter()
            .flat_map(|e| [e.as_slice(), b"\n\n"].concat())
            .collect();
        let mut scan = Scan::new(true);
        for split in 1..body.len() {
            scan.reset();
            // Each piece arrives 1 ms after the previous one.
            for (n, piece) in body.chunks(split).enumerate() {
                scan.data(piece, ms(n as u64 + 1));
            }
            scan.finish();
            let at = |offset: usize| ms((offset / split) as u64 + 1);
            let ends: Vec<usize> = events
                .iter()
                .scan(0, |end, e| {
                    *end += e.len() + 2;
                    Some(*end - 1)
                })
                .collect();
            assert_eq!(scan.first_event, Some(at(ends[0])), "split {split}");
            assert_eq!(scan.first_content, Some(at(ends[1])), "split {split}");
            assert_eq!(scan.last_content, Some(at(ends[2])), "split {split}");
            assert_eq!(scan.content_events, 2);
            assert_eq!(scan.gaps, vec![at(ends[2]) - at(ends[1])]);
            assert_eq!(scan.tokens(), Some(3), "usage wins over counted events");
        }
    }

    #[test]
    fn without_usage_a_stream_counts_content_events() {
        let mut scan = Scan::new(true);
        for (n, event) in [ROLE.to_vec(), content("a"), content("b"), content("c")]
            .iter()
            .enumerate()
        {
            scan.data(&[event.as_slice(), b"\n\n"].concat(), ms(n as u64));
        }
        scan.finish();
        assert_eq!(scan.tokens(), Some(3));
        assert_eq!(scan.gaps, vec![ms(1), ms(1)]);
        assert_eq!(scan.first_content, Some(ms(1)));
    }

    #[test]
    fn content_keys_are_found_with_any_spacing_and_not_inside_strings() {
        assert!(carries_content(br#"{"delta": {"content" : "x"}}"#));
        assert!(!carries_content(br#"{"delta": {"content": ""}}"#));
        assert!(!carries_content(br#"{"delta": {"content": null}}"#));
        assert!(!carries_content(
            br#"{"delta": {"reasoning_content": "x"}}"#
        ));
        assert!(!carries_content(br#"{"delta": {"role": "\"content\""}}"#));
        assert_eq!(
            completion_tokens(
                br#"{"usage": {"completion_tokens_details": {}, "completion_tokens": 42}}"#
            ),
            Some(42)
        );
        assert_eq!(completion_tokens(br#"{"usage": null}"#), None);
    }

    #[test]
    fn a_whole_json_answer_gives_its_usage() {
        let body = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
        let mut scan = Scan::new(false);
        scan.data(&body[..20], ms(1));
        scan.data(&body[20..], ms(2));
        scan.finish();
        assert_eq!(scan.tokens(), Some(7));
        assert_eq!(scan.first_event, None);
    }
}
