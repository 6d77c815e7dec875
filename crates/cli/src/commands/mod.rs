//! What each subcommand does.

mod bench;
mod embeddings;
mod gateway;
mod keys;
mod listener;
mod llm;
mod safety;
mod serve;

use std::sync::Arc;

use anyhow::Context as _;
use passerelle_store::{EmbeddedStore, StaticKeys};

use crate::{
    args::{Cli, Command},
    config::FileConfig,
    settings::{self, EmbeddingSettings, GatewaySettings, ModelSettings},
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.config.as_deref())?;
    let service_name = match &cli.command {
        Command::Serve(_) => "passerelle",
        Command::Gateway(_) => "passerelle-gateway",
        Command::Llm(_) => "passerelle-llm",
        Command::Embeddings(_) => "passerelle-embeddings",
        Command::Safety(_) => "passerelle-safety",
        Command::Keys(_) => "passerelle-keys",
        Command::Bench(_) => "passerelle-bench",
    };
    let _telemetry =
        passerelle_telemetry::init(&settings::telemetry(&cli.log, &file, service_name)?)?;
    match cli.command {
        Command::Serve(args) => serve::run(*args, &file, cli.config.as_deref()).await,
        Command::Gateway(args) => gateway::run(*args, &file, cli.config.as_deref()).await,
        Command::Llm(args) => llm::run(args, &file).await,
        Command::Embeddings(args) => embeddings::run(args, &file).await,
        Command::Safety(args) => safety::run(args, &file).await,
        Command::Keys(args) => keys::run(args, &file).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

/// Resolves the model (downloading it when needed) into the llm service's configuration.
async fn llm_config(model: &ModelSettings) -> anyhow::Result<passerelle_llm::LlmServiceConfig> {
    let source: passerelle_model_runtime::ModelSource = model.model.parse()?;
    let resolved = source.resolve(&model.hub).await?;
    tracing::info!(model = %model.model, path = %resolved.path.display(), "model files ready");
    Ok(passerelle_llm::LlmServiceConfig {
        model_path: resolved.path,
        model_id: model.model_id.clone().unwrap_or(resolved.default_id),
        source: model.model.clone(),
        device: model.device,
        threads: model.threads,
        queue_capacity: model.queue_capacity,
        batch: model.batch.clone(),
    })
}

/// Resolves the embedding model (downloading it when needed) into its service's configuration.
async fn embeddings_config(
    embedding: &EmbeddingSettings,
) -> anyhow::Result<passerelle_embeddings::EmbeddingsServiceConfig> {
    let source: passerelle_model_runtime::ModelSource = embedding.model.parse()?;
    let resolved = source.resolve(&embedding.hub).await?;
    tracing::info!(model = %embedding.model, path = %resolved.path.display(), "embedding model files ready");
    Ok(passerelle_embeddings::EmbeddingsServiceConfig {
        model_path: resolved.path,
        model_id: embedding.model_id.clone().unwrap_or(resolved.default_id),
        source: embedding.model.clone(),
        threads: embedding.threads,
        device: embedding.device,
        queue_capacity: EMBEDDINGS_QUEUE_CAPACITY,
        max_batch: EMBEDDINGS_MAX_BATCH,
        matryoshka: embedding.matryoshka,
        cache: passerelle_embeddings::CacheConfig {
            max_entries: embedding.cache_max_entries,
            redis: embedding
                .redis_url
                .clone()
                .map(passerelle_embeddings::cache::CacheRedisConfig::new),
            ..Default::default()
        },
        documents: passerelle_embeddings::DocumentsConfig {
            dir: Some(embedding.documents_dir.clone()),
            ..Default::default()
        },
    })
}

/// Embedding requests that may wait for the model before more get 429.
const EMBEDDINGS_QUEUE_CAPACITY: usize = 64;
/// Most texts in one forward pass: bounds padding waste and activation memory.
const EMBEDDINGS_MAX_BATCH: usize = 32;

/// The gateway's state: keys from the variable or file, plus the store (Redis when
/// configured, else the embedded one in the data directory).
async fn gateway_state(
    settings: GatewaySettings,
    registry: &prometheus::Registry,
) -> anyhow::Result<passerelle_gateway::AppState> {
    let store: Arc<dyn passerelle_store::Store> = match &settings.redis_url {
        Some(url) => Arc::new(
            passerelle_store::RedisStore::connect(url)
                .await
                .context("cannot connect to Redis (redis_url)")?,
        ),
        None => Arc::new(EmbeddedStore::open(&settings.data_dir).with_context(|| {
            format!("cannot open the store in {}", settings.data_dir.display())
        })?),
    };
    Ok(passerelle_gateway::AppState::new(
        settings.config,
        store,
        StaticKeys::from_plaintext(&settings.api_keys),
        registry,
    )?)
}
