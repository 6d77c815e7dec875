//! What one request consumed, accounted once its answer ends: completed, failed, or abandoned
//! by a client that hung up mid-stream (then with the tokens generated so far). The usage record
//! (tokens, latency, cache hit, cost) goes to the store through the ledger, the tokens to the
//! principal's tokens-per-minute limit, and, when the operator turned prompt logging on, the
//! exchange with personal data redacted.

use std::time::Instant;

use passerelle_proto::llm::GenerateRequest;
use passerelle_proto::llm::prompt::Kind;
use passerelle_store::{PromptRecord, UsageRecord, unix_now};

use crate::auth::Principal;
use crate::llm::Usage;
use crate::state::AppState;

/// The API a request came through, as usage reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// How an answer was produced, which decides what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// A model ran: the tokens cost money and count toward the tokens-per-minute limit.
    Model,
    /// The semantic cache answered: the tokens are reported, but nothing ran, so it is free
    /// and does not count toward the limit.
    Cache,
}

/// The accounting of one request, taken when the response id is known.
pub(crate) struct Meter {
    state: AppState,
    principal: Principal,
    endpoint: Endpoint,
    response_id: String,
    started_at: Instant,
    /// The prompt as text, kept only when prompt logging is on.
    prompt: Option<String>,
}

impl Meter {
    pub(crate) fn new(
        state: &AppState,
        principal: &Principal,
        endpoint: Endpoint,
        response_id: &str,
        started_at: Instant,
    ) -> Self {
        Self {
            state: state.clone(),
            principal: principal.clone(),
            endpoint,
            response_id: response_id.to_owned(),
            started_at,
            prompt: None,
        }
    }

    /// Keeps the prompt for the prompt log, when the operator turned it on.
    pub(crate) fn with_prompt(mut self, request: &GenerateRequest) -> Self {
        if self.state.config().log_prompts {
            self.prompt = Some(prompt_text(request));
        }
        self
    }

    /// Keeps the prompt for the prompt log, built by `text` only when the operator turned it on.
    pub(crate) fn with_prompt_text(mut self, text: impl FnOnce() -> String) -> Self {
        if self.state.config().log_prompts {
            self.prompt = Some(text());
        }
        self
    }

    /// Records the answer under `id`: the id the client saw, when another server chose it.
    pub(crate) fn set_response_id(&mut self, id: String) {
        self.response_id = id;
    }

    /// Whether [`Meter::record`] wants the completion text.
    pub(crate) fn wants_completion(&self) -> bool {
        self.prompt.is_some()
    }

    /// Accounts the request. `completion` is the generated text, for the prompt log.
    pub(crate) fn record(mut self, model: &str, usage: Usage, served: Served, completion: &str) {
        let tokens = u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens);
        let cost_micro_usd = match served {
            Served::Model => self.state.config().prices.cost_micro_usd(
                model,
                usage.prompt_tokens,
                usage.completion_tokens,
            ),
            Served::Cache => 0,
        };
        let at = unix_now();
        // The prompt log, when on, takes the id too.
        let response_id = if self.prompt.is_some() {
            self.response_id.clone()
        } else {
            std::mem::take(&mut self.response_id)
        };
        self.state.ledger().usage(UsageRecord {
            response_id,
            principal: self.principal.id().to_owned(),
            key_id: self.principal.key_id().map(str::to_owned),
            model: model.to_owned(),
            endpoint: self.endpoint.as_str().to_owned(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_ms: u32::try_from(self.started_at.elapsed().as_millis()).unwrap_or(u32::MAX),
            cache_hit: served == Served::Cache,
            cost_micro_usd,
            at,
        });
        if let Some(prompt) = self.prompt {
            self.state.ledger().prompt(PromptRecord {
                response_id: self.response_id,
                principal: self.principal.id().to_owned(),
                at,
                prompt: passerelle_pii::redact(&prompt).text,
                completion: passerelle_pii::redact(completion).text,
            });
        }
        if served == Served::Model && self.principal.limits().tpm.is_some() {
            // Accounting runs when an answer is dropped, which may be outside any task that
            // could wait on the limiter.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let limiter = self.state.limiter().clone();
                let principal = self.principal;
                runtime.spawn(async move {
                    limiter
                        .record_tokens(principal.tenant(), principal.limits(), tokens)
                        .await;
                });
            }
        }
    }
}

/// The prompt as the prompt log shows it: the raw text, or one `role: content` line per
/// message.
fn prompt_text(request: &GenerateRequest) -> String {
    match request.prompt.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Text(text)) => text.clone(),
        Some(Kind::Chat(chat)) => chat
            .messages
            .iter()
            .map(|m| format!("{}: {}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Kind::Tokens(tokens)) => format!("<{} token ids>", tokens.ids.len()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::common::ChatMessage;
    use passerelle_proto::llm::{ChatPrompt, Prompt, TokenIds};

    use super::*;

    fn request(kind: Kind) -> GenerateRequest {
        GenerateRequest {
            prompt: Some(Prompt { kind: Some(kind) }),
            ..GenerateRequest::default()
        }
    }

    #[test]
    fn prompts_are_shown_as_text() {
        let chat = request(Kind::Chat(ChatPrompt {
            messages: vec![
                ChatMessage {
                    role: "system".into(),
                    content: "Be brief.".into(),
                    ..ChatMessage::default()
                },
                ChatMessage {
                    role: "user".into(),
                    content: "Hi".into(),
                    ..ChatMessage::default()
                },
            ],
            ..ChatPrompt::default()
        }));
        assert_eq!(prompt_text(&chat), "system: Be brief.\nuser: Hi");
        assert_eq!(prompt_text(&request(Kind::Text("Once".into()))), "Once");
        let tokens = request(Kind::Tokens(TokenIds { ids: vec![1, 2, 3] }));
        assert_eq!(prompt_text(&tokens), "<3 token ids>");
    }
}
