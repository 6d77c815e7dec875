//! The gateway's domain configuration. The binary builds it from its clap arguments; tests build
//! it directly.

use std::time::Duration;

/// Default request body limit: 4 MiB. A 128k-token conversation is about 0.5 MiB of JSON, so
/// this leaves room for long contexts while bounding what one request can make us buffer.
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// How the gateway runs. Every field has a documented default (see [`Default`]); construct with
/// `GatewayConfig { llm_endpoint: ..., ..GatewayConfig::default() }`.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Where the llm gRPC service listens, as an `http://host:port` URI.
    /// Default `http://127.0.0.1:50051`.
    pub llm_endpoint: String,
    /// Whether the llm service is one of this gateway's backends, so that readiness waits for
    /// it. Default true. Off for a gateway in front of upstreams only (`passerelle gateway`
    /// given upstreams and no llm endpoint): readiness leaves the llm service out, and a model
    /// the routing table sends nowhere else is still tried at `llm_endpoint`.
    pub llm_service: bool,
    /// Where the embeddings gRPC service listens, when one runs. With none, `/v1/embeddings`
    /// knows no model (404). Default none.
    pub embeddings_endpoint: Option<String>,
    /// Answer repeated questions from the semantic cache in the embeddings service. Needs
    /// `embeddings_endpoint`. Default off.
    pub semantic_cache: Option<crate::SemanticCacheConfig>,
    /// Check prompts with the safety service before answers are released. Default off.
    pub safety: Option<crate::safety::SafetyConfig>,
    /// Watch prompt embeddings for drift (`/admin/drift`). Needs `embeddings_endpoint`.
    /// Default off.
    pub drift: Option<crate::DriftConfig>,
    /// Largest accepted request body, in bytes; larger bodies get 413. Default 4 MiB.
    pub body_limit_bytes: usize,
    /// Longest a generation may run, streaming or not, from the request to its last token.
    /// Past it the client gets 504 (or an error event on a stream) and the service is told to
    /// stop. Default 10 minutes, enough for long CPU generations.
    pub request_timeout: Duration,
    /// Longest a TCP connect to a service may take. Connection refused fails at once; this
    /// bounds unroutable hosts. Default 2 s.
    pub connect_timeout: Duration,
    /// Longest a control call (list models, health check) may take. Default 5 s.
    pub control_timeout: Duration,
    /// Require an API key even when none is configured, so every `/v1` request gets 401 until
    /// keys exist. When false and no key exists at all, `/v1` is open and startup warns loudly.
    /// Once any key exists (revoked ones included), a key is always required. Default false.
    pub require_auth: bool,
    /// How long the model list from the service is reused. Default 5 s.
    pub models_cache_ttl: Duration,
    /// Most `/v1` requests (streams included) in flight at once; beyond it requests get 503 with
    /// `Retry-After` rather than queueing in the gateway. Default 512.
    pub max_concurrent_requests: usize,
    /// Rate limits of every caller whose key sets none of its own. Default unlimited.
    pub rate_limits: crate::ratelimit::Limits,
    /// Where rate-limit state lives (in process, or Redis shared by replicas) and what happens
    /// when Redis is down. Default in process.
    pub rate_limiter: crate::ratelimit::RateLimiterConfig,
    /// Accept JWTs as bearer tokens, verified with these keys. Default none.
    pub jwt: Option<crate::jwt::JwtConfig>,
    /// Take the client address for the audit log from `X-Forwarded-For` (behind nginx).
    /// Default false: the peer address.
    pub trust_forwarded_for: bool,
    /// Per-model prices for usage cost. Default none (everything costs 0).
    pub prices: crate::pricing::PriceList,
    /// Store each prompt and answer, with emails, phone numbers, card numbers, IBANs and IP addresses
    /// redacted, for review and access requests. Default false: no prompt is stored.
    pub log_prompts: bool,
    /// External OpenAI-compatible upstreams, aliases and fallbacks, and how replicas are picked,
    /// retried and ejected. Default: none, every model is served by the llm service.
    pub routing: crate::routing::RoutingConfig,
    /// After shutdown is signalled, how long in-flight requests and streams may run before
    /// their connections are closed. Default 30 s.
    pub shutdown_grace: Duration,
}

impl GatewayConfig {
    /// Defaults, with the llm service at `llm_endpoint`.
    pub fn new(llm_endpoint: impl Into<String>) -> Self {
        Self {
            llm_endpoint: llm_endpoint.into(),
            ..Self::default()
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            llm_endpoint: "http://127.0.0.1:50051".to_owned(),
            llm_service: true,
            embeddings_endpoint: None,
            semantic_cache: None,
            drift: None,
            safety: None,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            request_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(2),
            control_timeout: Duration::from_secs(5),
            require_auth: false,
            models_cache_ttl: Duration::from_secs(5),
            max_concurrent_requests: 512,
            shutdown_grace: Duration::from_secs(30),
            rate_limits: crate::ratelimit::Limits::UNLIMITED,
            rate_limiter: crate::ratelimit::RateLimiterConfig::default(),
            jwt: None,
            trust_forwarded_for: false,
            prices: crate::pricing::PriceList::default(),
            log_prompts: false,
            routing: crate::routing::RoutingConfig::default(),
        }
    }
}
