//! Cuts an upstream's server-sent-event byte stream into whole events as the bytes arrive, so
//! each event can be relayed the moment its last byte is in.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// One whole event: its bytes as received (terminator included) and its `data` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) raw: Bytes,
    data: Data,
}

/// Where an event's `data` is. Nearly every event has one `data:` line, read in place (a
/// stream has one event per token, so this is read per token).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    None,
    /// The one data line's value, in `raw`.
    Line(std::ops::Range<usize>),
    /// Several lines joined.
    Joined(String),
}

impl SseEvent {
    /// The `data:` lines joined with `\n`; `None` for events without one (comments, pings).
    /// Text that is not UTF-8 is repaired.
    pub(crate) fn data(&self) -> Option<Cow<'_, str>> {
        match &self.data {
            Data::None => None,
            Data::Line(range) => Some(String::from_utf8_lossy(&self.raw[range.clone()])),
            Data::Joined(text) => Some(Cow::Borrowed(text)),
        }
    }
}

/// An incremental event splitter. An event that arrives whole in one read is cut from that
/// read's buffer without a copy; only an event spread over several reads is gathered.
#[derive(Debug)]
pub(crate) struct SseSplitter {
    pending: Pending,
    /// Where the line being read in `pending` begins: the bytes before it hold no event end,
    /// so a read that adds to a long event does not make them be read again.
    line_start: usize,
}

/// Bytes received and not cut into events yet.
#[derive(Debug)]
enum Pending {
    /// What is left of the last read.
    Read(Bytes),
    /// An unfinished event that began in an earlier read.
    Gathered(BytesMut),
}

impl Default for SseSplitter {
    fn default() -> Self {
        Self {
            pending: Pending::Read(Bytes::new()),
            line_start: 0,
        }
    }
}

impl SseSplitter {
    /// Adds bytes just received.
    pub(crate) fn push(&mut self, bytes: Bytes) {
        match &mut self.pending {
            Pending::Read(rest) if rest.is_empty() => *rest = bytes,
            Pending::Read(rest) => {
                let mut gathered = BytesMut::with_capacity(rest.len() + bytes.len());
                gathered.extend_from_slice(rest);
                gathered.extend_from_slice(&bytes);
                self.pending = Pending::Gathered(gathered);
            }
            Pending::Gathered(gathered) => gathered.extend_from_slice(&bytes),
        }
    }

    /// The next whole event, if one has arrived.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
        let buffer = match &self.pending {
            Pending::Read(rest) => &rest[..],
            Pending::Gathered(gathered) => &gathered[..],
        };
        let end = match event_end(buffer, self.line_start) {
            Ok(end) => end,
            Err(line_start) => {
                self.line_start = line_start;
                return None;
            }
        };
        self.line_start = 0;
        let raw = match &mut self.pending {
            Pending::Read(rest) => rest.split_to(end),
            Pending::Gathered(gathered) => {
                let raw = gathered.split_to(end).freeze();
                // The rest is the start of the next read's events: cut without copies too.
                let rest = std::mem::take(gathered).freeze();
                self.pending = Pending::Read(rest);
                raw
            }
        };
        let data = data_of(&raw);
        Some(SseEvent { raw, data })
    }
}

/// Where the first event ends (after its blank line), for `\n`, `\r\n` and `\r` line ends,
/// reading from `line_start`, where a line begins. `Err` holds where the unfinished last line
/// begins, to read on from when more bytes come.
fn event_end(buffer: &[u8], mut line_start: usize) -> Result<usize, usize> {
    while let Some(found) = memchr::memchr2(b'\n', b'\r', &buffer[line_start..]) {
        let i = line_start + found;
        let line_end = match buffer.get(i + 1) {
            _ if buffer[i] == b'\n' => i + 1,
            // `\r` at the very end may be the first half of `\r\n`: wait for the next byte.
            None => return Err(line_start),
            Some(b'\n') => i + 2,
            Some(_) => i + 1,
        };
        if i == line_start {
            return Ok(line_end);
        }
        line_start = line_end;
    }
    Err(line_start)
}

fn data_of(raw: &[u8]) -> Data {
    match single_data_line(raw) {
        Some(range) => Data::Line(range),
        None => data_joined(raw).map_or(Data::None, Data::Joined),
    }
}

/// The value of the event's only `data` line, when it has exactly one.
fn single_data_line(raw: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut found = None;
    let mut start = 0;
    let ends = memchr::memchr2_iter(b'\r', b'\n', raw).chain(std::iter::once(raw.len()));
    for end in ends {
        let line = &raw[start..end];
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
    found
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

    fn data_of_each(events: &[SseEvent]) -> Vec<Option<String>> {
        events
            .iter()
            .map(|e| e.data().map(Cow::into_owned))
            .collect()
    }

    fn texts<const N: usize>(texts: [Option<&str>; N]) -> Vec<Option<String>> {
        texts.iter().map(|t| t.map(str::to_owned)).collect()
    }

    #[test]
    fn events_come_out_whole_however_the_bytes_are_cut() {
        let body = b"data: {\"a\":1}\r\n\r\n: keep-alive\r\rdata: [DONE]\n\n";
        for first in 1..body.len() {
            for second in first..body.len() {
                let mut splitter = SseSplitter::default();
                let mut events = Vec::new();
                for piece in [&body[..first], &body[first..second], &body[second..]] {
                    splitter.push(Bytes::copy_from_slice(piece));
                    events.extend(all(&mut splitter));
                }
                assert_eq!(
                    data_of_each(&events),
                    texts([Some("{\"a\":1}"), None, Some("[DONE]")]),
                    "cut at {first} and {second}"
                );
                let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
                assert_eq!(raw, body, "relayed byte for byte");
            }
        }
    }

    #[test]
    fn crlf_line_ends_and_multi_line_data() {
        let mut splitter = SseSplitter::default();
        splitter.push(Bytes::from_static(
            b"event: x\r\ndata: one\r\ndata:two\r\n\r\ndata: 3\r\rdata: 4\n\n",
        ));
        let events = all(&mut splitter);
        assert_eq!(
            data_of_each(&events),
            texts([Some("one\ntwo"), Some("3"), Some("4")])
        );
    }

    #[test]
    fn bare_and_unspaced_data_lines_and_broken_text() {
        let mut splitter = SseSplitter::default();
        splitter.push(Bytes::from_static(
            b"data\n\ndata:x\n\ndata: \xff\n\nid: 1\ndata: y\n\n",
        ));
        let events = all(&mut splitter);
        assert_eq!(
            data_of_each(&events),
            texts([Some(""), Some("x"), Some("\u{fffd}"), Some("y")])
        );
    }

    #[test]
    fn an_unfinished_event_waits() {
        let mut splitter = SseSplitter::default();
        splitter.push(Bytes::from_static(b"data: {\"a\":"));
        assert_eq!(splitter.next_event(), None);
        splitter.push(Bytes::from_static(b"1}\n\n"));
        assert_eq!(
            splitter.next_event().unwrap().data().as_deref(),
            Some("{\"a\":1}")
        );
    }
}
