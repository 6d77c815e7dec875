//! `passerelle bench`: the load tool for measuring the gateway's own overhead and a model
//! server's latency under load. `load` drives chat requests (`request`) over plain keep-alive
//! HTTP/1.1 connections (`http1`), reads the answers cheaply (`scan`) and reports latency
//! percentiles, time to first token, inter-token latency, throughput in requests and tokens,
//! errors by status and the CPU time of the processes under test (`report`); `mock` is the
//! fast upstream the gateway is measured against.
//!
//! Both run on runtimes of their own, small and fixed, so the tool takes a known share of the
//! machine's cores whatever the process's main runtime has.

mod http1;
mod load;
mod mock;
mod proc_cpu;
mod report;
mod request;
mod samples;
mod scan;
mod stats;

use anyhow::Context as _;

use crate::args::{BenchArgs, BenchMode};

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        Some(BenchMode::MockUpstream(mock)) => {
            let threads = mock.threads as usize;
            on_own_runtime(threads, move || mock::serve(mock)).await
        }
        None => {
            let report = on_own_runtime(1, move || load::run(args.load)).await?;
            print!("{report}");
            Ok(())
        }
    }
}

/// Runs `task` to completion on a new runtime of `threads` worker threads (a current-thread
/// runtime for one), off the main runtime.
async fn on_own_runtime<T, F, Fut>(threads: usize, task: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    tokio::task::spawn_blocking(move || {
        let runtime = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
        }
        .context("cannot start the benchmark runtime")?;
        runtime.block_on(task())
    })
    .await
    .context("the benchmark task panicked")?
}
