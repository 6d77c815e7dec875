//! The load generator: `concurrency` keep-alive connections share `requests` chat requests,
//! each connection with one in flight at a time, after an unmeasured warm-up.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::http1::Connection;
use super::proc_cpu::{self, Tree};
use super::stats::Percentiles;
use crate::args::LoadArgs;

/// What one measured run saw.
#[derive(Debug, Serialize)]
struct Report {
    url: String,
    stream: bool,
    concurrency: u32,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    wall_secs: f64,
    requests_per_sec: f64,
    latency: Percentiles,
    /// Streams only: to the first SSE event.
    first_event: Option<Percentiles>,
    /// CPU time of the `--pid` processes and their descendants over the measured phase.
    cpu_ms: f64,
    cpu_us_per_request: f64,
    processes: usize,
    /// The load generator's own CPU time per request.
    own_cpu_us_per_request: f64,
}

/// Runs the warm-up and the measured phase; returns the report as text or JSON.
pub async fn run(args: LoadArgs) -> anyhow::Result<String> {
    let target = Target::parse(&args)?;
    let mut connections = Vec::with_capacity(args.concurrency as usize);
    for _ in 0..args.concurrency {
        connections.push(Some(
            Connection::open(&target.addr)
                .await
                .with_context(|| format!("cannot connect to {}", target.addr))?,
        ));
    }
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    let (connections, _) = phase(&target, connections, args.warmup, far).await;

    let tree = Tree::of(&args.pids);
    let cpu_before = tree.cpu_time();
    let own_before = proc_cpu::own_cpu_time();
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.max_secs);
    let (_, mut samples) = phase(&target, connections, args.requests, deadline).await;
    let wall = began.elapsed();
    let cpu = tree.cpu_time().saturating_sub(cpu_before);
    let own = proc_cpu::own_cpu_time().saturating_sub(own_before);

    let ok = samples.totals.len() as u64;
    let per_request = |d: Duration| {
        if ok == 0 {
            0.0
        } else {
            d.as_secs_f64() * 1e6 / ok as f64
        }
    };
    let report = Report {
        url: args.url.clone(),
        stream: args.stream,
        concurrency: args.concurrency,
        ok,
        errors: samples.errors,
        first_error: samples.first_error.take(),
        wall_secs: wall.as_secs_f64(),
        requests_per_sec: ok as f64 / wall.as_secs_f64(),
        latency: Percentiles::of(&mut samples.totals),
        first_event: args
            .stream
            .then(|| Percentiles::of(&mut samples.first_events)),
        cpu_ms: cpu.as_secs_f64() * 1e3,
        cpu_us_per_request: per_request(cpu),
        processes: tree.len(),
        own_cpu_us_per_request: per_request(own),
    };
    if args.json {
        Ok(format!("{}\n", serde_json::to_string(&report)?))
    } else {
        Ok(report.text())
    }
}

/// Where the requests go and their bytes.
struct Target {
    addr: String,
    request: Arc<[u8]>,
}

impl Target {
    fn parse(args: &LoadArgs) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&args.url)
            .with_context(|| format!("{:?} is not a URL", args.url))?;
        if url.scheme() != "http" {
            bail!("only http:// URLs are supported, not {:?}", args.url);
        }
        let host = url.host_str().context("the URL has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
        let body = serde_json::json!({
            "model": args.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
            "stream": args.stream,
        })
        .to_string();
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
             Accept: */*\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(key) = &args.api_key {
            request.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        Ok(Self {
            addr: format!("{host}:{port}"),
            request: Arc::from(request.into_bytes()),
        })
    }
}

#[derive(Default)]
struct Samples {
    totals: Vec<Duration>,
    first_events: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn error(&mut self, message: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    fn merge(&mut self, other: Samples) {
        self.totals.extend(other.totals);
        self.first_events.extend(other.first_events);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Sends `requests` requests over the connections (reopening any that closed) until done or
/// `deadline`; returns the connections for the next phase and what was seen.
async fn phase(
    target: &Target,
    connections: Vec<Option<Connection>>,
    requests: u64,
    deadline: Instant,
) -> (Vec<Option<Connection>>, Samples) {
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            let issued = Arc::clone(&issued);
            let request = Arc::clone(&target.request);
            let addr = target.addr.clone();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while issued.fetch_add(1, Ordering::Relaxed) < requests && Instant::now() < deadline
                {
                    let conn = match &mut connection {
                        Some(conn) => conn,
                        None => match Connection::open(&addr).await {
                            Ok(conn) => connection.insert(conn),
                            Err(err) => {
                                samples.error(|| format!("connect: {err}"));
                                continue;
                            }
                        },
                    };
                    match conn.exchange(&request).await {
                        Ok((exchange, reusable)) => {
                            if !reusable {
                                connection = None;
                            }
                            if (200..300).contains(&exchange.status) {
                                samples.totals.push(exchange.total);
                                if let Some(first) = exchange.first_event {
                                    samples.first_events.push(first);
                                }
                            } else {
                                samples.error(|| format!("HTTP status {}", exchange.status));
                            }
                        }
                        Err(err) => {
                            connection = None;
                            samples.error(|| err.to_string());
                        }
                    }
                }
                (connection, samples)
            })
        })
        .collect();
    let mut connections = Vec::with_capacity(tasks.len());
    let mut all = Samples::default();
    for task in tasks {
        match task.await {
            Ok((connection, samples)) => {
                connections.push(connection);
                all.merge(samples);
            }
            Err(err) => {
                connections.push(None);
                all.error(|| format!("load task failed: {err}"));
            }
        }
    }
    (connections, all)
}

impl Report {
    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ({}), concurrency {}: {} ok, {} errors in {:.2} s: {:.0} requests/s",
            self.url,
            if self.stream {
                "streaming"
            } else {
                "non-streaming"
            },
            self.concurrency,
            self.ok,
            self.errors,
            self.wall_secs,
            self.requests_per_sec,
        );
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
