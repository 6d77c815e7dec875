//! The HTTP edge of Passerelle: OpenAI-compatible routes in front of the model services, which it
//! reaches only through their gRPC clients.
//!
//! Start with [`GatewayConfig`] and [`AppState::new`], then either mount [`app`] yourself or call
//! [`serve`] with a bound listener and a shutdown future. Inside: [`config`] (what can be tuned),
//! [`state`] (the handles every handler shares), [`auth`] (API keys as the [`Principal`]
//! extractor), [`error`] (the one OpenAI error envelope), [`extract`] (JSON and request-id
//! extractors that reject in that envelope), [`openai`] (request and response shapes, validation,
//! conversion to the llm contract), [`llm`] (the domain client of the llm service), `generation`
//! (one generation, timed and collected), `sse` (streaming with cancellation on disconnect),
//! `catalog` (the cached model list), `edge` (request ids, spans, logs and metrics of every
//! request), [`metrics`] (Prometheus), `admission` (the concurrency bound), [`ratelimit`]
//! (per-principal rpm, tpm and concurrency limits, in process or in Redis), [`jwt`]
//! (bearer-token verification), `documents` (the client of the document store) with
//! [`retrieval`] (documents put in chat prompts and cited), [`admin`] (the operator API's
//! shapes: keys, audit log, erasure), [`routing`] (external upstreams, aliases, fallbacks,
//! load balancing) and `routes` (the handlers), `direct` (the completion routes, served without
//! the router), and [`workers`] (serving on per-core threads, as [`serve_workers`]).

pub mod admin;
mod admission;
mod answer;
pub mod auth;
pub mod backend;
mod body;
mod catalog;
pub mod config;
mod direct;
mod documents;
pub mod drift;
mod edge;
pub mod embeddings;
pub mod error;
pub mod extract;
mod generation;
pub mod jwt;
mod ledger;
pub mod llm;
mod meter;
pub mod metrics;
pub mod openai;
mod output_screen;
pub mod pricing;
pub mod ratelimit;
pub mod retrieval;
mod routes;
pub mod routing;
pub mod safety;
pub mod semantic_cache;
mod server;
mod sse;
pub mod state;
pub mod workers;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;

pub use auth::Principal;
pub use config::GatewayConfig;
pub use drift::{DriftConfig, DriftReport};
pub use error::ApiError;
pub use metrics::GatewayMetrics;
pub use routing::{CascadeConfig, RoutingConfig, UpstreamConfig};
pub use semantic_cache::SemanticCacheConfig;
pub use state::{AppState, GatewayError};
pub use workers::serve_workers;

use passerelle_store::KeyVerifier as _;

/// The gateway's router, with every route and middleware, ready to serve.
///
/// `/v1/*` needs an API key (see [`Principal`]) and counts against the concurrency bound;
/// `/health/live`, `/health/ready` and `/metrics` need neither.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{*id}", get(routes::models::get))
        .route("/v1/chat/completions", post(routes::chat::create))
        .route("/v1/completions", post(routes::completions::create))
        .route("/v1/embeddings", post(routes::embeddings::create))
        .route("/v1/moderations", post(routes::moderations::create))
        .route("/tokenize", post(routes::tokenize::tokenize))
        .route("/detokenize", post(routes::tokenize::detokenize))
        .route("/v1/usage", get(routes::usage::get))
        .route("/v1/feedback", post(routes::feedback::create))
        .route("/admin/drift", get(routes::admin::drift))
        .route("/admin/drift/baseline", post(routes::admin::rebase_drift))
        .route(
            "/admin/keys",
            post(routes::keys::create).get(routes::keys::list),
        )
        .route(
            "/admin/keys/{id}",
            get(routes::keys::get).delete(routes::keys::revoke),
        )
        .route("/admin/audit", get(routes::audit::list))
        .route("/v1/users/{id}/data", delete(routes::users::erase))
        .route(
            "/v1/documents",
            post(routes::documents::create).get(routes::documents::list),
        )
        .route("/v1/documents/search", post(routes::documents::search))
        .route(
            "/v1/documents/{id}",
            get(routes::documents::get).delete(routes::documents::delete),
        )
        // Auth, then the concurrency bound, for the routes above only: a 405 on them needs no key.
        .route_layer(auth::AuthLayer::new(state.clone()));
    Router::new()
        .merge(v1)
        .route("/health/live", get(routes::health::live))
        .route("/health/ready", get(routes::health::ready))
        .route("/metrics", get(routes::metrics::render))
        .fallback(routes::not_found)
        // Applies to the routes added above, so it must come after them.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(edge::EdgeLayer::new(state.metrics().clone()))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then stops accepting connections and
/// lets in-flight requests and streams finish for up to `shutdown_grace` before closing them
/// (which cancels their generations).
///
/// ```no_run
/// # async fn example(state: passerelle_gateway::AppState) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(passerelle_gateway::serve(listener, state, async {
///     let _ = stopped.await;
/// }));
/// // ... talk to http://{addr} ...
/// let _ = stop.send(());
/// server.await??;
/// # Ok(()) }
/// ```
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    warn_if_open(&state).await;
    let grace = state.config().shutdown_grace;
    let ledger = state.ledger().clone();
    let result = server::serve_connections(listener, state, shutdown).await;
    flush_ledger(&ledger, grace).await;
    result
}

/// Usage and audit records of the requests just finished must reach the store, however the
/// server stopped: with no connection open it finishes in the very poll that sees the signal.
async fn flush_ledger(ledger: &ledger::Ledger, grace: Duration) {
    let left = ledger.flush(grace).await;
    if left > 0 {
        tracing::error!(
            left,
            "shutting down with records not yet written to the store"
        );
    }
}

/// An open gateway must never go unnoticed.
async fn warn_if_open(state: &AppState) {
    if state.config().require_auth {
        return;
    }
    match state.keys().has_any_keys().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "NO API KEYS ARE CONFIGURED: /v1 is open to anyone who can reach this address. \
             Create a key or set require_auth to close it."
        ),
        Err(err) => tracing::error!(error = %err, "could not read the key store"),
    }
}
