//! Cuts an upstream's server-sent-event byte stream into whole events as the bytes arrive, so
//! each event can be relayed the moment its last byte is in.

use bytes::{Bytes, BytesMut};

/// One whole event: its bytes as received (terminator included) and its `data` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) raw: Bytes,
    data: Data,
}

/// Where an event's `data` is. Nearly every event has one `data:` line in UTF-8, read in place
/// (a stream has one event per token, so this is read per token).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    None,
    /// The one data line's value, in `raw`.
    Line(std::ops::Range<usize>),
    /// Several lines joined, or text that needed repair.
    Joined(String),
}

impl SseEvent {
    /// The `data:` lines joined with `\n`; `None` for events without one (comments, pings).
    pub(crate) fn data(&self) -> Option<&str> {
        match &self.data {
            Data::None => None,
            // Checked to be UTF-8 when the range was taken.
            Data::Line(range) => std::str::from_utf8(&self.raw[range.clone()]).ok(),
            Data::Joined(text) => Some(text),
        }
    }
}

/// An incremental event splitter.
#[derive(Debug, Default)]
pub(crate) struct SseSplitter {
    buffer: BytesMut,
}

impl SseSplitter {
    /// Adds bytes just received.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole event, if one has arrived.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
        let end = event_end(&self.buffer)?;
        let raw = self.buffer.split_to(end).freeze();
        let data = data_of(&raw);
        Some(SseEvent { raw, data })
    }
}

/// Where the first event ends (after its blank line), for `\n`, `\r\n` and `\r` line ends.
fn event_end(buffer: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = 0;
    while i < buffer.len() {
        let line_end = match buffer[i] {
            b'\n' => i + 1,
            // `\r` at the very end may be the first half of `\r\n`: wait for the next byte.
            b'\r' if i + 1 == buffer.len() => return None,
            b'\r' if buffer[i + 1] == b'\n' => i + 2,
            b'\r' => i + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            return Some(line_end);
        }
        line_start = line_end;
        i = line_end;
    }
    None
}

fn data_of(raw: &[u8]) -> Data {
    match single_data_line(raw) {
        Some(range) => Data::Line(range),
        None => data_joined(raw).map_or(Data::None, Data::Joined),
    }
}

/// The value of the event's only `data` line, when it has exactly one and it is UTF-8.
fn single_data_line(raw: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut found = None;
    let mut start = 0;
    for line in raw.split(|&b| b == b'\r' || b == b'\n') {
        let end = start + line.len();
        let value = if line == b"data" {
            Some(end..end)
        } else if line.starts_with(b"data:") {
            let skip = if line.get(5) == Some(&b' ') { 6 } else { 5 };
            Some(start + skip..end)
        } else {
            None
        };
        if let Some(value) = value {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
        start = end + 1;
    }
    let range = found?;
    std::str::from_utf8(&raw[range.clone()]).ok()?;
    Some(range)
}

fn data_joined(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut data: Option<String> = None;
    // SSE ends lines with `\r\n`, `\n` or a lone `\r`; the empty pieces `\r\n` leaves are
    // blank lines, which carry nothing.
    for line in text.split(['\r', '\n']) {
        let value = if line == "data" {
            ""
        } else if let Some(rest) = line.strip_prefix("data:") {
            rest.strip_prefix(' ').unwrap_or(rest)
        } else {
            continue;
        };
        match &mut data {
            Some(joined) => {
                joined.push('\n');
                joined.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(splitter: &mut SseSplitter) -> Vec<SseEvent> {
        std::iter::from_fn(|| splitter.next_event()).collect()
    }

    #[test]
    fn events_come_out_whole_however_the_bytes_are_cut() {
        let body = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: [DONE]\n\n";
        for cut in 1..body.len() {
            let mut splitter = SseSplitter::default();
            splitter.push(&body[..cut]);
            let mut events = all(&mut splitter);
            splitter.push(&body[cut..]);
            events.extend(all(&mut splitter));
            let data: Vec<Option<&str>> = events.iter().map(|e| e.data()).collect();
            assert_eq!(
                data,
                [Some("{\"a\":1}"), None, Some("[DONE]")],
                "cut at {cut}"
            );
            let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
            assert_eq!(raw, body, "relayed byte for byte");
        }
    }

    #[test]
    fn crlf_line_ends_and_multi_line_data() {
        let mut splitter = SseSplitter::default();
        splitter.push(b"event: x\r\ndata: one\r\ndata:two\r\n\r\ndata: 3\r\rdata: 4\n\n");
        let events = all(&mut splitter);
        let data: Vec<Option<&str>> = events.iter().map(|e| e.data()).collect();
        assert_eq!(data, [Some("one\ntwo"), Some("3"), Some("4")]);
    }

    #[test]
    fn bare_and_unspaced_data_lines_and_broken_text() {
        let mut splitter = SseSplitter::default();
        splitter.push(b"data\n\ndata:x\n\ndata: \xff\n\nid: 1\ndata: y\n\n");
        let events = all(&mut splitter);
        let data: Vec<Option<&str>> = events.iter().map(SseEvent::data).collect();
        assert_eq!(data, [Some(""), Some("x"), Some("\u{fffd}"), Some("y")]);
    }

    #[test]
    fn an_unfinished_event_waits() {
        let mut splitter = SseSplitter::default();
        splitter.push(b"data: {\"a\":");
        assert_eq!(splitter.next_event(), None);
        splitter.push(b"1}\n\n");
        assert_eq!(splitter.next_event().unwrap().data(), Some("{\"a\":1}"));
    }
}
