//! Serving the engine over gRPC: bind at once, report NOT_SERVING while the model loads, flip
//! to SERVING after the warm-up pass.

use std::{future::Future, path::PathBuf};

use passerelle_grpc_server::{GrpcServer, ServerConfig};
use passerelle_model_runtime::DeviceChoice;
use passerelle_proto::llm::llm_server::LlmServer;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::{
    engine::{BatchConfig, Engine, EngineConfig},
    error::LlmError,
    service::LlmService,
};

/// What `serve` runs.
#[derive(Debug, Clone)]
pub struct LlmServiceConfig {
    /// A `.gguf` file or a Hugging Face model directory, already resolved to local disk.
    pub model_path: PathBuf,
    /// The id clients name the model by.
    pub model_id: String,
    /// What the operator named (a path or a hub repo), reported by `ListModels`.
    pub source: String,
    /// Where the model runs: the CPU, or a GPU in a build with the `cuda` feature.
    pub device: DeviceChoice,
    /// Compute threads; candle's default when `None`.
    pub threads: Option<usize>,
    /// Requests that may wait for the engine before new ones get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Batch size, chunked prefill and the KV cache budget.
    pub batch: BatchConfig,
}

/// Serves the `Llm` service on `listener` until `shutdown` resolves. The model loads in the
/// background; until it is warm, health says NOT_SERVING and `Generate` answers UNAVAILABLE
/// ("model is loading").
pub async fn serve(
    config: LlmServiceConfig,
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LlmError> {
    let engine = Engine::spawn(
        EngineConfig {
            model_path: config.model_path,
            model_id: config.model_id,
            device: config.device,
            threads: config.threads,
            queue_capacity: config.queue_capacity,
            batch: config.batch,
        },
        &registry,
    )?;
    let server = GrpcServer::new(ServerConfig::default());
    let health = server.health();
    let max_message_bytes = server.max_message_bytes();
    let service = LlmServer::new(LlmService::new(engine.clone(), config.source))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    // NOT_SERVING is registered here, before the load below can report SERVING.
    let serving = server.add_service(service).await.serve(listener, shutdown);
    let flip_health = tokio::spawn(async move {
        match engine.ready().await {
            Ok(_) => health.set_serving::<LlmServer<LlmService>>().await,
            // The service keeps answering: ListModels reports FAILED and why.
            Err(err) => tracing::error!(error = %err, "the model will not be served"),
        }
    });
    let result = serving.await;
    flip_health.abort();
    result.map_err(LlmError::from)
}
