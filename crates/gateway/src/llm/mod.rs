//! The gateway's client of the llm service: the generated gRPC stubs on one lazily connected
//! channel, behind a small domain API. Requests go out as the contract's messages (built by
//! `crate::openai`); everything coming back is converted to the domain types of [`events`].

mod events;

use std::time::Duration;

use passerelle_proto::common::ListModelsRequest;
use passerelle_proto::llm::llm_client::LlmClient;
use passerelle_proto::llm::{
    GenerateRequest, GenerateResponse, TokenizeRequest, TokenizeResponse, llm_server,
};
use tokio::time::Instant;

pub use crate::backend::{BackendError, Readiness};
pub use events::{
    Delta, FinishReason, Finished, GenerationEvent, ModelEntry, TokenLogprob, ToolCallOut,
    TopLogprob, Usage,
};

use crate::GatewayConfig;
use crate::backend::{self, TracedChannel};

/// A cheap, cloneable handle on the llm service.
#[derive(Clone)]
pub struct LlmBackend {
    llm: LlmClient<TracedChannel>,
    channel: TracedChannel,
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
    pub fn connect_lazy(config: &GatewayConfig) -> Result<Self, backend::BackendSetupError> {
        let channel = backend::connect_lazy(&config.llm_endpoint, config)?;
        Ok(Self {
            llm: LlmClient::new(channel.clone()),
            channel,
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

    /// Renders and tokenizes a prompt exactly as a generation would (a prompt of token ids is
    /// decoded instead).
    pub async fn tokenize(
        &self,
        request: TokenizeRequest,
    ) -> Result<TokenizeResponse, BackendError> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.control_timeout);
        let response =
            tokio::time::timeout(self.control_timeout, self.llm.clone().tokenize(request))
                .await
                .map_err(|_| BackendError::DeadlineExceeded)??;
        Ok(response.into_inner())
    }

    /// Whether the llm service reports SERVING.
    pub async fn readiness(&self) -> Readiness {
        backend::readiness(
            &self.channel,
            llm_server::SERVICE_NAME,
            self.control_timeout,
        )
        .await
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
