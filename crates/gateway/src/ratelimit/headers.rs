//! The `x-ratelimit-*` headers OpenAI sends on every response, refused or not.

use std::fmt::Write as _;
use std::time::Duration;

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
        for (names, state) in [(&REQUESTS, self.requests), (&TOKENS, self.tokens)] {
            let Some(state) = state else { continue };
            let [limit, remaining, reset] = names;
            headers.insert(limit, HeaderValue::from(state.limit));
            headers.insert(remaining, HeaderValue::from(state.remaining));
            headers.insert(reset, reset_value(state.reset));
        }
    }

    /// Whether no limit is set, so [`apply`](Self::apply) writes nothing.
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

fn reset_value(reset: Duration) -> HeaderValue {
    // Digits, letters and a dot: always a valid header value.
    HeaderValue::try_from(format_reset(reset)).unwrap_or(HeaderValue::from_static("0s"))
}

/// Formats a duration the way OpenAI's reset headers do (Go's `time.Duration` notation, to the
/// millisecond): `0s`, `20ms`, `1s`, `8.64s`, `6m0s`, `1h2m3.5s`.
pub fn format_reset(reset: Duration) -> String {
    // Round up, so a client that waits the advertised time is never early.
    let millis = reset.as_nanos().div_ceil(1_000_000);
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let hours = millis / 3_600_000;
    let minutes = millis / 60_000 % 60;
    let seconds = millis / 1000 % 60;
    let fraction = millis % 1000;
    let mut out = String::with_capacity(16);
    // Writing to a `String` cannot fail.
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    let _ = write!(out, "{seconds}");
    if fraction > 0 {
        let digits = format!("{fraction:03}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('s');
    out
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
}
