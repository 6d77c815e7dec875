//! Serving on per-core workers, as nginx does: each worker is a thread with a current-thread
//! runtime, its own listening socket on the shared address (`SO_REUSEPORT`, so the kernel
//! spreads connections over them) and its own upstream client. A proxied request then stays on
//! one thread from accept to upstream and back, without the cross-thread wake-ups of a
//! work-stealing runtime.
//!
//! Background work (the ledger writer, health checks, routing reloads, Redis connections) stays
//! on the runtime that built the [`AppState`]. Tasks that handlers spawn run on their worker,
//! which waits for them (a bounded time) after draining its connections.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::AppState;

/// Pending connections each listening socket queues, as tokio's own `bind` sets.
const BACKLOG: i32 = 1024;

/// Longest a worker waits, after its connections are drained, for the tasks its requests spawned
/// (cache stores, accounting, lease releases), at most the shutdown grace.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// How often a stopping worker checks whether its spawned tasks have finished.
const TASKS_POLL: Duration = Duration::from_millis(10);

/// The default number of workers: one per core this process may run on.
pub fn default_count() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Binds `count` listening sockets on `addr`, one per worker, all with `SO_REUSEPORT`. Port 0
/// picks one free port for all of them (read it from any listener's `local_addr`).
///
/// Fails, as a plain bind would, when anything else already listens on `addr`: `SO_REUSEPORT`
/// alone would let a second gateway share the port silently.
pub fn bind(addr: SocketAddr, count: NonZeroUsize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // Without SO_REUSEPORT this bind fails if any socket listens there, with it or not.
        drop(bind_one(addr, false)?);
    }
    let first = bind_one(addr, true)?;
    #[cfg(unix)]
    let addr = first.local_addr()?;
    let mut listeners = Vec::with_capacity(count.get());
    for _ in 1..count.get() {
        #[cfg(unix)]
        listeners.push(bind_one(addr, true)?);
        // Without SO_REUSEPORT the workers accept on one shared socket.
        #[cfg(not(unix))]
        listeners.push(first.try_clone()?);
    }
    listeners.insert(0, first);
    Ok(listeners)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's bind: a restarted gateway can listen while old connections are in TIME_WAIT.
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(reuse_port)?;
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Serves [`crate::app`] on one worker thread per listener (see [`bind`]) until `shutdown`
/// completes, then stops accepting on every worker and lets each drain its in-flight requests
/// and streams for up to the shutdown grace, as [`crate::serve`] does. Must be called on the
/// runtime that runs the gateway's background work. A worker that fails stops them all.
pub async fn serve_workers(
    listeners: Vec<std::net::TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::warn_if_open(&state).await;
    let grace = state.config().shutdown_grace;
    let ledger = state.ledger().clone();
    let count = listeners.len();
    if let Some(addr) = listeners.first().and_then(|l| l.local_addr().ok()) {
        tracing::info!(%addr, workers = count, "gateway serving on per-core workers");
    }
    let (stop, stopped) = watch::channel(false);
    let (done, mut finished) = mpsc::unbounded_channel();
    for (index, listener) in listeners.into_iter().enumerate() {
        let (state, stopped, done) = (state.clone(), stopped.clone(), done.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("gateway-worker-{index}"))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_worker(listener, &state, stopped)
                }))
                .unwrap_or_else(|_| Err(std::io::Error::other("a gateway worker panicked")));
                let _ = done.send(result);
            });
        if let Err(err) = spawned {
            // The workers already started stop with the others' senders gone.
            let _ = stop.send(true);
            return Err(err);
        }
    }
    drop(done);
    drop(state);

    let mut result = Ok(());
    tokio::select! {
        () = shutdown => {}
        early = finished.recv() => {
            if let Some(Err(err)) = early {
                tracing::error!(error = %err, "a gateway worker failed; stopping the others");
                result = Err(err);
            }
        }
    }
    let _ = stop.send(true);
    while let Some(outcome) = finished.recv().await {
        if let Err(err) = outcome
            && result.is_ok()
        {
            result = Err(err);
        }
    }
    crate::flush_ledger(&ledger, grace).await;
    result
}

/// One worker: its runtime, its connections, then the tasks they spawned.
fn run_worker(
    listener: std::net::TcpListener,
    state: &AppState,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let state = state.for_worker();
    let tasks_grace = TASKS_GRACE.min(state.config().shutdown_grace);
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let shutdown = async move {
            // An error means the sender is gone, which only happens once serving is over.
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let result = crate::server::serve_connections(listener, state, shutdown).await;
        finish_spawned_tasks(tasks_grace).await;
        result
    })
}

/// Waits until no task is left on this worker's runtime, or `grace` has passed; what is left
/// then is dropped with the runtime.
async fn finish_spawned_tasks(grace: Duration) {
    let handle = tokio::runtime::Handle::current();
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let left = handle.metrics().num_alive_tasks();
        if left == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(left, "a gateway worker stops with tasks unfinished");
            return;
        }
        tokio::time::sleep(TASKS_POLL).await;
    }
}
