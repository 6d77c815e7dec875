//! The report of a measured run, as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{Percentiles, Spread};

/// What one measured run saw. `scripts/bench-overhead.sh` reads the JSON: keep its fields.
#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub stream: bool,
    pub concurrency: u32,
    /// `--prompt-tokens`, when given.
    pub prompt_tokens: Option<u32>,
    pub max_tokens: u32,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub errors_by_status: BTreeMap<u16, u64>,
    /// Requests that got no whole answer, by I/O error kind.
    pub errors_by_transport: BTreeMap<String, u64>,
    pub wall_secs: f64,
    pub requests_per_sec: f64,
    pub latency: Percentiles,
    /// Streams only: to the first SSE event.
    pub first_event: Option<Percentiles>,
    /// Streams only: to the first event carrying content (time to first token).
    pub ttft: Option<Percentiles>,
    /// Streams only: between consecutive content events of each stream, pooled.
    pub itl: Option<Percentiles>,
    /// Streams only: content events in all answers.
    pub content_events: Option<u64>,
    /// Completion tokens of the answers that reported them (streams without a usage chunk:
    /// their content events).
    pub completion_tokens: u64,
    /// Successful answers whose completion tokens are known.
    pub answers_with_tokens: u64,
    /// `completion_tokens` over the wall time; absent when no answer gave its tokens.
    pub tokens_per_sec: Option<f64>,
    /// Streams only: per stream, the tokens after the first over the time from the first
    /// content event to the last.
    pub stream_tokens_per_sec: Option<Spread>,
    /// CPU time of the `--pid` processes and their descendants over the measured phase.
    pub cpu_ms: f64,
    pub cpu_us_per_request: f64,
    pub processes: usize,
    /// The load generator's own CPU time per request.
    pub own_cpu_us_per_request: f64,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "{} ({}), concurrency {}",
            self.url,
            if self.stream {
                "streaming"
            } else {
                "non-streaming"
            },
            self.concurrency,
        );
        if let Some(tokens) = self.prompt_tokens {
            let _ = write!(out, ", prompt ~{tokens} tokens");
        }
        let _ = writeln!(
            out,
            ", max_tokens {}: {} ok, {} errors in {:.2} s: {:.0} requests/s",
            self.max_tokens, self.ok, self.errors, self.wall_secs, self.requests_per_sec,
        );
        if self.errors > 0 {
            let counts: Vec<String> = self
                .errors_by_status
                .iter()
                .map(|(status, n)| format!("{n} x HTTP {status}"))
                .chain(
                    self.errors_by_transport
                        .iter()
                        .map(|(kind, n)| format!("{n} x {kind}")),
                )
                .collect();
            let _ = writeln!(out, "  errors: {}", counts.join(", "));
        }
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "  first error: {error}");
        }
        let line = |out: &mut String, name: &str, p: &Percentiles| {
            let _ = writeln!(
                out,
                "  {name}: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, mean {:.0} us",
                p.p50_us, p.p90_us, p.p99_us, p.mean_us
            );
        };
        line(&mut out, "latency", &self.latency);
        if let Some(first) = &self.first_event {
            line(&mut out, "first event", first);
        }
        if let Some(ttft) = &self.ttft {
            line(&mut out, "time to first token", ttft);
        }
        if let Some(itl) = &self.itl {
            line(&mut out, "inter-token latency", itl);
        }
        if let Some(rate) = self.tokens_per_sec {
            let _ = writeln!(
                out,
                "  completion tokens: {} in {} answers, {rate:.1} tokens/s",
                self.completion_tokens, self.answers_with_tokens
            );
        }
        if let Some(rate) = self.stream_tokens_per_sec.filter(|r| r.count > 0) {
            let _ = writeln!(
                out,
                "  per stream: p10 {:.1}, p50 {:.1}, p90 {:.1}, mean {:.1} tokens/s",
                rate.p10, rate.p50, rate.p90, rate.mean
            );
        }
        if self.processes > 0 {
            let _ = writeln!(
                out,
                "  CPU of {} process(es): {:.0} ms, {:.1} us per request",
                self.processes, self.cpu_ms, self.cpu_us_per_request
            );
        }
        let _ = writeln!(
            out,
            "  load generator CPU: {:.1} us per request",
            self.own_cpu_us_per_request
        );
        out
    }
}
