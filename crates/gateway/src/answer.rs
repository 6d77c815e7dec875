//! The answer to a generation request: generated live by the llm service, or replayed from the
//! semantic cache. Both yield the same progress events, so JSON responses and SSE streams are
//! built one way whatever the source.

use std::collections::VecDeque;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue};
use passerelle_proto::llm::GenerateRequest;

use crate::auth::Principal;
use crate::generation::{Collected, CollectedChoice, Generation, Progress, model_label};
use crate::llm::{BackendError, Delta, FinishReason, Finished, Usage};
use crate::meter::{Meter, Served};
use crate::output_screen::{OutputScreen, Screened};
use crate::semantic_cache::{Hit, StoredAnswer, StoredChoice};
use crate::state::AppState;

/// Response header saying whether the semantic cache answered: `hit` or `miss`.
pub(crate) const CACHE_HEADER: &str = "x-passerelle-cache";
/// Response header with a hit's cosine similarity to the cached prompt.
pub(crate) const SIMILARITY_HEADER: &str = "x-passerelle-cache-similarity";

/// A started answer. Once metered, it is accounted when dropped, however far it got.
pub(crate) struct Answer {
    source: Source,
    cache: CacheStatus,
    meter: Option<Meter>,
    /// The first choice's text so far, kept only for a meter that logs prompts.
    completion: String,
    /// The safety checks of the text as it is produced.
    screen: Option<OutputScreen>,
}

enum Source {
    // Boxed: a live generation carries its gRPC stream and is several times a replay's size.
    Live(Box<Generation>),
    Cached(Replay),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CacheStatus {
    /// No cache, or a request it must not answer.
    NotUsed,
    Miss,
    Hit {
        similarity: f32,
    },
}

impl Answer {
    /// From the semantic cache when it holds a close-enough answer, else a live generation whose
    /// answer is stored in the cache once it completes.
    pub(crate) async fn start(
        state: &AppState,
        principal: &Principal,
        request: GenerateRequest,
        started_at: Instant,
    ) -> Result<Self, BackendError> {
        Self::start_scoped(state, principal, request, started_at, None).await
    }

    /// As [`Answer::start`], with cached answers further keyed by `cache_scope`: what besides
    /// the request decided the answer (the sources retrieved into the prompt).
    pub(crate) async fn start_scoped(
        state: &AppState,
        principal: &Principal,
        request: GenerateRequest,
        started_at: Instant,
        cache_scope: Option<&str>,
    ) -> Result<Self, BackendError> {
        if let Some(drift) = state.drift() {
            drift.observe(&request);
        }
        let cached = state.semantic_cache().and_then(|cache| {
            cache.key(principal, &request).map(|key| {
                let key = match cache_scope {
                    Some(scope) => key.scoped(scope),
                    None => key,
                };
                (cache.clone(), key)
            })
        });
        if let Some((cache, key)) = &cached
            && let Some(hit) = cache.lookup(key).await
        {
            return Ok(Self::cached(state, hit));
        }
        let generation = Generation::start(state, request, started_at).await?;
        Ok(match cached {
            Some((cache, key)) => Self::new(
                Source::Live(Box::new(generation.record(cache, key))),
                CacheStatus::Miss,
            ),
            None => Self::new(Source::Live(Box::new(generation)), CacheStatus::NotUsed),
        })
    }

    /// A cache hit, replayed: for our own models, and for a request relayed to an upstream
    /// that the cache answers instead.
    pub(crate) fn cached(state: &AppState, hit: Hit) -> Self {
        let label = model_label(state, &hit.answer.model);
        state
            .metrics()
            .cache_saved_tokens(&label, hit.answer.usage().total_tokens);
        let status = CacheStatus::Hit {
            similarity: hit.similarity,
        };
        Self::new(Source::Cached(Replay::new(hit.answer, label)), status)
    }

    /// The operator's refusal message in place of an answer to an unsafe prompt: every choice
    /// says `message` and ends with `content_filter`; nothing was generated.
    pub(crate) fn refusal(state: &AppState, model: &str, choices: u32, message: &str) -> Self {
        let answer = StoredAnswer {
            model: model.to_owned(),
            choices: (0..choices.max(1))
                .map(|_| StoredChoice {
                    text: message.to_owned(),
                    finish_reason: FinishReason::ContentFilter,
                })
                .collect(),
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        let label = model_label(state, model);
        Self::new(
            Source::Cached(Replay::new(answer, label)),
            CacheStatus::NotUsed,
        )
    }

    fn new(source: Source, cache: CacheStatus) -> Self {
        Self {
            source,
            cache,
            meter: None,
            completion: String::new(),
            screen: None,
        }
    }

    /// Checks the answer's text with `screen` as it is produced.
    pub(crate) fn screened(mut self, screen: OutputScreen) -> Self {
        self.screen = Some(screen);
        self
    }

    /// Accounts the answer with `meter` when it is dropped.
    pub(crate) fn metered(mut self, meter: Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// The model that produced the answer.
    pub(crate) fn model(&self) -> &str {
        match &self.source {
            Source::Live(generation) => generation.model(),
            Source::Cached(replay) => &replay.answer.model,
        }
    }

    /// The model's metric label.
    pub(crate) fn model_label(&self) -> &str {
        match &self.source {
            Source::Live(generation) => generation.model_label(),
            Source::Cached(replay) => &replay.label,
        }
    }

    /// How many choices the answer has.
    pub(crate) fn choices(&self) -> u32 {
        match &self.source {
            Source::Live(generation) => generation.choices(),
            Source::Cached(replay) => replay.choices,
        }
    }

    /// The next delta or finish; `None` once every choice has finished.
    pub(crate) async fn next(&mut self) -> Option<Result<Progress, BackendError>> {
        let progress = loop {
            if let Some(screen) = &mut self.screen {
                if let Some(finished) = screen.ended_by_filter() {
                    break Some(Ok(Progress::Finished(finished)));
                }
                // Every choice was cut short: the rest of the generation is not wanted.
                if screen.all_ended() {
                    return None;
                }
            }
            let progress = match &mut self.source {
                Source::Live(generation) => generation.next().await,
                Source::Cached(replay) => replay.events.pop_front().map(Ok),
            };
            match (progress, &mut self.screen) {
                (Some(Ok(progress)), Some(screen)) => match screen.screen(progress).await {
                    Screened::Pass(progress) => break Some(Ok(progress)),
                    Screened::Drop => continue,
                },
                (progress, _) => break progress,
            }
        };
        if let Some(Ok(Progress::Delta(delta))) = &progress
            && delta.index == 0
            && self.meter.as_ref().is_some_and(Meter::wants_completion)
        {
            self.completion.push_str(&delta.text);
        }
        progress
    }

    /// Token usage of the answer (for a cached one, what generating it cost).
    pub(crate) fn usage(&self) -> Usage {
        match &self.source {
            Source::Live(generation) => generation.usage(),
            Source::Cached(replay) => replay.answer.usage(),
        }
    }

    /// Runs the answer to its end and gathers every choice.
    pub(crate) async fn collect(mut self) -> Result<Collected, BackendError> {
        let mut choices: Vec<CollectedChoice> = (0..self.choices())
            .map(|_| CollectedChoice::default())
            .collect();
        while let Some(progress) = self.next().await {
            match progress? {
                Progress::Delta(delta) => {
                    let choice = &mut choices[delta.index as usize];
                    choice.text.push_str(&delta.text);
                    choice.logprobs.extend(delta.logprobs);
                    choice.tool_calls.extend(delta.tool_calls);
                }
                Progress::Finished(finished) => {
                    choices[finished.index as usize].finish_reason = Some(finished.reason);
                }
            }
        }
        Ok(Collected {
            usage: self.usage(),
            choices,
        })
    }

    /// The cache headers for the response: none when the cache was not consulted.
    pub(crate) fn cache_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self.cache {
            CacheStatus::NotUsed => {}
            CacheStatus::Miss => {
                headers.insert(CACHE_HEADER, HeaderValue::from_static("miss"));
            }
            CacheStatus::Hit { similarity } => {
                headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
                if let Ok(value) = HeaderValue::from_str(&format!("{similarity:.4}")) {
                    headers.insert(SIMILARITY_HEADER, value);
                }
            }
        }
        headers
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(meter) = self.meter.take() {
            let served = match self.source {
                Source::Live(_) => Served::Model,
                Source::Cached(_) => Served::Cache,
            };
            meter.record(self.model(), self.usage(), served, &self.completion);
        }
    }
}

/// A cached answer replayed as the events a live generation would send: each choice's text in
/// one delta, then its finish, the usage on the last.
struct Replay {
    answer: StoredAnswer,
    label: String,
    choices: u32,
    events: VecDeque<Progress>,
}

impl Replay {
    fn new(answer: StoredAnswer, label: String) -> Self {
        let choices = u32::try_from(answer.choices.len()).unwrap_or(u32::MAX);
        let last = answer.choices.len().saturating_sub(1);
        let mut events = VecDeque::new();
        for (index, choice) in answer.choices.iter().enumerate() {
            let index_u32 = u32::try_from(index).unwrap_or(u32::MAX);
            events.push_back(Progress::Delta(Delta {
                index: index_u32,
                text: choice.text.clone(),
                ..Delta::default()
            }));
            events.push_back(Progress::Finished(Finished {
                index: index_u32,
                reason: choice.finish_reason,
                usage: (index == last).then(|| answer.usage()),
            }));
        }
        Self {
            answer,
            label,
            choices,
            events,
        }
    }
}
