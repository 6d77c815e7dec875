//! `passerelle embeddings`: the embeddings gRPC service alone.

use anyhow::Context as _;

use crate::{
    args::EmbeddingsArgs,
    config::{self, FileConfig},
    settings,
    shutdown::Shutdown,
};

pub async fn run(args: EmbeddingsArgs, file: &FileConfig) -> anyhow::Result<()> {
    let listen = settings::listen(args.listen, file, config::DEFAULT_EMBEDDINGS_LISTEN)?;
    let threads = settings::threads(args.threads, file)?;
    let mut embedding = settings::embedding(
        &args.embedding,
        file,
        threads,
        settings::hub(&args.hub, file),
        Some(config::DEFAULT_EMBEDDING_MODEL),
    )
    .context("an embedding model is always configured here")?;
    embedding.redis_url = args.redis_url.or_else(|| file.redis_url.clone());
    let shutdown = Shutdown::on_signals();
    let service = super::embeddings_config(&embedding).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "embeddings service listening (gRPC)");
    let registry = prometheus::Registry::new();
    if let Some(metrics_listen) = args.metrics_listen {
        crate::metrics_server::spawn(metrics_listen, registry.clone(), shutdown.wait()).await?;
    }
    passerelle_embeddings::serve(service, listener, registry, shutdown.wait())
        .await
        .context("embeddings service failed")
}
