//! `passerelle safety`: the safety gRPC service alone.

use anyhow::Context as _;

use passerelle_model_runtime::{HubOptions, ModelSource};
use passerelle_safety::{GuardOptions, InjectionConfig, LlamaGuardConfig};

use crate::{
    args::{SafetyArgs, SafetyModelArgs},
    config::{self, FileConfig},
    settings,
    shutdown::Shutdown,
};

/// The service's layers: the rules from `rules` (else the built-in ones) unless `no_rules`,
/// PII redaction unless `no_pii`, and the model layers `models` names, fetched through `hub`.
pub async fn service_config(
    rules: Option<&std::path::Path>,
    no_rules: bool,
    no_pii: bool,
    models: &SafetyModelArgs,
    hub: &HubOptions,
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
        llama_guard: llama_guard_config(models, hub).await?,
        injection: injection_config(models, hub).await?,
        ..Default::default()
    })
}

/// The model flags, each falling back to the file's key.
pub fn model_args(args: &SafetyModelArgs, file: &FileConfig) -> SafetyModelArgs {
    SafetyModelArgs {
        safety_model: args
            .safety_model
            .clone()
            .or_else(|| file.safety_model.clone()),
        safety_threshold: args.safety_threshold.or(file.safety_threshold),
        safety_categories: if args.safety_categories.is_empty() {
            file.safety_categories.clone().unwrap_or_default()
        } else {
            args.safety_categories.clone()
        },
        injection_model: args
            .injection_model
            .clone()
            .or_else(|| file.injection_model.clone()),
        injection_threshold: args.injection_threshold.or(file.injection_threshold),
    }
}

async fn model_path(model: &str, hub: &HubOptions) -> anyhow::Result<std::path::PathBuf> {
    let source: ModelSource = model.parse()?;
    let resolved = source
        .resolve(hub)
        .await
        .with_context(|| format!("cannot fetch the safety model {model}"))?;
    tracing::info!(%model, path = %resolved.path.display(), "safety model files ready");
    Ok(resolved.path)
}

/// Llama Guard's settings, when a model is named: categories by code from the S1-S14
/// taxonomy, the threshold a probability.
async fn llama_guard_config(
    models: &SafetyModelArgs,
    hub: &HubOptions,
) -> anyhow::Result<Option<LlamaGuardConfig>> {
    let Some(model) = &models.safety_model else {
        return Ok(None);
    };
    let mut options = GuardOptions::default();
    if let Some(threshold) = models.safety_threshold {
        if !(0.0..=1.0).contains(&threshold) {
            anyhow::bail!("--safety-threshold must be in [0, 1], got {threshold}");
        }
        options.threshold = Some(threshold);
    }
    if !models.safety_categories.is_empty() {
        let taxonomy = passerelle_safety::llama_guard::taxonomy();
        options.categories = models
            .safety_categories
            .iter()
            .map(|code| {
                let code = code.trim().to_ascii_uppercase();
                taxonomy
                    .iter()
                    .find(|c| c.code == code)
                    .cloned()
                    .with_context(|| format!("unknown hazard category {code} (S1 to S14)"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    Ok(Some(LlamaGuardConfig {
        options,
        ..LlamaGuardConfig::new(model_path(model, hub).await?)
    }))
}

async fn injection_config(
    models: &SafetyModelArgs,
    hub: &HubOptions,
) -> anyhow::Result<Option<InjectionConfig>> {
    let Some(model) = &models.injection_model else {
        return Ok(None);
    };
    let mut config = InjectionConfig::new(model_path(model, hub).await?);
    if let Some(threshold) = models.injection_threshold {
        if !(threshold > 0.0 && threshold <= 1.0) {
            anyhow::bail!("--injection-threshold must be in (0, 1], got {threshold}");
        }
        config.classifier.threshold = threshold;
    }
    Ok(Some(config))
}

pub async fn run(args: SafetyArgs, file: &FileConfig) -> anyhow::Result<()> {
    let listen = settings::listen(args.listen, file, config::DEFAULT_SAFETY_LISTEN)?;
    let service = service_config(
        args.rules.as_deref(),
        args.no_rules,
        args.no_pii,
        &model_args(&args.models, file),
        &settings::hub(&args.hub, file),
    )
    .await?;
    let shutdown = Shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(listen = %bound, pii = service.pii, "safety service listening (gRPC)");
    let registry = prometheus::Registry::new();
    if let Some(metrics_listen) = args.metrics_listen {
        crate::metrics_server::spawn(metrics_listen, registry.clone(), shutdown.wait()).await?;
    }
    passerelle_safety::serve(service, listener, registry, shutdown.wait())
        .await
        .context("safety service failed")
}
