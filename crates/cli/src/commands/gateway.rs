//! `passerelle gateway`: the HTTP gateway alone, in front of an llm service elsewhere, of
//! upstreams, or both.

use anyhow::Context as _;

use crate::{
    args::GatewayArgs,
    config::{self, FileConfig},
    settings,
    shutdown::Shutdown,
};

use super::listener::GatewayListener;

const DEFAULT_LLM_ENDPOINT: &str = "http://127.0.0.1:50051";

pub async fn run(
    args: GatewayArgs,
    file: &FileConfig,
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let listen = settings::listen(args.listen, file, config::DEFAULT_LISTEN)?;
    let llm_endpoint = args.llm_endpoint.or_else(|| file.llm_endpoint.clone());
    let llm_given = llm_endpoint.is_some();
    let llm_endpoint = llm_endpoint.unwrap_or_else(|| DEFAULT_LLM_ENDPOINT.to_owned());
    let embeddings_endpoint = args
        .embeddings_endpoint
        .or_else(|| file.embeddings_endpoint.clone());
    let mut gateway = settings::gateway(&args.gateway, file, llm_endpoint, embeddings_endpoint)?;
    // In front of upstreams only, readiness must not wait for an llm service nobody runs.
    gateway.config.llm_service = llm_given || gateway.config.routing.upstreams.is_empty();
    let safety_endpoint = args
        .safety_endpoint
        .or_else(|| file.safety_endpoint.clone());
    gateway.config.safety = settings::safety(&args.gateway, file, safety_endpoint)?;
    let shutdown = Shutdown::on_signals();
    let registry = prometheus::Registry::new();
    let workers = gateway.workers;
    let state = super::gateway_state(gateway, &registry).await?;
    let routing_source = settings::routing_source(&args.gateway, file, config_path);
    crate::routing::reload_on_sighup(state.clone(), routing_source.clone());
    crate::config_watch::reload_on_change(state.clone(), routing_source);
    GatewayListener::bind(listen, workers)
        .await?
        .serve(state, shutdown.wait())
        .await
        .context("gateway failed")
}
