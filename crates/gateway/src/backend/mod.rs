//! What every model-service client shares: a lazily connected channel that carries the trace
//! context, the gRPC health check, and one classification of failures ([`BackendError`]).

mod discovery;
mod error;

use std::time::Duration;

use passerelle_proto::common;
use passerelle_telemetry::propagation::TraceContextInterceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use error::{BackendError, PARAM_METADATA};

use crate::GatewayConfig;

/// HTTP/2 ping interval on a service connection, so a service host that vanishes mid-stream
/// (no FIN, no RST) is noticed within ping interval + timeout instead of hanging the stream.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel whose every request carries the current trace context.
pub(crate) type TracedChannel = InterceptedService<Channel, TraceContextInterceptor>;

/// Whether a service can take requests, as its gRPC health service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// SERVING: the model is loaded and warmed up.
    Serving,
    /// Reachable but not serving (loading, draining, or not registered yet).
    NotServing(String),
    /// Not reachable at all.
    Unreachable(String),
}

/// A channel to `endpoint`. Nothing connects until the first call, so the gateway starts (and
/// answers 503) while the service is still coming up. `dns:///host:port` balances over every
/// address the name resolves to, re-resolved as replicas come and go (see [`discovery`]).
pub(crate) fn connect_lazy(
    endpoint: &str,
    config: &GatewayConfig,
) -> Result<TracedChannel, BackendSetupError> {
    let connect_timeout = config.connect_timeout;
    let configure = move |endpoint: Endpoint| {
        endpoint
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
    };
    let channel = match discovery::dns_target(endpoint) {
        Some(target) => {
            let (host, port) = target.map_err(BackendSetupError::Endpoint)?;
            discovery::balanced(host, port, configure)
        }
        None => configure(Endpoint::from_shared(endpoint.to_owned())?).connect_lazy(),
    };
    Ok(InterceptedService::new(channel, TraceContextInterceptor))
}

/// Why a service endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendSetupError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Endpoint(String),
}

/// Asks a server's health service about `service` itself (not the server's overall "" entry,
/// which tonic-health reports SERVING from the start).
pub(crate) async fn readiness(
    channel: &TracedChannel,
    service: &str,
    timeout: Duration,
) -> Readiness {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    let mut health = HealthClient::new(channel.clone());
    match tokio::time::timeout(timeout, health.check(request)).await {
        Err(_) => Readiness::Unreachable("health check timed out".to_owned()),
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => Readiness::Serving,
            other => Readiness::NotServing(other.as_str_name().to_ascii_lowercase()),
        },
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
            Readiness::NotServing("not registered".to_owned())
        }
        Ok(Err(status)) => match BackendError::from(status) {
            BackendError::Unavailable { .. } => Readiness::Unreachable("unreachable".to_owned()),
            other => Readiness::NotServing(other.to_string()),
        },
    }
}

/// One model the service serves, as the OpenAI model list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The id clients name in requests.
    pub id: String,
    /// When the model was loaded, seconds since the Unix epoch.
    pub created: i64,
    /// Organisation shown as `owned_by`.
    pub owned_by: String,
    /// Longest sequence, prompt and completion together, in tokens; 0 when unknown.
    pub context_length: u32,
}

impl ModelEntry {
    /// The models a client can use: those ready or on their way. Failed and unloaded models
    /// are left out of the list.
    pub(crate) fn listable(info: common::ModelInfo) -> Option<Self> {
        use common::ModelState;
        match info.state() {
            ModelState::Failed | ModelState::Unloaded => None,
            ModelState::Unspecified
            | ModelState::Downloading
            | ModelState::Loading
            | ModelState::Ready => Some(ModelEntry {
                owned_by: if info.owned_by.is_empty() {
                    "passerelle".to_owned()
                } else {
                    info.owned_by
                },
                id: info.id,
                created: info.created_unix,
                context_length: info.context_length,
            }),
        }
    }
}
