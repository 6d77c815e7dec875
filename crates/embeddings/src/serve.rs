//! Serving the engine over gRPC: bind at once, report NOT_SERVING while the model loads, flip
//! to SERVING after the warm-up pass.

use std::{future::Future, path::PathBuf, time::Duration};

use passerelle_grpc_server::{GrpcServer, ServerConfig};
use passerelle_model_runtime::DeviceChoice;
use passerelle_proto::embeddings::embeddings_server::EmbeddingsServer;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::{
    cache::{CacheConfig, CacheHandle},
    documents::{DocumentsConfig, DocumentsHandle},
    engine::{EmbeddingEngine, EngineConfig},
    error::EmbeddingsError,
    service::EmbeddingsService,
};

/// What `serve` runs.
#[derive(Debug, Clone)]
pub struct EmbeddingsServiceConfig {
    /// A sentence-transformers model directory, already resolved to local disk.
    pub model_path: PathBuf,
    /// The id clients name the model by.
    pub model_id: String,
    /// What the operator named (a path or a hub repo), reported by `ListModels`.
    pub source: String,
    /// Compute threads; candle's default when `None`.
    pub threads: Option<usize>,
    /// Where the model runs: the CPU, or a GPU in a build with the `cuda` feature.
    pub device: DeviceChoice,
    /// Requests that may wait for the engine before new ones get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Most texts in one forward pass.
    pub max_batch: usize,
    /// The model is a Matryoshka model: `dimensions` may shorten its vectors.
    pub matryoshka: bool,
    /// Bounds and defaults of the semantic cache (`CacheLookup` / `CacheStore`).
    pub cache: CacheConfig,
    /// Where documents are kept (`documents.dir`), their bounds and chunking defaults.
    pub documents: DocumentsConfig,
}

impl Default for EmbeddingsServiceConfig {
    /// all-MiniLM-L6-v2 in `./all-MiniLM-L6-v2`, with the CLI's queue and batch sizes: a base
    /// for `..Default::default()`, with `model_path` set by the caller.
    fn default() -> Self {
        Self {
            model_path: PathBuf::from("all-MiniLM-L6-v2"),
            model_id: "all-MiniLM-L6-v2".to_owned(),
            source: "sentence-transformers/all-MiniLM-L6-v2".to_owned(),
            threads: None,
            device: DeviceChoice::Cpu,
            queue_capacity: 64,
            max_batch: 32,
            matryoshka: false,
            cache: CacheConfig::default(),
            documents: DocumentsConfig::default(),
        }
    }
}

/// How often expired cache entries are swept when no request does it first; only memory and
/// the entries gauge wait on it, since an expired entry never answers.
const CACHE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Serves the `Embeddings` service on `listener` until `shutdown` resolves. The model loads in
/// the background; until it is warm, health says NOT_SERVING and `Embed` answers UNAVAILABLE
/// ("model is loading"). Documents kept in `config.documents.dir` are read before serving
/// starts; an unreadable directory is an error.
pub async fn serve(
    config: EmbeddingsServiceConfig,
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EmbeddingsError> {
    let model_path = config.model_path.clone();
    let engine = EmbeddingEngine::spawn(
        EngineConfig {
            model_path: config.model_path,
            model_id: config.model_id,
            threads: config.threads,
            device: config.device,
            queue_capacity: config.queue_capacity,
            max_batch: config.max_batch,
            matryoshka: config.matryoshka,
        },
        &registry,
    )?;
    let cache = CacheHandle::new(config.cache, engine.clone(), &registry)?;
    let documents =
        DocumentsHandle::open(config.documents, engine.clone(), model_path, &registry).await?;
    let server = GrpcServer::new(ServerConfig::default());
    let health = server.health();
    let max_message_bytes = server.max_message_bytes();
    let service = EmbeddingsServer::new(EmbeddingsService::new(
        engine.clone(),
        config.source,
        cache.clone(),
        documents,
    ))
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes);
    // NOT_SERVING is registered here, before the load below can report SERVING.
    let serving = server.add_service(service).await.serve(listener, shutdown);
    let flip_health = tokio::spawn(async move {
        match engine.ready().await {
            Ok(_) => {
                health
                    .set_serving::<EmbeddingsServer<EmbeddingsService>>()
                    .await
            }
            // The service keeps answering: ListModels reports FAILED and why.
            Err(err) => tracing::error!(error = %err, "the embedding model will not be served"),
        }
    });
    let sweep = tokio::spawn(async move {
        let mut every = tokio::time::interval(CACHE_SWEEP_INTERVAL);
        loop {
            every.tick().await;
            if let Err(err) = cache.sweep().await {
                tracing::warn!(error = %err, "semantic cache sweep failed");
            }
        }
    });
    let result = serving.await;
    flip_health.abort();
    sweep.abort();
    result.map_err(EmbeddingsError::from)
}
