//! What the requests of one phase saw, gathered per connection and merged.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::scan::Scan;

/// The measurements of the successful answers, and the errors.
#[derive(Debug, Default)]
pub struct Samples {
    pub totals: Vec<Duration>,
    pub first_events: Vec<Duration>,
    /// To the first event carrying content.
    pub ttfts: Vec<Duration>,
    /// Between consecutive content events of each stream, pooled.
    pub itls: Vec<Duration>,
    /// Per stream: tokens after the first over the time from the first content event to the
    /// last, in tokens/s.
    pub stream_rates: Vec<f64>,
    pub content_events: u64,
    pub completion_tokens: u64,
    /// Successful answers whose completion tokens are known.
    pub with_tokens: u64,
    pub errors: Errors,
}

impl Samples {
    /// Records a successful answer.
    pub fn ok(&mut self, total: Duration, scan: &Scan) {
        self.totals.push(total);
        self.first_events.extend(scan.first_event);
        self.ttfts.extend(scan.first_content);
        self.itls.extend_from_slice(&scan.gaps);
        self.content_events += scan.content_events;
        if let Some(tokens) = scan.tokens() {
            self.completion_tokens += tokens;
            self.with_tokens += 1;
            if let (Some(first), Some(last)) = (scan.first_content, scan.last_content)
                && tokens > 1
                && last > first
            {
                self.stream_rates
                    .push((tokens - 1) as f64 / (last - first).as_secs_f64());
            }
        }
    }

    pub fn merge(&mut self, other: Samples) {
        self.totals.extend(other.totals);
        self.first_events.extend(other.first_events);
        self.ttfts.extend(other.ttfts);
        self.itls.extend(other.itls);
        self.stream_rates.extend(other.stream_rates);
        self.content_events += other.content_events;
        self.completion_tokens += other.completion_tokens;
        self.with_tokens += other.with_tokens;
        self.errors.merge(other.errors);
    }
}

/// Failed requests, counted by HTTP status and by transport error kind.
#[derive(Debug, Default, Serialize)]
pub struct Errors {
    pub total: u64,
    pub first: Option<String>,
    pub by_status: BTreeMap<u16, u64>,
    pub by_transport: BTreeMap<String, u64>,
}

impl Errors {
    /// An answer with a status other than 2xx; `body` is what it said.
    pub fn status(&mut self, status: u16, body: &[u8]) {
        *self.by_status.entry(status).or_default() += 1;
        self.count(|| {
            let body = String::from_utf8_lossy(&body[..body.len().min(300)]);
            match body.trim() {
                "" => format!("HTTP status {status}"),
                body => format!("HTTP status {status}: {body}"),
            }
        });
    }

    /// A request that got no whole answer.
    pub fn transport(&mut self, kind: String, message: impl FnOnce() -> String) {
        *self.by_transport.entry(kind).or_default() += 1;
        self.count(message);
    }

    fn count(&mut self, message: impl FnOnce() -> String) {
        self.total += 1;
        if self.first.is_none() {
            self.first = Some(message());
        }
    }

    fn merge(&mut self, other: Errors) {
        self.total += other.total;
        if self.first.is_none() {
            self.first = other.first;
        }
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        for (kind, n) in other.by_transport {
            *self.by_transport.entry(kind).or_default() += n;
        }
    }
}
