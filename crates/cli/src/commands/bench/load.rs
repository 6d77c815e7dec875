//! The load generator: `concurrency` keep-alive connections share `requests` chat requests,
//! each connection with one in flight at a time, after an unmeasured warm-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::http1::Connection;
use super::proc_cpu::{self, Tree};
use super::report::Report;
use super::request::Target;
use super::samples::Samples;
use super::scan::Scan;
use super::stats::{Percentiles, Spread};
use crate::args::LoadArgs;

/// Runs the warm-up and the measured phase; returns the report as text or JSON.
pub async fn run(args: LoadArgs) -> anyhow::Result<String> {
    let target = Arc::new(Target::parse(&args)?);
    let mut connections = Vec::with_capacity(args.concurrency as usize);
    for _ in 0..args.concurrency {
        connections.push(Some(
            Connection::open(&target.addr)
                .await
                .with_context(|| format!("cannot connect to {}", target.addr))?,
        ));
    }
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    let phase_of = |requests, deadline| Phase {
        target: Arc::clone(&target),
        stream: args.stream,
        requests,
        deadline,
    };
    let (connections, _) = phase_of(args.warmup, far).run(connections).await;

    let tree = Tree::of(&args.pids);
    let cpu_before = tree.cpu_time();
    let own_before = proc_cpu::own_cpu_time();
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.max_secs);
    let (_, mut samples) = phase_of(args.requests, deadline).run(connections).await;
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
    let stream = args.stream;
    let report = Report {
        url: args.url.clone(),
        stream,
        concurrency: args.concurrency,
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
        ok,
        errors: samples.errors.total,
        first_error: samples.errors.first.take(),
        errors_by_status: std::mem::take(&mut samples.errors.by_status),
        errors_by_transport: std::mem::take(&mut samples.errors.by_transport),
        wall_secs: wall.as_secs_f64(),
        requests_per_sec: ok as f64 / wall.as_secs_f64(),
        latency: Percentiles::of(&mut samples.totals),
        first_event: stream.then(|| Percentiles::of(&mut samples.first_events)),
        ttft: stream.then(|| Percentiles::of(&mut samples.ttfts)),
        itl: stream.then(|| Percentiles::of(&mut samples.itls)),
        content_events: stream.then_some(samples.content_events),
        completion_tokens: samples.completion_tokens,
        answers_with_tokens: samples.with_tokens,
        tokens_per_sec: (samples.with_tokens > 0)
            .then(|| samples.completion_tokens as f64 / wall.as_secs_f64()),
        stream_tokens_per_sec: stream.then(|| Spread::of(&mut samples.stream_rates)),
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

/// `requests` requests to send before `deadline`.
struct Phase {
    target: Arc<Target>,
    stream: bool,
    requests: u64,
    deadline: Instant,
}

impl Phase {
    /// Sends the requests over the connections (reopening any that closed) until done or past
    /// the deadline; returns the connections for the next phase and what was seen.
    async fn run(self, connections: Vec<Option<Connection>>) -> (Vec<Option<Connection>>, Samples) {
        let this = Arc::new(self);
        let issued = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|connection| {
                tokio::spawn(Arc::clone(&this).connection(connection, Arc::clone(&issued)))
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
                    all.errors.transport("load task failed".to_owned(), || {
                        format!("load task failed: {err}")
                    });
                }
            }
        }
        (connections, all)
    }

    /// One connection's share of the requests, taken from `issued` one at a time.
    async fn connection(
        self: Arc<Self>,
        mut connection: Option<Connection>,
        issued: Arc<AtomicU64>,
    ) -> (Option<Connection>, Samples) {
        let mut samples = Samples::default();
        let mut request = self.target.request.to_vec();
        let mut scan = Scan::new(self.stream);
        while issued.fetch_add(1, Ordering::Relaxed) < self.requests
            && Instant::now() < self.deadline
        {
            let conn = match &mut connection {
                Some(conn) => conn,
                None => match Connection::open(&self.target.addr).await {
                    Ok(conn) => connection.insert(conn),
                    Err(err) => {
                        samples
                            .errors
                            .transport(format!("connect: {}", err.kind()), || {
                                format!("connect: {err}")
                            });
                        continue;
                    }
                },
            };
            self.target.next(&mut request);
            scan.reset();
            match conn.exchange(&request, &mut scan).await {
                Ok((exchange, reusable)) => {
                    if !reusable {
                        connection = None;
                    }
                    scan.finish();
                    if (200..300).contains(&exchange.status) {
                        samples.ok(exchange.total, &scan);
                    } else {
                        samples.errors.status(exchange.status, scan.leftover());
                    }
                }
                Err(err) => {
                    connection = None;
                    samples.errors.transport(err.kind(), || err.to_string());
                }
            }
        }
        (connection, samples)
    }
}
