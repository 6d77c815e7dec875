//! One chat or text completion request through the routing table: the model named resolved,
//! then tried with its fallbacks in order, each on the llm service or relayed to an upstream.

use std::cell::OnceCell;
use std::future::Future;
use std::time::Instant;

use axum::response::Response;
use passerelle_proto::common::ChatMessage;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use axum::http::HeaderValue;

use super::deadline::Deadline;
use super::forward::ForwardBody;
use super::inspect::{Inspector, MAX_CHOICES};
use super::relay::{self, Account};
use super::table::{Pool, RouteTable, Target};
use super::upstream::{Outgoing, SendError};
use crate::answer::{Answer, CACHE_HEADER};
use crate::auth::{ClientAddr, Principal};
use crate::error::ApiError;
use crate::extract::{RequestId, parse_json};
use crate::meter::{Endpoint, Meter};
use crate::openai::response_id;
use crate::safety::{self, Reporter, Screening};
use crate::state::AppState;

/// Which OpenAI API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Completions,
}

impl Api {
    pub(crate) fn route(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
        }
    }

    fn endpoint(self) -> Endpoint {
        match self {
            Api::Chat => Endpoint::Chat,
            Api::Completions => Endpoint::Completions,
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Api::Chat => "chatcmpl",
            Api::Completions => "cmpl",
        }
    }
}

/// A request body the llm service path takes, whose model the router may change.
pub(crate) trait Routable: DeserializeOwned {
    fn set_model(&mut self, model: String);
}

impl Routable for crate::openai::chat::ChatCompletionRequest {
    fn set_model(&mut self, model: String) {
        self.model = model;
    }
}

impl Routable for crate::openai::completions::CompletionRequest {
    fn set_model(&mut self, model: String) {
        self.model = model;
    }
}

/// One routed request.
#[derive(Clone)]
pub(crate) struct Routed<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) principal: &'a Principal,
    pub(crate) client: &'a ClientAddr,
    pub(crate) request_id: &'a RequestId,
    pub(crate) started_at: Instant,
    pub(crate) api: Api,
    pub(crate) body: &'a [u8],
    /// `body` read for relaying, once; `None` when it is not an object with a `model` (the
    /// relay path reads it again for the error).
    pub(crate) forward: Option<ForwardBody<'a>>,
    /// The body's `model`, from [`read_body`].
    pub(crate) requested: Option<String>,
}

/// Reads a client's body once: as it would be relayed, and the `model` it names; the model is
/// `None` when the body has no string `model` (or is not JSON), which the full parse then
/// reports.
pub(crate) fn read_body(body: &[u8]) -> (Option<ForwardBody<'_>>, Option<String>) {
    match ForwardBody::parse(body) {
        Ok(forward) => {
            let requested = forward.model();
            (Some(forward), requested)
        }
        // Not relayable; the model is still read the way a typed parse would find it (a
        // struct may be read from an array, by position).
        Err(_) => (None, requested_model(body)),
    }
}

/// The `model` a JSON body names, read without parsing the rest.
fn requested_model(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ModelPeek {
        model: String,
    }
    serde_json::from_slice::<ModelPeek>(body)
        .ok()
        .map(|peek| peek.model)
}

/// Answers the request: a cascade's way when the model it names (alias resolved) is one, else
/// with the first model of its chain that answers (see [`serve_chain`]). `local` serves the llm
/// service's models. Returns the response and its metric model label.
pub(crate) async fn respond<T, F, Fut>(
    routed: Routed<'_>,
    local: F,
) -> Result<(Response, String), ApiError>
where
    T: Routable,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(Response, String), ApiError>>,
{
    let table = routed.state.routes();
    // A body without a usable `model` is refused by the full parse, with its usual message.
    // The llm service's and the cascades' ways are boxed: inline, their states would make the
    // future of every request several kilobytes, copied when the request's future is built
    // and boxed (a measurable share of a relayed request's CPU time).
    let Some(requested) = routed.requested.clone() else {
        return Box::pin(local(parse_json::<T>(routed.body)?)).await;
    };
    if let Some(cascade) = table.cascade(table.resolve(&requested)) {
        // The key must be allowed the cascade; its members are the operator's choice.
        routed.principal.check_model(&cascade.name)?;
        return Box::pin(super::cascade::respond(&routed, &table, cascade, &local)).await;
    }
    serve_chain(&routed, &table, &requested, KeyCheck::Each, &local).await
}

/// Whether [`serve_chain`] checks the key's model restrictions on the models it tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// Every model of the chain: the first refused is a 403, a refused fallback is skipped.
    Each,
    /// None: the caller checked the name the client asked for (a cascade).
    Done,
}

/// Answers with the first model of `requested`'s chain that answers: the model it names (alias
/// resolved) and then its fallbacks, tried while the failure is one another model may not have
/// (unreachable, failing, context too short).
pub(crate) async fn serve_chain<T, F, Fut>(
    routed: &Routed<'_>,
    table: &RouteTable,
    requested: &str,
    check: KeyCheck,
    local: &F,
) -> Result<(Response, String), ApiError>
where
    T: Routable,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(Response, String), ApiError>>,
{
    let mut chain = table.chain(requested).peekable();
    let mut first = true;
    let mut last_error = None;
    while let Some(model) = chain.next() {
        let is_first = std::mem::take(&mut first);
        if check == KeyCheck::Each
            && let Err(forbidden) = routed.principal.check_model(model)
        {
            if is_first {
                return Err(forbidden);
            }
            continue;
        }
        let result = match table.target(model) {
            Target::Local => {
                let mut body = parse_json::<T>(routed.body)?;
                body.set_model(model.to_owned());
                // Boxed for the reason given in `respond`.
                Box::pin(local(body)).await
            }
            // Boxed too, though most requests come this way: its state is kilobytes, which
            // every future above it would hold and copy (the handler's, which axum boxes,
            // included).
            Target::Upstream(pool) => Box::pin(upstream(routed, table, &pool)).await,
        };
        match (result, chain.peek()) {
            (Err(err), Some(&fallback)) if calls_for_fallback(&err) => {
                tracing::warn!(
                    model = %model,
                    fallback = %fallback,
                    error = %err,
                    "falling back to another model"
                );
                routed.state.metrics().fallback(model, fallback);
                last_error = Some(err);
            }
            (other, _) => return other,
        }
    }
    Err(last_error.unwrap_or(ApiError::ModelForbidden {
        model: requested.to_owned(),
    }))
}

/// Failures another model may not share. Not timeouts: the request's time is spent.
pub(crate) fn calls_for_fallback(err: &ApiError) -> bool {
    use crate::backend::BackendError as B;
    match err {
        ApiError::UpstreamUnavailable { .. } | ApiError::UpstreamFailed { .. } => true,
        ApiError::UpstreamRejected(rejection) => rejection.is_context_length(),
        ApiError::Backend(B::Unavailable { .. } | B::Overloaded { .. } | B::Upstream { .. }) => {
            true
        }
        _ => false,
    }
}

/// Relays the request to `pool`'s replicas, its prompt checked by the safety service alongside.
/// With the semantic cache on, a close-enough answer is replayed instead and a relayed one
/// stored; with output checks on, the answer is screened as it passes (see `inspect`).
async fn upstream(
    routed: &Routed<'_>,
    table: &RouteTable,
    pool: &std::sync::Arc<Pool>,
) -> Result<(Response, String), ApiError> {
    let state = routed.state;
    let reread;
    let body = match &routed.forward {
        Some(body) => body,
        None => {
            // Fails again, with the client's error.
            reread = ForwardBody::parse(routed.body)?;
            &reread
        }
    };
    if body.has_retrieval() {
        return Err(ApiError::invalid_param(
            "retrieval",
            "`retrieval` is not available for models served by an upstream.",
        ));
    }
    let streaming = body.streaming();
    let client_wants_usage = streaming && body.wants_usage();
    let id = response_id(routed.api.id_prefix());
    let reporter = Reporter::new(state, routed.principal, routed.client, routed.api.route());
    // Read only when the prompt log or the safety check wants them; in a block, since the
    // cell is not `Sync` and the future must stay `Send`.
    let (meter, screening, prompts) = {
        let read = OnceCell::new();
        let messages = || read.get_or_init(|| prompt_messages(routed.api, body));
        let meter = Meter::new(
            state,
            routed.principal,
            routed.api.endpoint(),
            &id,
            routed.started_at,
        )
        .with_prompt_text(|| prompt_text(messages()));
        let screening = Screening::of_messages(
            state,
            routed.principal,
            &pool.model,
            routed.request_id.as_str(),
            || messages().clone(),
        );
        let prompts = read.get().map_or(1, Vec::len);
        (meter, screening, prompts)
    };
    // The screening, the output checks and the cache key are boxed: most requests have none,
    // and inline they would be part of (and copied with) the relay's future.
    let screening = screening.map(Box::new);
    let output = screening
        .as_ref()
        .and_then(|screening| screening.output_checks(&reporter))
        .map(Box::new);
    let cached = state.semantic_cache().and_then(|cache| {
        super::cache::key(
            cache,
            routed.principal,
            routed.api,
            &pool.model,
            routed.body,
        )
        .map(|key| Box::new((cache.clone(), key)))
    });
    let timeout = table.timeout.unwrap_or(state.config().request_timeout);
    let mut deadline = Deadline::at(tokio::time::Instant::now() + timeout);
    let outgoing = Outgoing {
        client: state.upstream_client(),
        pool,
        api: routed.api,
        body,
        ask_usage: streaming && !client_wants_usage,
        request_id: routed.request_id.header(),
        retries: table.retries,
    };
    let model = &pool.model;
    let relay = async {
        // The semantic cache's ways are boxed: inline, their states would be part of (and
        // copied with) the future of every relayed request, cached or not.
        if let Some((cache, key)) = cached.as_deref()
            && let Some(hit) = Box::pin(cache.lookup(key)).await
        {
            let mut answer = Answer::cached(state, hit).metered(meter);
            if let Some(output) = output {
                let choices = answer.choices();
                answer = answer.screened((*output).screen(choices));
            }
            let stream = streaming.then_some(client_wants_usage);
            return Box::pin(super::cache::replay(answer, routed.api, id, stream)).await;
        }
        let (response, lease) = outgoing
            .send(&mut deadline)
            .await
            .map_err(|err| match err {
                SendError::Unavailable { retry_after } => ApiError::UpstreamUnavailable {
                    model: model.clone(),
                    retry_after,
                },
                SendError::Failed { status } => ApiError::UpstreamFailed {
                    model: model.clone(),
                    status: status.as_u16(),
                },
                SendError::TimedOut => ApiError::UpstreamTimeout {
                    model: model.clone(),
                },
                SendError::Rejected(rejection) => ApiError::UpstreamRejected(rejection),
            })?;
        let account = Account::new(meter, state.metrics().clone(), model, routed.started_at);
        let missed = cached.is_some();
        let inspector = Inspector::new(
            routed.api,
            cached.map(|cached| {
                let (cache, key) = *cached;
                (cache, key, model.clone())
            }),
            output.map(|output| {
                let choices = choices_asked(routed.api, body.n(), prompts);
                ((*output).screen(choices), choices)
            }),
        );
        let mut response = if streaming {
            relay::stream(
                response,
                lease,
                account,
                deadline,
                client_wants_usage,
                inspector,
            )
        } else {
            relay::json(response, lease, account, deadline, inspector).await?
        };
        if missed {
            response
                .headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
        }
        Ok(response)
    };
    let response = match safety::input_checked(reporter, screening.map(|s| *s), relay).await {
        // The operator asked for unsafe prompts to be answered with a refusal, as the llm
        // service's models answer them.
        Err(ApiError::ContentFiltered(_)) if let Some(message) = refusal_message(state) => {
            let choices = choices_asked(routed.api, body.n(), prompts);
            let answer = Answer::refusal(state, &pool.model, choices, message);
            let stream = streaming.then_some(client_wants_usage);
            let id = response_id(routed.api.id_prefix());
            Box::pin(super::cache::replay(answer, routed.api, id, stream)).await?
        }
        answered => answered?,
    };
    Ok((response, pool.model.clone()))
}

/// The message unsafe prompts are answered with instead of a 400, when the operator set one.
fn refusal_message(state: &AppState) -> Option<&str> {
    state.safety()?.config().refusal_message.as_deref()
}

/// How many choices an answer has: `n` for each prompt (completions take several).
fn choices_asked(api: Api, n: Option<u32>, prompts: usize) -> u32 {
    let n = n.unwrap_or(1).max(1);
    let prompts = match api {
        Api::Chat => 1,
        Api::Completions => u32::try_from(prompts.max(1)).unwrap_or(u32::MAX),
    };
    n.saturating_mul(prompts).min(MAX_CHOICES)
}

pub(crate) fn wants_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The prompt as messages, for the safety check and the prompt log: chat messages with their
/// text parts, or each completion prompt as a user message.
fn prompt_messages(api: Api, body: &ForwardBody<'_>) -> Vec<ChatMessage> {
    let message = |role: &str, content: String| ChatMessage {
        role: role.to_owned(),
        content,
        ..ChatMessage::default()
    };
    match api {
        Api::Chat => body
            .messages()
            .as_ref()
            .and_then(Value::as_array)
            .map(|messages| {
                messages
                    .iter()
                    .map(|m| {
                        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                        message(role, content_text(m.get("content")))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Api::Completions => match body.prompt() {
            Some(Value::String(prompt)) => vec![message("user", prompt)],
            Some(Value::Array(prompts)) => prompts
                .iter()
                .filter_map(Value::as_str)
                .map(|p| message("user", p.to_owned()))
                .collect(),
            _ => Vec::new(),
        },
    }
}

/// A message's text: the string, or its text parts joined.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn prompt_text(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    #[test]
    fn chat_prompts_are_read_with_their_text_parts() {
        let raw = body(&json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]}
        ]}));
        let messages = prompt_messages(Api::Chat, &ForwardBody::parse(&raw).unwrap());
        assert_eq!(prompt_text(&messages), "system: Be brief.\nuser: Hi");
    }

    #[test]
    fn completion_prompts_are_user_messages() {
        let raw = body(&json!({"model": "m", "prompt": ["a", "b"]}));
        let parsed = ForwardBody::parse(&raw).unwrap();
        assert_eq!(prompt_messages(Api::Completions, &parsed).len(), 2);
        let raw = body(&json!({"model": "m", "prompt": "once"}));
        let parsed = ForwardBody::parse(&raw).unwrap();
        assert_eq!(
            prompt_messages(Api::Completions, &parsed)[0].content,
            "once"
        );
    }
}
