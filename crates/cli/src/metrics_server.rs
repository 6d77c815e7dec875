//! `/metrics` for a service run alone (`llm`, `embeddings`, `safety`): its registry in
//! Prometheus' text format on an HTTP port of its own, since the service's port speaks gRPC.

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus::{Encoder as _, Registry, TextEncoder};

async fn metrics(State(registry): State<Registry>) -> impl IntoResponse {
    let mut body = Vec::new();
    // Encoding a registry's own families into memory cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut body);
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}

/// Serves `registry` on `listen` at `/metrics` until `shutdown`, in the background.
pub async fn spawn(
    listen: SocketAddr,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {listen}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry);
    tracing::info!(%listen, "metrics listening (HTTP /metrics)");
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %err, "metrics server failed");
        }
    });
    Ok(())
}
