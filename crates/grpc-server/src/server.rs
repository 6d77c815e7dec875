//! Building and running a tonic server with health, reflection, limits and tracing.

use std::{convert::Infallible, future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{server::NamedService, service::Routes};
use tonic_health::server::HealthReporter;

/// Limits and timeouts of a gRPC server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request or response message, in bytes (audio uploads are the large ones).
    pub max_message_bytes: usize,
    /// How long in-flight calls (generation streams included) may run on after shutdown starts.
    pub drain_timeout: Duration,
    /// HTTP/2 keepalive ping interval, so dead peers are noticed mid-stream.
    pub keepalive_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024 * 1024,
            drain_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
        }
    }
}

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("in-flight calls did not finish within the {0:?} drain timeout")]
    DrainTimeout(Duration),
}

/// A gRPC server under construction: add services, then [`GrpcServer::serve`].
pub struct GrpcServer {
    config: ServerConfig,
    routes: Routes,
    health: HealthReporter,
    health_service:
        tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    services: Vec<&'static str>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("config", &self.config)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// A server with health and reflection and no domain service yet.
    pub fn new(config: ServerConfig) -> Self {
        let health = HealthReporter::new();
        let health_service =
            tonic_health::server::HealthService::from_health_reporter(health.clone());
        let health_service = tonic_health::pb::health_server::HealthServer::new(health_service);
        Self {
            config,
            routes: Routes::default(),
            health,
            health_service,
            services: Vec::new(),
        }
    }

    /// The handle a service uses to report SERVING once its model is ready.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Adds a domain service and reports it NOT_SERVING, before anything can flip it to
    /// SERVING: a model that loads faster than the server starts is never overwritten.
    pub async fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.health
            .set_service_status(S::NAME, tonic_health::ServingStatus::NotServing)
            .await;
        self.services.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting and lets in-flight
    /// calls finish within the drain timeout.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(passerelle_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let routes = self
            .routes
            .add_service(self.health_service)
            .add_service(reflection);

        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let drain_timeout = self.config.drain_timeout;
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.config.keepalive_interval))
            .trace_fn(rpc_span)
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                shutdown.await;
                let _ = drain_tx.send(());
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result.map_err(ServeError::from),
            _ = drain_rx => {}
        }
        tracing::info!(
            ?drain_timeout,
            "shutting down: draining in-flight gRPC calls"
        );
        match tokio::time::timeout(drain_timeout, server).await {
            Ok(result) => result.map_err(ServeError::from),
            Err(_) => Err(ServeError::DrainTimeout(drain_timeout)),
        }
    }

    /// Applies the message size limit to a generated server before adding it.
    pub fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }
}

/// One span per RPC, child of the caller's trace when the request carries `traceparent`.
fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %request.uri().path(),
    );
    passerelle_telemetry::propagation::set_parent_from(&span, request.headers());
    span
}
