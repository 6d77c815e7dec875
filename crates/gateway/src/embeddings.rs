//! The gateway's client of the embeddings service: the generated stubs on one lazily connected
//! channel, behind a small domain API.

use std::time::Duration;

use passerelle_proto::common::ListModelsRequest;
use passerelle_proto::embeddings::embeddings_client::EmbeddingsClient;
use passerelle_proto::embeddings::{
    CacheLookupRequest, CacheLookupResponse, CacheStoreRequest, EmbedRequest, EmbedResponse,
    embeddings_server,
};

use crate::GatewayConfig;
use crate::backend::{self, BackendError, ModelEntry, Readiness, TracedChannel};

/// A cheap, cloneable handle on the embeddings service.
#[derive(Clone)]
pub struct EmbeddingsBackend {
    client: EmbeddingsClient<TracedChannel>,
    channel: TracedChannel,
    request_timeout: Duration,
    control_timeout: Duration,
}

impl std::fmt::Debug for EmbeddingsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingsBackend").finish_non_exhaustive()
    }
}

impl EmbeddingsBackend {
    /// A client of the service at `endpoint`; nothing connects until the first call.
    pub fn connect_lazy(
        endpoint: &str,
        config: &GatewayConfig,
    ) -> Result<Self, backend::BackendSetupError> {
        let channel = backend::connect_lazy(endpoint, config)?;
        Ok(Self {
            client: EmbeddingsClient::new(channel.clone()),
            channel,
            request_timeout: config.request_timeout,
            control_timeout: config.control_timeout,
        })
    }

    /// The embedding models the service serves.
    pub async fn list_models(&self) -> Result<Vec<ModelEntry>, BackendError> {
        let mut request = tonic::Request::new(ListModelsRequest {});
        request.set_timeout(self.control_timeout);
        let response = tokio::time::timeout(
            self.control_timeout,
            self.client.clone().list_models(request),
        )
        .await
        .map_err(|_| BackendError::DeadlineExceeded)??;
        Ok(response
            .into_inner()
            .models
            .into_iter()
            .filter_map(ModelEntry::listable)
            .collect())
    }

    /// Embeds a batch of texts.
    pub async fn embed(&self, request: EmbedRequest) -> Result<EmbedResponse, BackendError> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.request_timeout);
        let response =
            tokio::time::timeout(self.request_timeout, self.client.clone().embed(request))
                .await
                .map_err(|_| BackendError::DeadlineExceeded)??;
        Ok(response.into_inner())
    }

    /// Looks a prompt up in the service's semantic cache.
    pub async fn cache_lookup(
        &self,
        request: CacheLookupRequest,
    ) -> Result<CacheLookupResponse, BackendError> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.control_timeout);
        let response = tokio::time::timeout(
            self.control_timeout,
            self.client.clone().cache_lookup(request),
        )
        .await
        .map_err(|_| BackendError::DeadlineExceeded)??;
        Ok(response.into_inner())
    }

    /// Stores an answer in the service's semantic cache.
    pub async fn cache_store(&self, request: CacheStoreRequest) -> Result<(), BackendError> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.control_timeout);
        tokio::time::timeout(
            self.control_timeout,
            self.client.clone().cache_store(request),
        )
        .await
        .map_err(|_| BackendError::DeadlineExceeded)??;
        Ok(())
    }

    /// The generated client on this backend's channel, for the document calls
    /// (`crate::documents`).
    pub(crate) fn client(&self) -> EmbeddingsClient<TracedChannel> {
        self.client.clone()
    }

    /// The deadline of a data call (embedding, ingestion, retrieval) and of a control call.
    pub(crate) fn timeouts(&self) -> (Duration, Duration) {
        (self.request_timeout, self.control_timeout)
    }

    /// Whether the embeddings service reports SERVING.
    pub async fn readiness(&self) -> Readiness {
        backend::readiness(
            &self.channel,
            embeddings_server::SERVICE_NAME,
            self.control_timeout,
        )
        .await
    }
}
