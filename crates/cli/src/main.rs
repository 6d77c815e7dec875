//! `passerelle`, the one binary: `serve` (gateway and llm service in one process), `gateway`,
//! `llm`, `embeddings`, `safety`, and `keys` to manage API keys.
//!
//! `args` declares the command line, `config` the TOML file, `settings` merges them into each
//! component's configuration, `cpu` bounds candle's kernel threads, `routing` builds and reloads the routing table,
//! `commands` runs them, `shutdown` turns SIGINT/SIGTERM into a
//! graceful drain.

mod args;
mod commands;
mod config;
mod config_watch;
mod cpu;
mod metrics_server;
mod routing;
mod settings;
mod shutdown;

use std::process::ExitCode;

use clap::Parser as _;

// glibc's allocator was a tenth of the gateway's CPU time per proxied request (many small,
// short-lived allocations across threads); mimalloc's thread-local pages make them cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // A config file that fails to load is reported by the command itself, below.
    if let Ok(file) = config::FileConfig::load(cli.config.as_deref())
        && let Some(threads) = cpu::configured_threads(&cli.command, &file)
    {
        cpu::bound_kernel_threads(threads);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("passerelle: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("passerelle: {err:#}");
            ExitCode::FAILURE
        }
    }
}
