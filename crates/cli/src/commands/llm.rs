//! `passerelle llm`: the llm gRPC service alone.

use anyhow::Context as _;

use crate::{
    args::LlmArgs,
    config::{self, FileConfig},
    settings,
    shutdown::Shutdown,
};

pub async fn run(args: LlmArgs, file: &FileConfig) -> anyhow::Result<()> {
    let listen = settings::listen(args.listen, file, config::DEFAULT_LLM_LISTEN)?;
    let model = settings::model(&args.model, file)?;
    let shutdown = Shutdown::on_signals();
    let config = super::llm_config(&model).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "llm service listening (gRPC)");
    let registry = prometheus::Registry::new();
    if let Some(metrics_listen) = args.metrics_listen {
        crate::metrics_server::spawn(metrics_listen, registry.clone(), shutdown.wait()).await?;
    }
    passerelle_llm::serve(config, listener, registry, shutdown.wait())
        .await
        .context("llm service failed")
}
