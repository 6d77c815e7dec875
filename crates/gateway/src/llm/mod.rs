//! The gateway's client of the llm service: the generated gRPC stubs on one lazily connected
//! channel, behind a small domain API. Requests go out as the contract's messages (built by
//! `crate::openai`); everything coming back is converted to the domain types of [`events`].

mod error;
mod events;

use std::time::Duration;

use passerelle_proto::common::ListModelsRequest;
use passerelle_proto::llm::llm_client::LlmClient;
use passerelle_proto::llm::{GenerateRequest, GenerateResponse, llm_server};
use passerelle_telemetry::propagation::TraceContextInterceptor;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use error::BackendError;
pub use events::{
    Delta, FinishReason, Finished, GenerationEvent, ModelEntry, TokenLogprob, TopLogprob, Usage,
};

use crate::GatewayConfig;

/// HTTP/2 ping interval on the service connection, so a service host that vanishes mid-stream
/// (no FIN, no RST) is noticed within ping interval + timeout instead of hanging the stream.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the llm service can take requests, as its gRPC health service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// SERVING: the model is loaded and warmed up.
    Serving,
    /// Reachable but not serving (loading, draining, or not registered yet).
    NotServing(String),
    /// Not reachable at all.
    Unreachable(String),
}

/// A cheap, cloneable handle on the llm service.
#[derive(Clone)]
pub struct LlmBackend {
    llm: LlmClient<InterceptedService<Channel, TraceContextInterceptor>>,
    health: HealthClient<InterceptedService<Channel, TraceContextInterceptor>>,
    request_timeout: Duration,
    control_timeout: Duration,
}

impl std::fmt::Debug for LlmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmBackend").finish_non_exhaustive()
    }
}

impl LlmBackend {
    /// A client of the service at `config.llm_endpoint`. Nothing connects until the first call,
    /// so the gateway starts (and answers 503) while the service is still coming up.
    pub fn connect_lazy(config: &GatewayConfig) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(config.llm_endpoint.clone())?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            llm: LlmClient::with_interceptor(channel.clone(), TraceContextInterceptor),
            health: HealthClient::with_interceptor(channel, TraceContextInterceptor),
            request_timeout: config.request_timeout,
            control_timeout: config.control_timeout,
        })
    }

    /// The models the service can serve now or soon.
    pub async fn list_models(&self) -> Result<Vec<ModelEntry>, BackendError> {
        let mut request = tonic::Request::new(ListModelsRequest {});
        request.set_timeout(self.control_timeout);
        let response =
            tokio::time::timeout(self.control_timeout, self.llm.clone().list_models(request))
                .await
                .map_err(|_| BackendError::DeadlineExceeded)??;
        Ok(response
            .into_inner()
            .models
            .into_iter()
            .filter_map(ModelEntry::listable)
            .collect())
    }

    /// Starts a generation. The returned stream owns the gRPC call: dropping it cancels the
    /// generation in the service. The whole generation is bounded by the configured request
    /// timeout, which the service also receives as its gRPC deadline.
    pub async fn generate(
        &self,
        request: GenerateRequest,
    ) -> Result<GenerationStream, BackendError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.request_timeout);
        let response = tokio::time::timeout_at(deadline, self.llm.clone().generate(request))
            .await
            .map_err(|_| BackendError::DeadlineExceeded)??;
        Ok(GenerationStream {
            inner: response.into_inner(),
            deadline,
            done: false,
        })
    }

    /// Asks the service's gRPC health service about the llm service itself (not the server's
    /// overall "" entry, which tonic-health reports SERVING from the start).
    pub async fn readiness(&self) -> Readiness {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: llm_server::SERVICE_NAME.to_owned(),
        });
        request.set_timeout(self.control_timeout);
        let mut health = self.health.clone();
        match tokio::time::timeout(self.control_timeout, health.check(request)).await {
            Err(_) => Readiness::Unreachable("health check timed out".to_owned()),
            Ok(Ok(response)) => match response.into_inner().status() {
                ServingStatus::Serving => Readiness::Serving,
                other => Readiness::NotServing(other.as_str_name().to_ascii_lowercase()),
            },
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                Readiness::NotServing("not registered".to_owned())
            }
            Ok(Err(status)) => match BackendError::from(status) {
                BackendError::Unavailable { .. } => {
                    Readiness::Unreachable("unreachable".to_owned())
                }
                other => Readiness::NotServing(other.to_string()),
            },
        }
    }
}

/// The events of one generation, in order. Owns the gRPC response stream.
pub struct GenerationStream {
    inner: tonic::Streaming<GenerateResponse>,
    deadline: Instant,
    done: bool,
}

impl GenerationStream {
    /// The next event; `None` once the service has closed the stream. After an error, the stream
    /// is over and further calls return `None`.
    pub async fn next(&mut self) -> Option<Result<GenerationEvent, BackendError>> {
        if self.done {
            return None;
        }
        let result = match tokio::time::timeout_at(self.deadline, self.inner.message()).await {
            Err(_) => Err(BackendError::DeadlineExceeded),
            Ok(Err(status)) => Err(status.into()),
            Ok(Ok(None)) => {
                self.done = true;
                return None;
            }
            Ok(Ok(Some(message))) => GenerationEvent::try_from(message),
        };
        self.done = result.is_err();
        Some(result)
    }
}
