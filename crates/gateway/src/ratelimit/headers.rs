//! The `x-ratelimit-*` headers OpenAI sends on every response, refused or not.

use std::fmt::Write;
use std::ops::Range;
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The names of one limit's headers: limit, remaining, reset. Built once rather than formatted
/// and parsed for every response.
static REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
static TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// One limit's state as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// The limit in force (after any adaptive lowering).
    pub limit: u32,
    /// How many more (requests or tokens) the principal could use right now.
    pub remaining: u32,
    /// Time until the limit is back to its initial state: nothing used.
    pub reset: Duration,
}

/// A snapshot of a principal's request and token limits, for the response headers. A limit that
/// is not set has no headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// Requests per minute.
    pub requests: Option<WindowState>,
    /// Tokens per minute.
    pub tokens: Option<WindowState>,
}

impl RateLimitHeaders {
    /// Writes `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits that are set,
    /// replacing any already there.
    pub fn apply(&self, headers: &mut HeaderMap) {
        // Every value is written into one buffer and each header holds a slice of it: two
        // allocations per response (the buffer and its shared handle) rather than two for each
        // value.
        let mut values = BytesMut::with_capacity(64);
        let mut spans: [Option<(&HeaderName, Range<usize>)>; 6] = Default::default();
        let mut next_span = spans.iter_mut();
        for (names, state) in [(&REQUESTS, self.requests), (&TOKENS, self.tokens)] {
            let Some(state) = state else { continue };
            let written = [
                Value::Count(state.limit),
                Value::Count(state.remaining),
                Value::Reset(state.reset),
            ];
            for (name, value) in names.iter().zip(written) {
                let start = values.len();
                // Writing to a `BytesMut` cannot fail.
                let _ = value.write(&mut values);
                if let Some(span) = next_span.next() {
                    *span = Some((name, start..values.len()));
                }
            }
        }
        let values = values.freeze();
        for (name, range) in spans.into_iter().flatten() {
            // Digits, letters and a dot: always a valid header value.
            if let Ok(value) = HeaderValue::from_maybe_shared(values.slice(range)) {
                headers.insert(name, value);
            }
        }
    }

    /// Whether no limit is set, so [`apply`](Self::apply) writes nothing.
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

/// One header's value, before it is written.
enum Value {
    Count(u32),
    Reset(Duration),
}

impl Value {
    fn write(self, out: &mut impl Write) -> std::fmt::Result {
        match self {
            Value::Count(count) => write_int(out, count),
            Value::Reset(reset) => write_reset(out, reset),
        }
    }
}

/// Formats a duration the way OpenAI's reset headers do (Go's `time.Duration` notation, to the
/// millisecond): `0s`, `20ms`, `1s`, `8.64s`, `6m0s`, `1h2m3.5s`.
pub fn format_reset(reset: Duration) -> String {
    let mut out = String::with_capacity(16);
    // Writing to a `String` cannot fail.
    let _ = write_reset(&mut out, reset);
    out
}

fn write_reset(out: &mut impl Write, reset: Duration) -> std::fmt::Result {
    // Round up, so a client that waits the advertised time is never early.
    let millis = reset.as_nanos().div_ceil(1_000_000);
    if millis == 0 {
        return out.write_str("0s");
    }
    if millis < 1000 {
        write_int(out, millis)?;
        return out.write_str("ms");
    }
    let hours = millis / 3_600_000;
    let minutes = millis / 60_000 % 60;
    let seconds = millis / 1000 % 60;
    let fraction = millis % 1000;
    if hours > 0 {
        write_int(out, hours)?;
        out.write_char('h')?;
    }
    if hours > 0 || minutes > 0 {
        write_int(out, minutes)?;
        out.write_char('m')?;
    }
    write_int(out, seconds)?;
    if fraction > 0 {
        // Three digits without their trailing zeros: 500 is `.5`, 50 is `.05`.
        let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
        let kept = digits.iter().rposition(|&digit| digit != 0).unwrap_or(0);
        out.write_char('.')?;
        for &digit in &digits[..=kept] {
            write_int(out, digit)?;
        }
    }
    out.write_char('s')
}

/// `n` in decimal, without the formatting machinery of `write!` (this runs for every response).
fn write_int(out: &mut impl Write, n: impl itoa::Integer) -> std::fmt::Result {
    out.write_str(itoa::Buffer::new().format(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_formatted_like_openai() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(1), "1ms"),
            (Duration::from_millis(20), "20ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(8640), "8.64s"),
            (Duration::from_millis(1050), "1.05s"),
            (Duration::from_millis(1005), "1.005s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(59), "59s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(90_500), "1m30.5s"),
            (Duration::from_millis(3_723_500), "1h2m3.5s"),
            (Duration::from_secs(7200), "2h0m0s"),
        ];
        for (reset, expected) in cases {
            assert_eq!(format_reset(reset), expected, "{reset:?}");
        }
    }

    #[test]
    fn only_the_limits_that_are_set_get_headers() {
        let mut headers = HeaderMap::new();
        RateLimitHeaders {
            requests: Some(WindowState {
                limit: 60,
                remaining: 59,
                reset: Duration::from_secs(1),
            }),
            tokens: None,
        }
        .apply(&mut headers);
        assert_eq!(headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "59");
        assert_eq!(headers["x-ratelimit-reset-requests"], "1s");
        assert!(!headers.contains_key("x-ratelimit-limit-tokens"));
        assert_eq!(headers.len(), 3);

        let mut headers = HeaderMap::new();
        RateLimitHeaders::default().apply(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn token_headers_are_written_too() {
        let mut headers = HeaderMap::new();
        RateLimitHeaders {
            requests: None,
            tokens: Some(WindowState {
                limit: 1000,
                remaining: 0,
                reset: Duration::from_secs(360),
            }),
        }
        .apply(&mut headers);
        assert_eq!(headers["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(headers["x-ratelimit-remaining-tokens"], "0");
        assert_eq!(headers["x-ratelimit-reset-tokens"], "6m0s");
    }

    #[test]
    fn both_limits_replace_what_was_there() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-ratelimit-limit-requests",
            HeaderValue::from_static("stale"),
        );
        RateLimitHeaders {
            requests: Some(WindowState {
                limit: 3500,
                remaining: 3499,
                reset: Duration::from_millis(17),
            }),
            tokens: Some(WindowState {
                limit: 90_000,
                remaining: 89_872,
                reset: Duration::from_millis(85_350),
            }),
        }
        .apply(&mut headers);
        let expected = [
            ("x-ratelimit-limit-requests", "3500"),
            ("x-ratelimit-remaining-requests", "3499"),
            ("x-ratelimit-reset-requests", "17ms"),
            ("x-ratelimit-limit-tokens", "90000"),
            ("x-ratelimit-remaining-tokens", "89872"),
            ("x-ratelimit-reset-tokens", "1m25.35s"),
        ];
        for (name, value) in expected {
            assert_eq!(
                headers.get_all(name).iter().collect::<Vec<_>>(),
                [value],
                "{name}"
            );
        }
        assert_eq!(headers.len(), 6);
    }
}
