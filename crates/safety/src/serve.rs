//! Serving the pipeline over gRPC. Health reports SERVING once the layers are built, which
//! takes the injection classifier's loading and warm-up when it is configured.

use std::{future::Future, sync::Arc};

use passerelle_grpc_server::{GrpcServer, ServerConfig};
use passerelle_proto::safety::safety_server::SafetyServer;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::{
    error::SafetyError,
    injection::{InjectionConfig, InjectionLayer},
    layer::{CheckLayer, Pipeline},
    llama_guard::{LlamaGuardConfig, LlamaGuardLayer},
    pii::PiiLayer,
    request::RequestLimits,
    rules::{RuleSet, RulesLayer},
    service::SafetyService,
};

/// What `serve` runs.
#[derive(Debug, Clone)]
pub struct SafetyServiceConfig {
    /// The rule layer's rules; `None` turns the layer off.
    pub rules: Option<RuleSet>,
    /// Whether `Check` redacts personal data (`Redact` always does).
    pub pii: bool,
    /// The prompt-injection classifier; `None` (the default) turns the layer off.
    pub injection: Option<InjectionConfig>,
    /// Llama Guard 3; `None` (the default) turns the layer off.
    pub llama_guard: Option<LlamaGuardConfig>,
    /// Bounds on one request.
    pub limits: RequestLimits,
}

impl Default for SafetyServiceConfig {
    /// The built-in rules and PII redaction, with the default limits.
    fn default() -> Self {
        Self {
            rules: Some(RuleSet::defaults()),
            pii: true,
            injection: None,
            llama_guard: None,
            limits: RequestLimits::default(),
        }
    }
}

impl SafetyServiceConfig {
    /// The enabled layers, cheapest first: rules, PII, the injection classifier, then Llama
    /// Guard; the models are loaded here (blocking, seconds each).
    pub fn pipeline(&self) -> Result<Pipeline, SafetyError> {
        let mut layers: Vec<Arc<dyn CheckLayer>> = Vec::new();
        if let Some(rules) = &self.rules {
            layers.push(Arc::new(RulesLayer::new(rules.clone())));
        }
        if self.pii {
            layers.push(Arc::new(PiiLayer));
        }
        if let Some(injection) = &self.injection {
            layers.push(Arc::new(InjectionLayer::load(injection)?));
        }
        if let Some(llama_guard) = &self.llama_guard {
            layers.push(Arc::new(LlamaGuardLayer::load(llama_guard)?));
        }
        Ok(Pipeline::new(layers))
    }
}

/// Serves the `Safety` service on `listener` until `shutdown` resolves, its metrics on
/// `registry`.
pub async fn serve(
    config: SafetyServiceConfig,
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SafetyError> {
    let limits = config.limits;
    let pipeline = tokio::task::spawn_blocking(move || config.pipeline())
        .await
        .map_err(|err| {
            SafetyError::from(crate::injection::InjectionError::Panic(err.to_string()))
        })??;
    let service = SafetyService::new(pipeline, limits, &registry)?;
    let server = GrpcServer::new(ServerConfig::default());
    let health = server.health();
    let max_message_bytes = server.max_message_bytes();
    let service = SafetyServer::new(service)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let server = server.add_service(service).await;
    health.set_serving::<SafetyServer<SafetyService>>().await;
    server.serve(listener, shutdown).await?;
    Ok(())
}
