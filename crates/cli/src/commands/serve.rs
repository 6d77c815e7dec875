//! `passerelle serve`: the gateway and the llm service in one process. The service listens on a
//! loopback port and the gateway reaches it through the same gRPC client a split deployment
//! uses, so both deployments run the same code path.

use anyhow::Context as _;

use crate::{
    args::ServeArgs,
    config::{self, FileConfig},
    settings,
    shutdown::Shutdown,
};

pub async fn run(args: ServeArgs, file: &FileConfig) -> anyhow::Result<()> {
    let listen = settings::listen(args.listen, file, config::DEFAULT_LISTEN)?;
    let model = settings::model(&args.model, file)?;
    let shutdown = Shutdown::on_signals();
    let registry = prometheus::Registry::new();

    let llm_config = super::llm_config(&model).await?;
    let llm_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a loopback port for the llm service")?;
    let llm_endpoint = format!("http://{}", llm_listener.local_addr()?);
    let llm = tokio::spawn(passerelle_llm::serve(
        llm_config,
        llm_listener,
        registry.clone(),
        shutdown.wait(),
    ));

    let gateway = settings::gateway(&args.gateway, file, llm_endpoint)?;
    let state = super::gateway_state(gateway, &registry)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "passerelle is up: OpenAI API at http://{bound}/v1");
    let gateway = passerelle_gateway::serve(listener, state, shutdown.wait());

    // Either side failing ends the process; on a signal both drain.
    tokio::select! {
        result = gateway => result.context("gateway failed")?,
        result = llm => result.context("llm service panicked")?.context("llm service failed")?,
    }
    Ok(())
}
