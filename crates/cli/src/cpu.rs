//! Bounding the CPU threads model work uses.
//!
//! The engine runs candle's matrix products inside its own rayon pool of `threads` workers, but
//! candle's element-wise and quantized kernels use a process-wide pool that candle sizes once,
//! from `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS`, the first time it runs. The only way to
//! bound that pool is the environment, before any thread exists.

use crate::{args::Command, config::FileConfig};

/// The `threads` setting of the commands that run models.
pub fn configured_threads(command: &Command, file: &FileConfig) -> Option<usize> {
    let flag = match command {
        Command::Serve(args) => args.model.threads,
        Command::Llm(args) => args.model.threads,
        Command::Embeddings(args) => args.threads,
        Command::Gateway(_) | Command::Safety(_) | Command::Keys(_) | Command::Bench(_) => {
            return None;
        }
    };
    flag.or(file.threads).filter(|threads| *threads > 0)
}

/// Sizes candle's kernel pool to `threads`, unless the operator set it explicitly.
///
/// Must run before the async runtime or any other thread starts.
#[allow(unsafe_code, clippy::disallowed_methods)]
pub fn bound_kernel_threads(threads: usize) {
    for variable in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: called first thing in `main`, before the Tokio runtime or any other thread
            // exists, so no other thread can be reading the environment.
            unsafe { std::env::set_var(variable, threads.to_string()) };
        }
    }
}
