//! Tool calls parsed out of generated text, as it streams.
//!
//! Qwen2.5's chat template asks the model to answer a call as
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (the Hermes format). Text
//! that could still be the start of the opening tag is held back, a block is held whole until
//! its closing tag, and a complete block whose JSON names a function becomes a [`ToolCall`].
//! Anything else (text outside the tags, a block that is not a call, a block cut short) is
//! released as ordinary text. Pure: no I/O, every rule is a plain `#[test]`.

use rand::{Rng, distr::Alphanumeric};
use serde_json::Value;

use crate::request::{ToolCall, ToolCallDelta};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
/// Characters of randomness in a call id, as OpenAI's `call_` ids have.
const ID_CHARS: usize = 24;

/// What a push released.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// Text outside tool calls.
    pub text: String,
    pub calls: Vec<ToolCallDelta>,
}

/// Splits one choice's text into content and tool calls.
#[derive(Debug, Default)]
pub struct ToolCallParser {
    /// Text not yet released: a possible opening tag, or a block waiting for its closing tag.
    held: String,
    in_block: bool,
    /// Whitespace right after a call (the newline between blocks) is not content.
    after_call: bool,
    calls: u32,
}

impl ToolCallParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many calls were parsed so far.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// Adds newly generated text.
    pub fn push(&mut self, text: &str) -> Parsed {
        self.held.push_str(text);
        let mut out = Parsed::default();
        loop {
            if self.in_block {
                let Some(end) = self.held.find(CLOSE) else {
                    return out;
                };
                let block: String = self.held.drain(..end + CLOSE.len()).collect();
                self.in_block = false;
                let body = &block[OPEN.len()..block.len() - CLOSE.len()];
                match parse_call(body) {
                    Some(call) => {
                        out.calls.push(ToolCallDelta {
                            index: self.calls,
                            call,
                        });
                        self.calls += 1;
                        self.after_call = true;
                    }
                    None => out.text.push_str(&block),
                }
                continue;
            }
            if self.after_call {
                let trimmed = self.held.trim_start().len();
                self.held.drain(..self.held.len() - trimmed);
                if self.held.is_empty() {
                    return out;
                }
                self.after_call = false;
            }
            if let Some(start) = self.held.find(OPEN) {
                out.text.extend(self.held.drain(..start));
                self.in_block = true;
                continue;
            }
            let keep = partial_suffix(&self.held, OPEN);
            out.text.extend(self.held.drain(..self.held.len() - keep));
            return out;
        }
    }

    /// Releases whatever is held: the generation is over.
    pub fn finish(&mut self) -> Parsed {
        self.in_block = false;
        Parsed {
            text: std::mem::take(&mut self.held),
            calls: Vec::new(),
        }
    }
}

/// Length in bytes of the longest suffix of `text` that begins `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    text.char_indices()
        .map(|(start, _)| &text[start..])
        .find(|suffix| tag.starts_with(suffix))
        .map_or(0, str::len)
}

/// `{"name": "f", "arguments": {...}}` as a call; arguments may also come as a JSON string.
fn parse_call(body: &str) -> Option<ToolCall> {
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    let name = value.get("name")?.as_str()?.to_owned();
    let arguments_json = match value.get("arguments") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall {
        id: call_id(),
        name,
        arguments_json,
    })
}

/// `call_` and random alphanumerics.
pub fn call_id() -> String {
    let suffix: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(ID_CHARS)
        .map(char::from)
        .collect();
    format!("call_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `chunks` one by one and gathers everything released.
    fn run(chunks: &[&str]) -> (String, Vec<ToolCallDelta>) {
        let mut parser = ToolCallParser::new();
        let mut text = String::new();
        let mut calls = Vec::new();
        for chunk in chunks {
            let parsed = parser.push(chunk);
            text.push_str(&parsed.text);
            calls.extend(parsed.calls);
        }
        let rest = parser.finish();
        text.push_str(&rest.text);
        (text, calls)
    }

    const CALL: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn a_call_becomes_a_tool_call_with_its_arguments_as_a_string() {
        let (text, calls) = run(&[CALL]);
        assert_eq!(text, "");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].index, 0);
        assert_eq!(calls[0].call.name, "get_weather");
        assert_eq!(calls[0].call.arguments_json, r#"{"city":"Paris"}"#);
        assert!(calls[0].call.id.starts_with("call_"));
        assert_eq!(calls[0].call.id.len(), "call_".len() + ID_CHARS);
    }

    #[test]
    fn tags_split_across_deltas_at_every_position_are_found() {
        let text = format!("Let me check.{CALL}\n{CALL}");
        for split in 1..text.len() {
            if !text.is_char_boundary(split) {
                continue;
            }
            for second in split + 1..text.len() {
                if !text.is_char_boundary(second) {
                    continue;
                }
                let (content, calls) =
                    run(&[&text[..split], &text[split..second], &text[second..]]);
                assert_eq!(content, "Let me check.", "split at {split}/{second}");
                assert_eq!(calls.len(), 2, "split at {split}/{second}");
                assert_eq!((calls[0].index, calls[1].index), (0, 1));
                assert_ne!(calls[0].call.id, calls[1].call.id);
            }
        }
    }

    #[test]
    fn text_that_only_looked_like_a_tag_is_released() {
        let mut parser = ToolCallParser::new();
        assert_eq!(parser.push("a <tool").text, "a ");
        assert_eq!(parser.push("box> b").text, "<toolbox> b");
        assert_eq!(run(&["x < y"]).0, "x < y");
    }

    #[test]
    fn blocks_that_are_not_calls_stay_text() {
        let bad = "<tool_call>\nnot json\n</tool_call>";
        assert_eq!(run(&[bad]), (bad.to_owned(), vec![]));
        let nameless = "<tool_call>{\"arguments\": {}}</tool_call>";
        assert_eq!(run(&[nameless]).0, nameless);
        let cut = "<tool_call>\n{\"name\": \"f\"";
        assert_eq!(run(&["ok ", cut]), (format!("ok {cut}"), vec![]));
    }

    #[test]
    fn string_and_missing_arguments_are_accepted() {
        let (_, calls) =
            run(&["<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>"]);
        assert_eq!(calls[0].call.arguments_json, r#"{"a": 1}"#);
        let (_, calls) = run(&["<tool_call>{\"name\": \"f\"}</tool_call>"]);
        assert_eq!(calls[0].call.arguments_json, "{}");
    }

    #[test]
    fn text_after_a_call_keeps_its_words_but_not_the_separating_blank() {
        let (text, calls) = run(&[CALL, "\n\n", "Done."]);
        assert_eq!((text.as_str(), calls.len()), ("Done.", 1));
    }
}
