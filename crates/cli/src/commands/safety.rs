//! `passerelle safety`: the safety gRPC service alone.

use anyhow::Context as _;

use crate::{
    args::SafetyArgs,
    config::{self, FileConfig},
    settings,
    shutdown::Shutdown,
};

/// The service's layers: the rules from `rules` (else the built-in ones) unless `no_rules`, and
/// PII redaction unless `no_pii`.
pub fn service_config(
    rules: Option<&std::path::Path>,
    no_rules: bool,
    no_pii: bool,
) -> anyhow::Result<passerelle_safety::SafetyServiceConfig> {
    let rules = match (rules, no_rules) {
        (_, true) => None,
        (Some(path), false) => Some(
            passerelle_safety::RuleSet::load(path)
                .with_context(|| format!("cannot load the safety rules from {}", path.display()))?,
        ),
        (None, false) => Some(passerelle_safety::RuleSet::defaults()),
    };
    if let Some(rules) = &rules {
        tracing::info!(
            rules = rules.rules().len(),
            source = rules.source(),
            "safety rules loaded"
        );
    }
    Ok(passerelle_safety::SafetyServiceConfig {
        rules,
        pii: !no_pii,
        ..Default::default()
    })
}

pub async fn run(args: SafetyArgs, file: &FileConfig) -> anyhow::Result<()> {
    let listen = settings::listen(args.listen, file, config::DEFAULT_SAFETY_LISTEN)?;
    let service = service_config(args.rules.as_deref(), args.no_rules, args.no_pii)?;
    let shutdown = Shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(listen = %bound, pii = service.pii, "safety service listening (gRPC)");
    passerelle_safety::serve(
        service,
        listener,
        prometheus::Registry::new(),
        shutdown.wait(),
    )
    .await
    .context("safety service failed")
}
