//! The gateway's side of the safety service: the prompt of every chat and completion is checked
//! while its generation starts, and nothing of the answer is released before the verdict. An
//! unsafe prompt cancels the generation and gets 400 `content_filter`; the answer is checked as
//! it is produced (`output_screen`). A refusal is audited (layer, category, rule; never the
//! text) and counted against the caller's adaptive rate limit.

use std::future::Future;
use std::time::Duration;

use futures::future::Either;

use passerelle_proto::common::ChatMessage;
use passerelle_proto::llm::GenerateRequest;
use passerelle_proto::llm::prompt::Kind;
use passerelle_proto::safety::safety_client::SafetyClient;
use passerelle_proto::safety::safety_server;
use passerelle_proto::safety::{CheckRequest, CheckResponse, Layer, Stage, Verdict};
use passerelle_store::{AuditAction, NewAuditEvent};

use crate::GatewayConfig;
use crate::answer::Answer;
use crate::auth::{ClientAddr, Principal};
use crate::backend::{self, BackendError, TracedChannel};
use crate::error::ApiError;
use crate::output_screen::OutputScreen;
use crate::ratelimit::FailurePolicy;
use crate::state::AppState;

/// Where the safety service listens and what it checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyConfig {
    /// The safety service, as an `http://host:port` URI.
    pub endpoint: String,
    /// Check prompts before their answers are released. Default true.
    pub check_input: bool,
    /// Check answers, streamed ones in windows as they are generated. Default true.
    pub check_output: bool,
    /// Answer an unsafe prompt with this message as the assistant's reply (finish reason
    /// `content_filter`) instead of a 400 error. Default none.
    pub refusal_message: Option<String>,
    /// Longest a check may take; past it the check has failed. Default 5 s.
    pub timeout: Duration,
    /// Run the input check alongside the start of generation (the default), so a check costs
    /// less than its own time. Off, the check runs first and generation starts once the prompt
    /// is known to be safe: a slower first token, but a refused prompt never costs a prefill.
    pub overlap: bool,
    /// What a prompt whose input check failed (service down, timeout, model error) gets:
    /// `Closed` (the default) refuses it with 503, `Open` lets it through unchecked, logged and
    /// counted in `passerelle_safety_unchecked_total`. A failed output check always lets the
    /// answer stand, its prompt having been checked.
    pub failure_policy: FailurePolicy,
}

impl SafetyConfig {
    /// Input checks against the service at `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            check_input: true,
            check_output: true,
            refusal_message: None,
            timeout: Duration::from_secs(5),
            overlap: true,
            failure_policy: FailurePolicy::Closed,
        }
    }
}

/// A cheap handle on the safety service.
#[derive(Clone)]
pub(crate) struct SafetyBackend {
    client: SafetyClient<TracedChannel>,
    channel: TracedChannel,
    config: SafetyConfig,
    control_timeout: Duration,
}

impl SafetyBackend {
    pub(crate) fn config(&self) -> &SafetyConfig {
        &self.config
    }

    pub(crate) fn connect_lazy(
        config: &SafetyConfig,
        gateway: &GatewayConfig,
    ) -> Result<Self, backend::BackendSetupError> {
        let channel = backend::connect_lazy(&config.endpoint, gateway)?;
        Ok(Self {
            client: SafetyClient::new(channel.clone()),
            channel,
            config: config.clone(),
            control_timeout: gateway.control_timeout,
        })
    }

    /// Whether the service reports SERVING over `grpc.health.v1`.
    pub(crate) async fn readiness(&self) -> backend::Readiness {
        backend::readiness(
            &self.channel,
            safety_server::SERVICE_NAME,
            self.control_timeout,
        )
        .await
    }

    /// What a prompt gets when its check fails.
    pub(crate) fn failure_policy(&self) -> FailurePolicy {
        self.config.failure_policy
    }

    /// Checks one text as a user's message, for `/v1/moderations`.
    pub(crate) async fn moderate(
        &self,
        text: String,
        request_id: &str,
    ) -> Result<CheckResponse, BackendError> {
        self.check(CheckRequest {
            messages: vec![ChatMessage {
                role: "user".to_owned(),
                content: text,
                ..ChatMessage::default()
            }],
            stage: Stage::Input.into(),
            request_id: request_id.to_owned(),
            ..CheckRequest::default()
        })
        .await
    }

    pub(crate) async fn check(&self, request: CheckRequest) -> Result<CheckResponse, BackendError> {
        let timeout = self.config.timeout;
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        let response = tokio::time::timeout(timeout, self.client.clone().check(request))
            .await
            .map_err(|_| BackendError::DeadlineExceeded)??;
        Ok(response.into_inner())
    }
}

/// Why a prompt was refused, as the client and the audit log see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `rules`, `injection`, `pii` or `llama_guard`.
    pub layer: &'static str,
    /// The violated category, e.g. `prompt_injection` or `S1`.
    pub category: String,
    /// The rule that matched, for the rule layer.
    pub rule_id: Option<String>,
}

impl Refusal {
    pub(crate) fn from_verdict(response: &CheckResponse) -> Self {
        let layer = match response.decided_by() {
            Layer::Rules => "rules",
            Layer::Injection => "injection",
            Layer::Pii => "pii",
            Layer::LlamaGuard => "llama_guard",
            Layer::Unspecified => "unspecified",
        };
        Self {
            layer,
            category: response
                .categories
                .first()
                .map_or_else(|| "unspecified".to_owned(), |c| c.code.clone()),
            rule_id: (!response.rule_id.is_empty()).then(|| response.rule_id.clone()),
        }
    }

    fn detail(&self) -> String {
        match &self.rule_id {
            Some(rule) => format!(
                "safety layer={} category={} rule={rule}",
                self.layer, self.category
            ),
            None => format!("safety layer={} category={}", self.layer, self.category),
        }
    }
}

/// Who to hold to account for a refusal: the audit log's actor, address and route, and the
/// principal whose adaptive limit a refusal lowers.
#[derive(Clone)]
pub(crate) struct Reporter {
    state: AppState,
    principal: Principal,
    client: ClientAddr,
    route: &'static str,
}

impl Reporter {
    pub(crate) fn new(
        state: &AppState,
        principal: &Principal,
        client: &ClientAddr,
        route: &'static str,
    ) -> Self {
        Self {
            state: state.clone(),
            principal: principal.clone(),
            client: client.clone(),
            route,
        }
    }

    /// Counts and audits (layer, category and rule; never the text) a refusal at once, and
    /// returns the noting of the violation for the adaptive rate limit, to await or spawn.
    /// `stage`: `input` or `output`.
    pub(crate) fn refused(
        &self,
        stage: &'static str,
        refusal: &Refusal,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.state
            .metrics()
            .safety_blocked(stage, refusal.layer, &refusal.category);
        self.state.audit(
            NewAuditEvent::now(self.principal.id(), AuditAction::RequestBlocked)
                .target(self.route)
                .detail(format!("{} stage={stage}", refusal.detail()))
                .client_addr_if_known(self.client.text().as_deref()),
        );
        let limiter = self.state.limiter().clone();
        let tenant = self.principal.tenant().to_owned();
        async move { limiter.note_violation(&tenant).await }
    }
}

/// The safety checks of one request: its prompt, read once, and what to check.
pub(crate) struct Screening {
    backend: SafetyBackend,
    messages: Vec<ChatMessage>,
    request_id: String,
    model: String,
    /// Choices the request asks for (`n`), for a refusal answered without a generation.
    choices: u32,
    check_input: bool,
    check_output: bool,
}

impl Screening {
    /// The checks `request` needs: the caller's key decides which stages, else the gateway's
    /// setting; `None` without a safety service or with nothing to check. A prompt of token ids
    /// cannot be read, so it is refused rather than let through unchecked.
    pub(crate) fn of(
        state: &AppState,
        principal: &Principal,
        request: &GenerateRequest,
    ) -> Result<Option<Self>, ApiError> {
        let Some(backend) = state.safety() else {
            return Ok(None);
        };
        let (check_input, check_output) = match principal.safety_checks() {
            Some(checks) => (checks.input(), checks.output()),
            None => (backend.config.check_input, backend.config.check_output),
        };
        if !check_input && !check_output {
            return Ok(None);
        }
        let messages = match request.prompt.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(Kind::Chat(chat)) => chat.messages.clone(),
            Some(Kind::Text(text)) => vec![ChatMessage {
                role: "user".to_owned(),
                content: text.clone(),
                ..ChatMessage::default()
            }],
            Some(Kind::Tokens(_)) => {
                return Err(ApiError::invalid_param(
                    "prompt",
                    "Token-id prompts cannot be checked by this gateway's safety filter; send text.",
                ));
            }
            None => return Ok(None),
        };
        Ok(Some(Self {
            backend: backend.clone(),
            messages,
            request_id: request.request_id.clone(),
            model: request.model.clone(),
            choices: request.sampling.as_ref().map_or(1, |s| s.n.max(1)),
            check_input,
            check_output,
        }))
    }
}

impl Screening {
    /// The checks of a prompt already read into `messages` (a request relayed to an upstream);
    /// `None` without a safety service or with nothing to check. The caller's key decides which
    /// stages, else the gateway's setting, as for our own models.
    pub(crate) fn of_messages(
        state: &AppState,
        principal: &Principal,
        model: &str,
        request_id: &str,
        messages: impl FnOnce() -> Vec<ChatMessage>,
    ) -> Option<Self> {
        let backend = state.safety()?;
        let (check_input, check_output) = match principal.safety_checks() {
            Some(checks) => (checks.input(), checks.output()),
            None => (backend.config.check_input, backend.config.check_output),
        };
        (check_input || check_output).then(|| Self {
            backend: backend.clone(),
            messages: messages(),
            request_id: request_id.to_owned(),
            model: model.to_owned(),
            choices: 1,
            check_input,
            check_output,
        })
    }

    /// What the output checks of a relayed answer need, when its answers are checked; taken
    /// before [`input_checked`] consumes the screening.
    pub(crate) fn output_checks(&self, reporter: &Reporter) -> Option<OutputChecks> {
        self.check_output.then(|| OutputChecks {
            backend: self.backend.clone(),
            request_id: self.request_id.clone(),
            messages: self.messages.clone(),
            reporter: reporter.clone(),
        })
    }
}

/// The output checks of one relayed answer, before its number of choices is known.
pub(crate) struct OutputChecks {
    backend: SafetyBackend,
    request_id: String,
    messages: Vec<ChatMessage>,
    reporter: Reporter,
}

impl OutputChecks {
    /// The screen of an answer with `choices` choices.
    pub(crate) fn screen(self, choices: u32) -> OutputScreen {
        OutputScreen::new(
            self.backend,
            self.request_id,
            self.messages,
            choices,
            self.reporter,
        )
    }
}

/// The input verdict, or `None` when the check failed and the failure policy lets the prompt
/// through; a failure under the closed policy is the request's error.
fn verdict_or_policy(
    reporter: &Reporter,
    config: &SafetyConfig,
    verdict: Result<CheckResponse, BackendError>,
) -> Result<Option<CheckResponse>, ApiError> {
    match (verdict, config.failure_policy) {
        (Ok(verdict), _) => Ok(Some(verdict)),
        (Err(err), FailurePolicy::Closed) => Err(err.into()),
        (Err(err), FailurePolicy::Open) => {
            tracing::warn!(error = %err, "safety check failed; the prompt passes unchecked (fail open)");
            reporter.state.metrics().safety_unchecked("input");
            Ok(None)
        }
    }
}

/// The input check and, when the configuration overlaps them, `start` run alongside it; with
/// `--safety-sequential` only the check runs here (`None`), and the caller starts afterwards.
async fn check_with<F: Future>(
    backend: &SafetyBackend,
    request: CheckRequest,
    start: std::pin::Pin<&mut F>,
) -> (Result<CheckResponse, BackendError>, Option<F::Output>) {
    if backend.config.overlap {
        let (verdict, started) = tokio::join!(backend.check(request), start);
        (verdict, Some(started))
    } else {
        (backend.check(request).await, None)
    }
}

/// Runs the input check alongside `start` and returns its result only once the prompt is known
/// to be safe; an unsafe prompt drops what `start` produced and is refused with 400
/// `content_filter`. For answers the gateway relays rather than generates.
///
/// Without an input check this is `start` itself: the check's state, boxed apart, is then not
/// part of (and copied with) the future of every relayed request.
pub(crate) fn input_checked<T, F>(
    reporter: Reporter,
    screening: Option<Screening>,
    start: F,
) -> impl Future<Output = Result<T, ApiError>>
where
    F: Future<Output = Result<T, ApiError>>,
{
    match screening.filter(|s| s.check_input) {
        None => Either::Left(start),
        Some(screening) => Either::Right(Box::pin(checked_input(reporter, screening, start))),
    }
}

/// [`input_checked`] with an input check to run.
async fn checked_input<T>(
    reporter: Reporter,
    screening: Screening,
    start: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let request = CheckRequest {
        messages: screening.messages,
        stage: Stage::Input.into(),
        request_id: screening.request_id,
        ..CheckRequest::default()
    };
    let config = &screening.backend.config;
    let mut start = std::pin::pin!(start);
    let (verdict, started) = check_with(&screening.backend, request, start.as_mut()).await;
    let verdict = verdict_or_policy(&reporter, config, verdict)?;
    if let Some(verdict) = verdict.filter(|v| v.verdict() == Verdict::Unsafe) {
        drop(started);
        let refusal = Refusal::from_verdict(&verdict);
        reporter.refused("input", &refusal).await;
        return Err(ApiError::ContentFiltered(refusal));
    }
    match started {
        Some(started) => started,
        None => start.await,
    }
}

/// Runs the input check alongside `start` (the generation starting) and returns the answer
/// only once the prompt is known to be safe, with the output screen attached. When the prompt
/// is unsafe the answer is dropped, which cancels the generation.
pub(crate) async fn screened(
    reporter: Reporter,
    screening: Option<Screening>,
    start: impl Future<Output = Result<Answer, BackendError>>,
) -> Result<Answer, ApiError> {
    let Some(screening) = screening else {
        return Ok(start.await?);
    };
    let config = &screening.backend.config;
    let answer = if screening.check_input {
        let request = CheckRequest {
            messages: screening.messages.clone(),
            stage: Stage::Input.into(),
            request_id: screening.request_id.clone(),
            ..CheckRequest::default()
        };
        let mut start = std::pin::pin!(start);
        let (verdict, started) = check_with(&screening.backend, request, start.as_mut()).await;
        let verdict = verdict_or_policy(&reporter, config, verdict)?;
        if let Some(verdict) = verdict.filter(|v| v.verdict() == Verdict::Unsafe) {
            let (model, choices) = match &started {
                Some(Ok(answer)) => (answer.model().to_owned(), answer.choices()),
                _ => (screening.model.clone(), screening.choices),
            };
            drop(started);
            let refusal = Refusal::from_verdict(&verdict);
            reporter.refused("input", &refusal).await;
            return match &config.refusal_message {
                Some(message) => Ok(Answer::refusal(&reporter.state, &model, choices, message)),
                None => Err(ApiError::ContentFiltered(refusal)),
            };
        }
        match started {
            Some(started) => started?,
            None => start.await?,
        }
    } else {
        start.await?
    };
    if !screening.check_output {
        return Ok(answer);
    }
    let choices = answer.choices();
    Ok(answer.screened(OutputScreen::new(
        screening.backend,
        screening.request_id,
        screening.messages,
        choices,
        reporter,
    )))
}
