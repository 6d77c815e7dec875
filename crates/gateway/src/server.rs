//! The connection loop: HTTP/1.1 connections accepted on one listener, each served by hyper
//! straight into the router, and drained on shutdown.
//!
//! Hand-written rather than `axum::serve`, whose per-request path goes through hyper-util's
//! protocol-sniffing connection (HTTP/2 is nginx's to offer; see docs/operations.md), a tower
//! adapter and its oneshot future, a request mapper and a connect-info layer: a measurable share
//! of a proxied request's CPU time. Here a request costs one call of [`Routes`], which serves
//! the completion routes itself and hands the rest to the router.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::auth::Caller;
use crate::direct::{DirectRoute, Routes, RoutesFuture};
use crate::state::AppState;

/// How long accepting pauses after an error that is not the peer's (out of file descriptors,
/// most likely), so the loop does not spin while connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` for [`crate::app`] until `shutdown` completes, then stops
/// accepting and lets open connections finish their requests for up to the shutdown grace.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.config().shutdown_grace;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, llm = %state.config().llm_endpoint, "gateway listening");
    }
    let reaping = state.upstream_client().clone().reap_idle();
    let routes = crate::direct::routes(state);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut reaping = std::pin::pin!(reaping);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            never = &mut reaping => match never {},
        };
        match accepted {
            Ok((tcp, peer)) => serve_connection(&connections, tcp, peer, &routes),
            Err(err) if is_peer_error(&err) => {}
            Err(err) => {
                tracing::error!(error = %err, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(grace, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing the remaining connections");
    }
    Ok(())
}

fn serve_connection<C: DirectRoute, P: DirectRoute>(
    connections: &GracefulShutdown,
    tcp: TcpStream,
    peer: SocketAddr,
    routes: &Routes<C, P>,
) {
    // Without TCP_NODELAY, a streamed event written while the previous one is unacknowledged
    // waits for the client's delayed ACK: tens of milliseconds per event.
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY on a client connection");
    }
    let service = ConnectionService {
        routes: routes.clone(),
        peer,
    };
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
    let connection = connections.watch(connection);
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::trace!(error = %err, "connection ended with an error");
        }
    });
}

/// The peer's failures (it gave up before the connection was accepted), not the listener's.
fn is_peer_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One connection's requests into the routes, with the peer's address as their [`Caller`].
struct ConnectionService<C, P> {
    routes: Routes<C, P>,
    peer: SocketAddr,
}

impl<C: DirectRoute, P: DirectRoute> hyper::service::Service<hyper::Request<Incoming>>
    for ConnectionService<C, P>
{
    type Response = Response;
    type Error = Infallible;
    type Future = RoutesFuture<C::Future, P::Future>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(Caller::peer(self.peer));
        self.routes.call(req)
    }
}
