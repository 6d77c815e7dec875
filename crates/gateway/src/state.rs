//! What every handler can reach: cheap handles only, cloned per request.

use std::sync::Arc;

use axum::extract::FromRef;
use passerelle_store::{Keyring, NewAuditEvent, StaticKeys, Store};
use prometheus::Registry;

use crate::GatewayConfig;
use crate::admission::Admission;
use crate::auth::{KeyCache, Principal};
use crate::catalog::ModelCatalog;
use crate::drift::DriftMonitor;
use crate::embeddings::EmbeddingsBackend;
use crate::jwt::JwtVerifier;
use crate::ledger::Ledger;
use crate::llm::LlmBackend;
use crate::metrics::GatewayMetrics;
use crate::ratelimit::{RateLimitSetupError, RateLimiter};
use crate::routing::table::RouteTable;
use crate::routing::{Routes, RoutingConfig, RoutingError, UpstreamClient};
use crate::safety::SafetyBackend;
use crate::semantic_cache::SemanticCache;

/// Why the gateway could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A service endpoint is not a usable `http://` or `https://` URI.
    #[error("invalid service endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The semantic cache lives in the embeddings service, and none is configured.
    #[error(
        "the semantic cache needs an embeddings service (set embeddings_endpoint or an embedding model)"
    )]
    CacheWithoutEmbeddings,
    /// Drift is measured on prompt embeddings, and no embeddings service is configured.
    #[error(
        "drift monitoring needs an embeddings service (set embeddings_endpoint or an embedding model)"
    )]
    DriftWithoutEmbeddings,
    /// The gateway's metrics could not be registered (already registered on this registry).
    #[error("cannot register gateway metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The JWT keys are unusable.
    #[error("invalid JWT configuration: {0}")]
    Jwt(#[from] crate::jwt::JwtConfigError),
    /// The rate limiter could not be built.
    #[error(transparent)]
    RateLimit(#[from] RateLimitSetupError),
    /// The routing table is inconsistent.
    #[error(transparent)]
    Routing(#[from] crate::routing::RoutingError),
}

impl GatewayError {
    fn invalid_endpoint(endpoint: &str, reason: impl ToString) -> Self {
        GatewayError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Without a scheme a URI still parses, and only fails at the first request: refuse it at start.
fn check_endpoint(endpoint: &str) -> Result<(), GatewayError> {
    if ["http://", "https://", "dns:///"]
        .iter()
        .any(|scheme| endpoint.starts_with(scheme))
    {
        Ok(())
    } else {
        Err(GatewayError::invalid_endpoint(
            endpoint,
            "expected http://host:port, or dns:///host:port to balance over every address",
        ))
    }
}

/// The gateway's shared state.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use passerelle_gateway::{AppState, GatewayConfig};
/// use passerelle_store::{EmbeddedStore, StaticKeys};
///
/// let config = GatewayConfig::new("http://127.0.0.1:50051");
/// let store = Arc::new(EmbeddedStore::open("/var/lib/passerelle")?);
/// let registry = prometheus::Registry::new();
/// let state = AppState::new(config, store, StaticKeys::from_plaintext(["my-key"]), &registry)?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// passerelle_gateway::serve(listener, state, std::future::pending()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AppState {
    /// Shared, so a clone (several per request: extractors, middleware, accounting) is one
    /// reference count, not one per client and channel.
    inner: Arc<Shared>,
    /// Apart from the rest: each per-core worker has its own (see [`AppState::for_worker`]).
    upstream: UpstreamClient,
}

struct Shared {
    config: Arc<GatewayConfig>,
    llm: LlmBackend,
    embeddings: Option<EmbeddingsBackend>,
    semantic_cache: Option<SemanticCache>,
    drift: Option<DriftMonitor>,
    safety: Option<SafetyBackend>,
    catalog: ModelCatalog,
    keys: Arc<Keyring>,
    /// The principal of each static key, in the keyring's order: built once, since a static
    /// key never changes while the gateway runs.
    static_principals: Box<[Principal]>,
    key_cache: Arc<KeyCache>,
    store: Arc<dyn Store>,
    ledger: Ledger,
    limiter: RateLimiter,
    jwt: Option<Arc<JwtVerifier>>,
    metrics: GatewayMetrics,
    registry: Registry,
    admission: Admission,
    routes: Routes,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Assembles the state: a lazily connected llm client (nothing is dialled until the first
    /// request), the gateway's metrics registered on `registry` (which `/metrics` renders, so
    /// register the services' metrics on it too when they run in this process), and the keys.
    ///
    /// `store` keeps keys, usage and the audit log; `static_keys` are operator-supplied keys
    /// accepted beside the stored ones. Must be called inside a Tokio runtime (the audit and
    /// usage writer is spawned here).
    pub fn new(
        config: GatewayConfig,
        store: Arc<dyn Store>,
        static_keys: StaticKeys,
        registry: &Registry,
    ) -> Result<Self, GatewayError> {
        let jwt = match &config.jwt {
            Some(jwt) => Some(Arc::new(JwtVerifier::new(jwt.clone())?)),
            None => None,
        };
        let limiter = RateLimiter::new(config.rate_limiter.clone(), registry)?;
        let ledger = Ledger::spawn(store.clone(), registry)?;
        let keys = Arc::new(Keyring::new(static_keys, Some(store.clone())));
        let static_principals = keys
            .static_keys()
            .records()
            .map(|record| Principal::from_key(record.clone(), config.rate_limits))
            .collect();
        check_endpoint(&config.llm_endpoint)?;
        let llm = LlmBackend::connect_lazy(&config)
            .map_err(|e| GatewayError::invalid_endpoint(&config.llm_endpoint, e))?;
        let embeddings = match config.embeddings_endpoint.as_deref() {
            Some(endpoint) => {
                check_endpoint(endpoint)?;
                Some(
                    EmbeddingsBackend::connect_lazy(endpoint, &config)
                        .map_err(|e| GatewayError::invalid_endpoint(endpoint, e))?,
                )
            }
            None => None,
        };
        let safety = match &config.safety {
            Some(safety) => {
                check_endpoint(&safety.endpoint)?;
                Some(
                    SafetyBackend::connect_lazy(safety, &config)
                        .map_err(|e| GatewayError::invalid_endpoint(&safety.endpoint, e))?,
                )
            }
            None => None,
        };
        let metrics = GatewayMetrics::register(registry)?;
        let routes = Routes::new(&config.routing)?;
        let upstream = UpstreamClient::new(config.connect_timeout);
        let semantic_cache = match (&config.semantic_cache, &embeddings) {
            (None, _) => None,
            (Some(cache), Some(embeddings)) => Some(SemanticCache::new(
                embeddings.clone(),
                cache.clone(),
                metrics.clone(),
            )),
            (Some(_), None) => return Err(GatewayError::CacheWithoutEmbeddings),
        };
        let drift = match (&config.drift, &embeddings) {
            (None, _) => None,
            (Some(drift), Some(embeddings)) => Some(DriftMonitor::new(
                drift.clone(),
                embeddings.clone(),
                registry,
            )?),
            (Some(_), None) => return Err(GatewayError::DriftWithoutEmbeddings),
        };
        Ok(Self {
            inner: Arc::new(Shared {
                semantic_cache,
                drift,
                safety,
                catalog: ModelCatalog::new(
                    llm.clone(),
                    embeddings.clone(),
                    routes.clone(),
                    config.models_cache_ttl,
                ),
                routes,
                embeddings,
                admission: Admission::new(config.max_concurrent_requests),
                config: Arc::new(config),
                llm,
                keys,
                static_principals,
                key_cache: Arc::default(),
                store,
                ledger,
                limiter,
                jwt,
                metrics,
                registry: registry.clone(),
            }),
            upstream,
        })
    }

    /// The same state with an upstream client of its own, for a worker thread with its own
    /// runtime: pooled upstream connections are then driven by the thread that uses them,
    /// not woken across threads.
    pub fn for_worker(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            upstream: UpstreamClient::new(self.inner.config.connect_timeout),
        }
    }

    /// The configuration the gateway runs with.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// Puts a new routing table in force (upstreams, aliases, fallbacks, policies) without a
    /// restart. Requests already running keep the table they started with; the new table's
    /// replicas start with a clean health record. On error the table in force is kept.
    pub fn reload_routing(&self, routing: &RoutingConfig) -> Result<(), RoutingError> {
        self.inner.routes.replace(routing)?;
        self.inner.catalog.invalidate();
        Ok(())
    }

    /// Static and stored keys, as the access layer verifies them.
    pub fn keys(&self) -> &Keyring {
        &self.inner.keys
    }

    /// The principal of `presented` when it is one of the static keys.
    pub(crate) fn static_principal(&self, presented: &str) -> Option<Principal> {
        let index = self.inner.keys.static_keys().position(presented)?;
        self.inner.static_principals.get(index).cloned()
    }

    /// The state store: keys, usage, feedback, audit.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn key_cache(&self) -> &KeyCache {
        &self.inner.key_cache
    }

    pub(crate) fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    pub(crate) fn jwt(&self) -> Option<&JwtVerifier> {
        self.inner.jwt.as_deref()
    }

    pub(crate) fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// Appends to the audit log, in the background; never fails the request.
    pub(crate) fn audit(&self, event: NewAuditEvent) {
        self.inner.ledger.audit(event);
    }

    pub(crate) fn llm(&self) -> &LlmBackend {
        &self.inner.llm
    }

    pub(crate) fn embeddings(&self) -> Option<&EmbeddingsBackend> {
        self.inner.embeddings.as_ref()
    }

    pub(crate) fn semantic_cache(&self) -> Option<&SemanticCache> {
        self.inner.semantic_cache.as_ref()
    }

    pub(crate) fn safety(&self) -> Option<&SafetyBackend> {
        self.inner.safety.as_ref()
    }

    pub(crate) fn drift(&self) -> Option<&DriftMonitor> {
        self.inner.drift.as_ref()
    }

    pub(crate) fn routes(&self) -> std::sync::Arc<RouteTable> {
        self.inner.routes.current()
    }

    /// The bound on concurrent `/v1` requests.
    pub(crate) fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    pub(crate) fn upstream_client(&self) -> &UpstreamClient {
        &self.upstream
    }

    pub(crate) fn catalog(&self) -> &ModelCatalog {
        &self.inner.catalog
    }

    pub(crate) fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }
}

impl FromRef<AppState> for GatewayMetrics {
    fn from_ref(state: &AppState) -> Self {
        state.inner.metrics.clone()
    }
}
