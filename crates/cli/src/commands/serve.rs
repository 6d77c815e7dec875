//! `passerelle serve`: the gateway, the llm service, the safety service (rule layer and PII;
//! unless `--no-safety`) and (when an embedding model is configured) the embeddings service in
//! one process. The services listen on loopback ports and the gateway
//! reaches them through the same gRPC clients a split deployment uses, so both deployments run
//! the same code path.

use std::future::Future;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use crate::{
    args::ServeArgs,
    config::{self, FileConfig},
    settings,
    shutdown::Shutdown,
};

pub async fn run(
    args: ServeArgs,
    file: &FileConfig,
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let listen = settings::listen(args.listen, file, config::DEFAULT_LISTEN)?;
    let model = settings::model(&args.model, file)?;
    let shutdown = Shutdown::on_signals();
    let registry = prometheus::Registry::new();

    let llm_config = super::llm_config(&model).await?;
    let (llm_endpoint, llm) = on_loopback("llm", |listener| {
        passerelle_llm::serve(llm_config, listener, registry.clone(), shutdown.wait())
    })
    .await?;

    let embedding = settings::embedding(
        &args.embedding,
        file,
        model.threads,
        model.hub.clone(),
        None,
    );
    let (embeddings_endpoint, embeddings) = match embedding {
        Some(mut embedding) => {
            // Documents live beside the keys unless placed elsewhere on purpose.
            if let (None, None, Some(data_dir)) = (
                &args.embedding.documents_dir,
                &file.documents_dir,
                &args.gateway.data_dir,
            ) {
                embedding.documents_dir = data_dir.join("documents");
            }
            // The gateways' Redis also carries the semantic cache, so that every replica's
            // embeddings service answers from the same entries.
            embedding.redis_url = args
                .gateway
                .redis_url
                .clone()
                .or_else(|| file.redis_url.clone());
            let config = super::embeddings_config(&embedding).await?;
            let (endpoint, task) = on_loopback("embeddings", |listener| {
                passerelle_embeddings::serve(config, listener, registry.clone(), shutdown.wait())
            })
            .await?;
            (Some(endpoint), Some(task))
        }
        None => (None, None),
    };

    // The rule layer is on unless turned off: it costs microseconds a prompt.
    let no_safety = args.no_safety || file.no_safety.unwrap_or(false);
    let (safety_endpoint, safety) = if no_safety {
        (None, None)
    } else {
        let rules = args
            .safety_rules
            .as_deref()
            .or(file.safety_rules.as_deref());
        let config = super::safety::service_config(
            rules,
            false,
            false,
            &super::safety::model_args(&args.safety_models, file),
            &settings::hub(&args.model.hub, file),
        )
        .await?;
        let (endpoint, task) = on_loopback("safety", |listener| {
            passerelle_safety::serve(config, listener, registry.clone(), shutdown.wait())
        })
        .await?;
        (Some(endpoint), Some(task))
    };

    let mut gateway = settings::gateway(&args.gateway, file, llm_endpoint, embeddings_endpoint)?;
    gateway.config.safety = settings::safety(&args.gateway, file, safety_endpoint)?;
    let workers = gateway.workers;
    let state = super::gateway_state(gateway, &registry).await?;
    let routing_source = settings::routing_source(&args.gateway, file, config_path);
    crate::routing::reload_on_sighup(state.clone(), routing_source.clone());
    crate::config_watch::reload_on_change(state.clone(), routing_source);
    let listener = super::listener::GatewayListener::bind(listen, workers).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "passerelle is up: OpenAI API at http://{bound}/v1");
    let gateway = listener.serve(state, shutdown.wait());

    // Any part failing ends the process; on a signal all of them drain.
    tokio::select! {
        result = gateway => result.context("gateway failed")?,
        result = llm => result.context("llm service panicked")?.context("llm service failed")?,
        result = until_it_ends(embeddings) => result
            .context("embeddings service panicked")?
            .context("embeddings service failed")?,
        result = until_it_ends(safety) => result
            .context("safety service panicked")?
            .context("safety service failed")?,
    }
    Ok(())
}

/// Runs the service `serve` makes on a loopback port; its endpoint and task.
async fn on_loopback<F, E>(
    service: &str,
    serve: impl FnOnce(tokio::net::TcpListener) -> F,
) -> anyhow::Result<(String, JoinHandle<Result<(), E>>)>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .with_context(|| format!("cannot bind a loopback port for the {service} service"))?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    Ok((endpoint, tokio::spawn(serve(listener))))
}

/// The end of an optional service's task; never, when it does not run.
async fn until_it_ends<T>(task: Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}
