//! The thread pool model work runs in.

use rayon::{ThreadPool, ThreadPoolBuildError, ThreadPoolBuilder};

/// A pool of `threads` workers named `{name}-N`, in which a model's forward passes run.
///
/// Matrix products and softmax/norm/rope kernels run on the current rayon pool, which
/// `install` makes this one. Candle's element-wise and quantized kernels use its own
/// process-wide pool, sized once from `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else the
/// physical cores); a library cannot resize it, so this warns when the sizes differ. The
/// `passerelle` binary sets the variable from `--threads` before any thread starts.
pub fn compute_pool(
    name: &'static str,
    threads: usize,
) -> Result<ThreadPool, ThreadPoolBuildError> {
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()?;
    let candle_threads = candle_core::utils::barrier_pool().n_workers() + 1;
    if candle_threads != threads {
        tracing::warn!(
            threads,
            candle_threads,
            "candle's element-wise and quantized kernels use {candle_threads} threads; \
             set CANDLE_NUM_THREADS={threads} in the environment to bound them as well"
        );
    }
    Ok(pool)
}
