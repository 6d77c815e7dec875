//! What the operator configures: external upstreams, aliases, fallbacks, cascades and the
//! policies that pick, retry and eject replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// One replica of a model served by an external OpenAI-compatible HTTP server (vLLM,
/// llama.cpp's server, TGI, Ollama, OpenAI itself). Several entries with the same `model` are
/// replicas of it, balanced by least outstanding requests and weight.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The model name clients send.
    pub model: String,
    /// The server's OpenAI base URL, up to and including `/v1`
    /// (`http://127.0.0.1:8000/v1`); `/chat/completions` and `/completions` are appended.
    pub url: String,
    /// Sent upstream as `Authorization: Bearer <key>`. Default none.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The model name the upstream knows, when it differs from `model`. Default `model`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// This replica's share of the traffic relative to its siblings, at least 1. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl UpstreamConfig {
    /// A replica of `model` at `url`, with no key, weight 1.
    pub fn new(model: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            url: url.into(),
            api_key: None,
            upstream_model: None,
            weight: 1,
        }
    }
}

// By hand: the key must never reach a log line.
impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("model", &self.model)
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("upstream_model", &self.upstream_model)
            .field("weight", &self.weight)
            .finish()
    }
}

/// A virtual model answered by a small model first and, when that answer is not confident,
/// by a larger one. Both are any routable model names: an upstream model, an alias, or a model
/// of the llm service; not another cascade.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeConfig {
    /// The model asked first, non-streamed and with token log-probabilities.
    pub small: String,
    /// The model that answers when the small one's answer is not kept.
    pub large: String,
    /// The small answer is kept only when its mean token log-probability (over every
    /// generated token of every choice) is at least this. Default -1.0 (a geometric-mean
    /// token probability of about 0.37).
    #[serde(default = "default_min_mean_logprob")]
    pub min_mean_logprob: f64,
    /// Whether a refusal escalates: finish reason `content_filter`, a `refusal` field, or an
    /// answer opening with one of [`CascadeConfig::refusal_phrases`]. Default true.
    #[serde(default = "default_true")]
    pub escalate_on_refusal: bool,
    /// Phrases that mark a refusal when the answer's first 200 characters contain one
    /// (case-insensitive, typographic apostrophes read as `'`). Default a short English list,
    /// [`DEFAULT_REFUSAL_PHRASES`].
    #[serde(default = "default_refusal_phrases")]
    pub refusal_phrases: Vec<String>,
}

/// The refusal phrases a cascade looks for unless the operator lists its own.
pub const DEFAULT_REFUSAL_PHRASES: &[&str] = &[
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm unable to help",
    "i am unable to help",
    "i won't be able to help",
];

fn default_min_mean_logprob() -> f64 {
    -1.0
}

fn default_true() -> bool {
    true
}

fn default_refusal_phrases() -> Vec<String> {
    DEFAULT_REFUSAL_PHRASES
        .iter()
        .map(|p| (*p).to_owned())
        .collect()
}

impl CascadeConfig {
    /// `small` then `large`, with the default threshold and refusal handling.
    pub fn new(small: impl Into<String>, large: impl Into<String>) -> Self {
        Self {
            small: small.into(),
            large: large.into(),
            min_mean_logprob: default_min_mean_logprob(),
            escalate_on_refusal: true,
            refusal_phrases: default_refusal_phrases(),
        }
    }
}

/// The routing table and its policies. Every field has a documented default (see
/// [`Default`]): no upstreams, no aliases, no fallbacks, so every model goes to the llm service.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// External replicas, by model. Default none.
    pub upstreams: Vec<UpstreamConfig>,
    /// Model names that stand for another (`gpt-4o-mini` -> `qwen2.5-0.5b-instruct`), resolved
    /// before anything else, key restrictions included. Default none.
    pub aliases: BTreeMap<String, String>,
    /// Models to try, in order, when a model fails before its answer began (every replica down
    /// or failing) or its upstream refuses the prompt as too long for its context. Default none.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Virtual models answered small-to-large, by name. A cascade's name may be the target of
    /// an alias but not an upstream model, an alias, a fallback or a member of a cascade.
    /// Default none.
    pub cascades: BTreeMap<String, CascadeConfig>,
    /// Further attempts on another replica (or the same, when it is the only one) after a
    /// connect error or a 5xx that came before the first byte of the answer. Never once
    /// streaming has begun. Default 2.
    pub retries: u32,
    /// Longest one upstream request may take, retries and streaming included; then 504.
    /// Default none: the gateway's `request_timeout`.
    pub timeout: Option<Duration>,
    /// Consecutive failures (connect errors, 5xx, broken streams) after which a replica is
    /// taken out of rotation. Default 3.
    pub eject_after: u32,
    /// How long an ejected replica stays out; after it, the replica gets traffic again, and
    /// one more failure ejects it again at once. Default 30 s.
    pub eject_for: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            aliases: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            cascades: BTreeMap::new(),
            retries: 2,
            timeout: None,
            eject_after: 3,
            eject_for: Duration::from_secs(30),
        }
    }
}
