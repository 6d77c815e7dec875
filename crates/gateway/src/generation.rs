//! One generation as the HTTP handlers see it: started (the prompt accepted), then progress
//! events, timed and counted for metrics, then collected whole or streamed by `crate::sse`.

use std::time::Instant;

use passerelle_proto::llm::GenerateRequest;

use crate::llm::{
    BackendError, Delta, FinishReason, Finished, GenerationEvent, GenerationStream, TokenLogprob,
    ToolCallOut, Usage,
};
use crate::metrics::{GatewayMetrics, UNKNOWN_MODEL};
use crate::semantic_cache::{CacheKey, SemanticCache, StoredAnswer};
use crate::state::AppState;

/// What happens after the start.
#[derive(Debug)]
pub(crate) enum Progress {
    Delta(Delta),
    Finished(Finished),
}

/// A started generation. Dropping it cancels the generation in the service.
pub(crate) struct Generation {
    stream: GenerationStream,
    metrics: GatewayMetrics,
    model: String,
    /// `model` when the service named it, else a known requested id or "unknown": the metric
    /// label, kept to ids the service vouched for.
    model_label: String,
    prompt_tokens: u32,
    completion_tokens: u32,
    choices: u32,
    finished: Vec<bool>,
    usage: Option<Usage>,
    started_at: Instant,
    last_token_at: Option<Instant>,
    recorder: Option<Recorder>,
}

/// Gathers a live answer for the semantic cache; stores it once every choice has finished. An
/// answer cut short (an error, a client gone) is never stored.
struct Recorder {
    cache: SemanticCache,
    key: CacheKey,
    texts: Vec<String>,
    reasons: Vec<Option<FinishReason>>,
}

impl Generation {
    /// Sends the request and waits for the service to accept it, so refusals (unknown model,
    /// bad parameter, full queue) become proper HTTP errors before any response is sent.
    /// `started_at` is when the HTTP request arrived, for time to first token.
    pub(crate) async fn start(
        state: &AppState,
        request: GenerateRequest,
        started_at: Instant,
    ) -> Result<Self, BackendError> {
        let choices = request.sampling.as_ref().map_or(1, |s| s.n.max(1));
        let requested = request.model.clone();
        let mut stream = state.llm().generate(request).await?;
        let (prompt_tokens, model) = match stream.next().await {
            Some(Ok(GenerationEvent::Started {
                prompt_tokens,
                model,
            })) => (prompt_tokens, model),
            // Not the event itself in the message: it may hold generated text.
            Some(Ok(_)) => return Err(BackendError::protocol("the first event was not Started")),
            Some(Err(err)) => return Err(err),
            None => return Err(BackendError::protocol("the stream ended before it started")),
        };
        let (model, model_label) = if model.is_empty() {
            (requested.clone(), model_label(state, &requested))
        } else {
            (model.clone(), model)
        };
        let metrics = state.metrics().clone();
        metrics.prompt_tokens(&model_label, prompt_tokens);
        Ok(Self {
            stream,
            metrics,
            model,
            model_label,
            prompt_tokens,
            completion_tokens: 0,
            choices,
            finished: vec![false; choices as usize],
            usage: None,
            started_at,
            last_token_at: None,
            recorder: None,
        })
    }

    /// Stores the answer in `cache` under `key` once the generation completes.
    pub(crate) fn record(mut self, cache: SemanticCache, key: CacheKey) -> Self {
        let choices = self.choices as usize;
        self.recorder = Some(Recorder {
            cache,
            key,
            texts: vec![String::new(); choices],
            reasons: vec![None; choices],
        });
        self
    }

    /// The model serving this generation, as the service named it.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// The model's metric label.
    pub(crate) fn model_label(&self) -> &str {
        &self.model_label
    }

    /// How many choices this generation produces.
    pub(crate) fn choices(&self) -> u32 {
        self.choices
    }

    /// The next delta or finish; `None` when every choice has finished and the service closed
    /// the stream. A stream that ends early, or names a choice that does not exist, is an error.
    pub(crate) async fn next(&mut self) -> Option<Result<Progress, BackendError>> {
        let event = match self.stream.next().await {
            Some(Ok(event)) => event,
            Some(Err(err)) => return Some(Err(err)),
            None if self.finished.iter().all(|f| *f) => {
                self.store_recording();
                return None;
            }
            None => {
                return Some(Err(BackendError::protocol(
                    "the stream ended before every choice finished",
                )));
            }
        };
        Some(match event {
            GenerationEvent::Started { .. } => {
                Err(BackendError::protocol("a second Started event"))
            }
            GenerationEvent::Delta(delta) => self.check_index(delta.index).map(|()| {
                self.observe_tokens(delta.tokens);
                if let Some(recorder) = &mut self.recorder {
                    recorder.texts[delta.index as usize].push_str(&delta.text);
                }
                Progress::Delta(delta)
            }),
            GenerationEvent::Finished(finished) => self.check_index(finished.index).map(|()| {
                self.finished[finished.index as usize] = true;
                if let Some(recorder) = &mut self.recorder {
                    recorder.reasons[finished.index as usize] = Some(finished.reason);
                }
                if finished.usage.is_some() {
                    self.usage = finished.usage;
                }
                Progress::Finished(finished)
            }),
        })
    }

    /// Token usage: the service's figures when it sent them, else what the gateway counted.
    pub(crate) fn usage(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens.saturating_add(self.completion_tokens),
        })
    }

    fn store_recording(&mut self) {
        let Some(recorder) = self.recorder.take() else {
            return;
        };
        let usage = self.usage();
        if let Some(answer) =
            StoredAnswer::finished(self.model.clone(), recorder.texts, recorder.reasons, &usage)
        {
            recorder.cache.store(recorder.key, &answer);
        }
    }

    fn check_index(&self, index: u32) -> Result<(), BackendError> {
        match self.finished.get(index as usize) {
            Some(false) => Ok(()),
            Some(true) => Err(BackendError::protocol(format!(
                "choice {index} continued after finishing"
            ))),
            None => Err(BackendError::protocol(format!(
                "choice {index} was not requested"
            ))),
        }
    }

    fn observe_tokens(&mut self, tokens: u32) {
        if tokens == 0 {
            return;
        }
        let now = Instant::now();
        match self.last_token_at {
            None => self
                .metrics
                .time_to_first_token(&self.model_label, now - self.started_at),
            Some(previous) => self
                .metrics
                .inter_token_latency(&self.model_label, now - previous),
        }
        self.last_token_at = Some(now);
        self.completion_tokens = self.completion_tokens.saturating_add(tokens);
        self.metrics.completion_tokens(&self.model_label, tokens);
    }
}

/// The metric label for a model id a client named: the id if the service listed it or the
/// routing table names it, else "unknown", so clients cannot create label values.
pub(crate) fn model_label(state: &AppState, requested: &str) -> String {
    if state.catalog().is_known(requested) || state.routes().knows(requested) {
        requested.to_owned()
    } else {
        UNKNOWN_MODEL.to_owned()
    }
}

/// A whole generation.
#[derive(Debug)]
pub(crate) struct Collected {
    pub(crate) usage: Usage,
    pub(crate) choices: Vec<CollectedChoice>,
}

/// One whole choice.
#[derive(Debug, Default)]
pub(crate) struct CollectedChoice {
    pub(crate) text: String,
    pub(crate) logprobs: Vec<TokenLogprob>,
    pub(crate) tool_calls: Vec<ToolCallOut>,
    /// Always set once collection succeeded.
    pub(crate) finish_reason: Option<FinishReason>,
}
