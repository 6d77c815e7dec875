//! The semantic cache, gateway side: which requests it may answer, the key an answer is stored
//! under, and the stored answer. The index itself lives in the embeddings service.
//!
//! A key is a namespace and a prompt. The namespace holds the tenant (the API key's id, unless
//! the operator shares answers across keys) and a digest of the model and every generation
//! parameter, so an answer is only ever found by a request that could have produced it. The
//! prompt is the whole conversation, not only its last message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use passerelle_proto::embeddings::{CacheLookupRequest, CacheStoreRequest};
use passerelle_proto::llm::{GenerateRequest, prompt};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::auth::Principal;
use crate::embeddings::EmbeddingsBackend;
use crate::llm::{FinishReason, Usage};
use crate::metrics::GatewayMetrics;

/// How the semantic cache behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticCacheConfig {
    /// Cosine similarity a cached prompt needs to answer a new one. Default 0.95.
    pub min_similarity: f32,
    /// How long an answer stays in the cache. Default 1 hour.
    pub ttl: Duration,
    /// Let every API key receive answers cached for another. Default false: tenants are isolated.
    pub shared_across_keys: bool,
}

impl Default for SemanticCacheConfig {
    fn default() -> Self {
        Self {
            min_similarity: 0.95,
            ttl: Duration::from_secs(3600),
            shared_across_keys: false,
        }
    }
}

/// Where one request's answer is looked up and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheKey {
    namespace: String,
    model: String,
    prompt: String,
}

impl CacheKey {
    /// The same key in a narrower namespace: only requests with the same `scope` share it.
    pub(crate) fn scoped(mut self, scope: &str) -> Self {
        self.namespace = format!("{}/{scope}", self.namespace);
        self
    }
}

/// An answer as the cache keeps it: enough to replay it as JSON or as a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredAnswer {
    pub(crate) model: String,
    pub(crate) choices: Vec<StoredChoice>,
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredChoice {
    pub(crate) text: String,
    pub(crate) finish_reason: FinishReason,
}

impl StoredAnswer {
    /// The answer whose choice `i` is `texts[i]`, finished for `reasons[i]`; `None` while a
    /// choice has not finished (an answer cut short is not kept).
    pub(crate) fn finished(
        model: String,
        texts: Vec<String>,
        reasons: Vec<Option<FinishReason>>,
        usage: &Usage,
    ) -> Option<Self> {
        let choices = texts
            .into_iter()
            .zip(reasons)
            .map(|(text, reason)| {
                reason.map(|finish_reason| StoredChoice {
                    text,
                    finish_reason,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            model,
            choices,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        })
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens.saturating_add(self.completion_tokens),
        }
    }
}

/// A cached answer found for a request.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) similarity: f32,
    pub(crate) answer: StoredAnswer,
}

/// The gateway's handle on the cache. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SemanticCache {
    backend: EmbeddingsBackend,
    config: Arc<SemanticCacheConfig>,
    metrics: GatewayMetrics,
}

impl SemanticCache {
    pub(crate) fn new(
        backend: EmbeddingsBackend,
        config: SemanticCacheConfig,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            backend,
            config: Arc::new(config),
            metrics,
        }
    }

    /// The key of a request, or `None` when its answer must not come from a cache: token-id
    /// prompts, requests for log probabilities and chats offering tools (a replay has neither
    /// logprobs nor tool calls to give).
    pub(crate) fn key(&self, principal: &Principal, request: &GenerateRequest) -> Option<CacheKey> {
        key_for(&self.config, principal.tenant(), request)
    }

    /// The key of a request read elsewhere (one relayed to an upstream, whose body is JSON):
    /// `parameters` is a digest of everything besides the prompt that shapes the answer.
    pub(crate) fn key_of(
        &self,
        principal: &Principal,
        model: &str,
        parameters: &str,
        prompt: String,
    ) -> CacheKey {
        CacheKey {
            namespace: format!(
                "{}/{parameters}",
                namespace_tenant(&self.config, principal.tenant())
            ),
            model: model.to_owned(),
            prompt,
        }
    }

    /// A cached answer close enough to `key`'s prompt. A cache that fails is a miss: it must
    /// never fail the request it was meant to speed up.
    pub(crate) async fn lookup(&self, key: &CacheKey) -> Option<Hit> {
        let request = CacheLookupRequest {
            namespace: key.namespace.clone(),
            model: key.model.clone(),
            prompt: key.prompt.clone(),
            min_similarity: self.config.min_similarity,
        };
        let found = match self.backend.cache_lookup(request).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "semantic cache lookup failed; generating");
                self.metrics.cache_result("error");
                return None;
            }
        };
        if !found.hit {
            self.metrics.cache_result("miss");
            return None;
        }
        match serde_json::from_str::<StoredAnswer>(&found.response_json) {
            Ok(answer) => {
                self.metrics.cache_result("hit");
                Some(Hit {
                    similarity: found.similarity,
                    answer,
                })
            }
            Err(err) => {
                tracing::warn!(error = %err, entry = %found.entry_id, "unreadable cache entry; generating");
                self.metrics.cache_result("error");
                None
            }
        }
    }

    /// Stores an answer in the background; the response does not wait for it.
    pub(crate) fn store(&self, key: CacheKey, answer: &StoredAnswer) {
        let response_json = match serde_json::to_string(answer) {
            Ok(json) => json,
            Err(err) => {
                tracing::warn!(error = %err, "cannot serialise an answer for the cache");
                return;
            }
        };
        let request = CacheStoreRequest {
            namespace: key.namespace,
            model: key.model,
            prompt: key.prompt,
            response_json,
            ttl_seconds: u32::try_from(self.config.ttl.as_secs()).unwrap_or(u32::MAX),
        };
        let backend = self.backend.clone();
        tokio::spawn(async move {
            if let Err(err) = backend.cache_store(request).await {
                tracing::warn!(error = %err, "storing an answer in the semantic cache failed");
            }
        });
    }
}

fn key_for(
    config: &SemanticCacheConfig,
    tenant: &str,
    request: &GenerateRequest,
) -> Option<CacheKey> {
    if request.logprobs.as_ref().is_some_and(|l| l.enabled) {
        return None;
    }
    let kind = request.prompt.as_ref()?.kind.as_ref()?;
    if matches!(kind, prompt::Kind::Chat(chat) if !chat.tools.is_empty()) {
        return None;
    }
    let prompt = prompt_text(kind)?;
    Some(CacheKey {
        namespace: format!(
            "{}/{}",
            namespace_tenant(config, tenant),
            parameters_digest(request)
        ),
        model: request.model.clone(),
        prompt,
    })
}

/// Whose answers a key's namespace holds: the tenant's, or everyone's when shared.
fn namespace_tenant<'a>(config: &SemanticCacheConfig, tenant: &'a str) -> &'a str {
    if config.shared_across_keys {
        "shared"
    } else {
        tenant
    }
}

/// The text whose meaning is the key: the whole conversation, role by role.
fn prompt_text(prompt: &prompt::Kind) -> Option<String> {
    match prompt {
        prompt::Kind::Text(text) => Some(text.clone()),
        prompt::Kind::Chat(chat) => {
            let mut text = String::new();
            for message in &chat.messages {
                text.push_str(&message.role);
                text.push_str(": ");
                text.push_str(&message.content);
                for call in &message.tool_calls {
                    text.push_str(&format!(" [call {} {}]", call.name, call.arguments_json));
                }
                text.push('\n');
            }
            Some(text)
        }
        prompt::Kind::Tokens(_) => None,
    }
}

/// A digest of everything but the prompt's messages that shapes the answer: the model, the
/// prompt kind, tools, and every sampling, stopping and format parameter. `Debug` output of the
/// messages is deterministic once the one map (`logit_bias`) is put in order.
fn parameters_digest(request: &GenerateRequest) -> String {
    let mut canonical = request.clone();
    canonical.request_id.clear();
    let logit_bias: BTreeMap<u32, String> = canonical
        .sampling
        .as_mut()
        .map(|sampling| std::mem::take(&mut sampling.logit_bias))
        .unwrap_or_default()
        .into_iter()
        .map(|(token, bias)| (token, bias.to_string()))
        .collect();
    let shape = match canonical.prompt.take().and_then(|prompt| prompt.kind) {
        Some(prompt::Kind::Chat(chat)) => {
            format!(
                "chat tools={:?} open={}",
                chat.tools, chat.add_generation_prompt
            )
        }
        Some(prompt::Kind::Text(_)) => "text".to_owned(),
        Some(prompt::Kind::Tokens(_)) | None => "tokens".to_owned(),
    };
    let text = format!("{shape}|{canonical:?}|{logit_bias:?}");
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use passerelle_proto::common::ChatMessage;
    use passerelle_proto::llm::{ChatPrompt, LogprobsOptions, Prompt, SamplingParams};

    use super::*;

    fn chat(messages: &[(&str, &str)], temperature: Option<f32>) -> GenerateRequest {
        GenerateRequest {
            model: "m".into(),
            prompt: Some(Prompt {
                kind: Some(prompt::Kind::Chat(ChatPrompt {
                    messages: messages
                        .iter()
                        .map(|(role, content)| ChatMessage {
                            role: (*role).into(),
                            content: (*content).into(),
                            ..Default::default()
                        })
                        .collect(),
                    tools: vec![],
                    add_generation_prompt: true,
                    ..Default::default()
                })),
            }),
            sampling: Some(SamplingParams {
                temperature,
                ..Default::default()
            }),
            request_id: "r1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_digest_ignores_the_conversation_and_the_request_id_but_not_the_parameters() {
        let a = chat(&[("user", "hi")], Some(0.0));
        let mut b = chat(&[("user", "something else entirely")], Some(0.0));
        b.request_id = "r2".into();
        assert_eq!(parameters_digest(&a), parameters_digest(&b));
        assert_ne!(
            parameters_digest(&a),
            parameters_digest(&chat(&[("user", "hi")], Some(0.7)))
        );
        let mut other_model = a.clone();
        other_model.model = "n".into();
        assert_ne!(parameters_digest(&a), parameters_digest(&other_model));
    }

    #[test]
    fn logit_bias_order_does_not_change_the_digest() {
        let mut a = chat(&[("user", "hi")], None);
        let mut b = a.clone();
        for (token, bias) in [(1, 1.0), (2, -5.0), (300, 100.0)] {
            a.sampling.as_mut().unwrap().logit_bias.insert(token, bias);
        }
        for (token, bias) in [(300, 100.0), (1, 1.0), (2, -5.0)] {
            b.sampling.as_mut().unwrap().logit_bias.insert(token, bias);
        }
        assert_eq!(parameters_digest(&a), parameters_digest(&b));
        b.sampling.as_mut().unwrap().logit_bias.insert(2, -4.0);
        assert_ne!(parameters_digest(&a), parameters_digest(&b));
    }

    #[test]
    fn the_prompt_is_the_whole_conversation() {
        let request = chat(
            &[
                ("system", "Be brief."),
                ("user", "Hello"),
                ("assistant", "Hi!"),
                ("user", "Weather?"),
            ],
            None,
        );
        let text = prompt_text(request.prompt.as_ref().unwrap().kind.as_ref().unwrap()).unwrap();
        assert_eq!(
            text,
            "system: Be brief.\nuser: Hello\nassistant: Hi!\nuser: Weather?\n"
        );
    }

    #[test]
    fn tenants_are_isolated_unless_shared() {
        let request = chat(&[("user", "hi")], None);
        let isolated = SemanticCacheConfig::default();
        let a = key_for(&isolated, "key:a", &request).unwrap();
        let b = key_for(&isolated, "key:b", &request).unwrap();
        assert_ne!(a.namespace, b.namespace);
        assert_eq!(a.prompt, b.prompt);
        let shared = SemanticCacheConfig {
            shared_across_keys: true,
            ..SemanticCacheConfig::default()
        };
        assert_eq!(
            key_for(&shared, "key:a", &request).unwrap().namespace,
            key_for(&shared, "key:b", &request).unwrap().namespace
        );
    }

    #[test]
    fn log_probabilities_and_token_prompts_are_not_cacheable() {
        let config = SemanticCacheConfig::default();
        let mut request = chat(&[("user", "hi")], None);
        assert!(key_for(&config, "anonymous", &request).is_some());
        request.logprobs = Some(LogprobsOptions {
            enabled: true,
            top_logprobs: 0,
        });
        assert!(key_for(&config, "anonymous", &request).is_none());
        let tokens = GenerateRequest {
            prompt: Some(Prompt {
                kind: Some(prompt::Kind::Tokens(passerelle_proto::llm::TokenIds {
                    ids: vec![1, 2],
                })),
            }),
            ..Default::default()
        };
        assert!(key_for(&config, "anonymous", &tokens).is_none());
    }
}
