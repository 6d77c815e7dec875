//! Where the gateway accepts connections: one socket served on the process's shared runtime,
//! or one socket per worker thread (see `passerelle_gateway::workers`).

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use anyhow::Context as _;
use passerelle_gateway::AppState;

/// The gateway's bound listening socket(s).
pub enum GatewayListener {
    /// `workers = 0`: served by the runtime that runs everything else.
    Shared(tokio::net::TcpListener),
    /// One socket per worker, on the same address.
    Workers(Vec<std::net::TcpListener>),
}

impl GatewayListener {
    /// Binds `listen` for `workers` worker threads, or for the shared runtime when 0.
    pub async fn bind(listen: SocketAddr, workers: usize) -> anyhow::Result<Self> {
        let listener = match NonZeroUsize::new(workers) {
            None => tokio::net::TcpListener::bind(listen)
                .await
                .map(Self::Shared),
            Some(count) => passerelle_gateway::workers::bind(listen, count).map(Self::Workers),
        };
        listener.with_context(|| format!("cannot listen on {listen}"))
    }

    /// The address bound (the port chosen, when `listen` named port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Shared(listener) => listener.local_addr(),
            Self::Workers(listeners) => listeners
                .first()
                .ok_or_else(|| std::io::Error::other("no listening socket"))?
                .local_addr(),
        }
    }

    /// Serves the gateway until `shutdown`, then drains it.
    pub async fn serve(
        self,
        state: AppState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Self::Shared(listener) => passerelle_gateway::serve(listener, state, shutdown).await,
            Self::Workers(listeners) => {
                passerelle_gateway::serve_workers(listeners, state, shutdown).await
            }
        }
    }
}
