//! One request's decoding state, separate from the model: what a scheduler would hold one of
//! per sequence in a batch. It turns logits into tokens, tokens into text deltas, and decides
//! when the sequence is finished.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::{
    detokenizer::Detokenizer,
    engine::metrics::{EngineMetrics, Outcome},
    error::LlmError,
    plan::GenerationPlan,
    request::{
        FinishReason, Finished, GenerationEvent, TokenDelta, TokenLogprob, TopLogprob, Usage,
    },
    sampler::{Logprobs, Sampler},
    stop::{StopMatcher, StopOutcome},
    tokenizer::TokenPieces,
};

/// Where a stream's events go.
pub(crate) type Reply = mpsc::Sender<Result<GenerationEvent, LlmError>>;

/// What the sequence needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Feed this token at the next position.
    Continue(u32),
    /// Done; the final events were sent (or the caller is gone).
    Finished(Outcome),
}

pub(crate) struct Sequence<'a> {
    plan: GenerationPlan,
    reply: Reply,
    pieces: &'a TokenPieces,
    sampler: Sampler,
    detokenizer: Detokenizer<'a>,
    stops: StopMatcher,
    generated: usize,
    admitted: Instant,
    last_token: Option<Instant>,
}

impl<'a> Sequence<'a> {
    pub fn new(
        plan: GenerationPlan,
        reply: Reply,
        pieces: &'a TokenPieces,
        admitted: Instant,
    ) -> Self {
        let sampler = Sampler::new(plan.sampler.clone(), &plan.prompt.ids);
        let stops = StopMatcher::new(plan.stop.iter().cloned());
        Self {
            plan,
            reply,
            pieces,
            sampler,
            detokenizer: Detokenizer::new(pieces),
            stops,
            generated: 0,
            admitted,
            last_token: None,
        }
    }

    pub fn prompt(&self) -> &[u32] {
        &self.plan.prompt.ids
    }

    /// The caller dropped the stream: stop computing for it.
    pub fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }

    /// Sends `Started` (and the echoed prompt). False when the caller is gone.
    pub fn start(&self) -> bool {
        let prompt_tokens = self.plan.prompt.ids.len() as u32;
        if !self.send(GenerationEvent::Started { prompt_tokens }) {
            return false;
        }
        // The echoed prompt carries no token ids, so that the deltas' ids are exactly the
        // completion's tokens (and line up with their logprobs).
        !self.plan.echo
            || self.send(GenerationEvent::Delta(TokenDelta {
                text: self.plan.prompt.text.clone(),
                token_ids: Vec::new(),
                logprobs: Vec::new(),
            }))
    }

    /// Reports a failure of the model to the caller.
    pub fn fail(&self, err: LlmError) -> Outcome {
        // The caller may already be gone; the outcome is an error either way.
        let _ = self.reply.blocking_send(Err(err));
        Outcome::Error
    }

    /// Samples the next token from `logits`, emits its text and says what comes next.
    pub fn accept(&mut self, logits: &mut [f32], metrics: &EngineMetrics) -> Step {
        let sampled = self.sampler.sample(logits);
        let token = sampled.token;
        self.generated += 1;
        metrics.generated_tokens.inc();
        self.observe_latency(metrics);

        let logprobs: Vec<TokenLogprob> = sampled
            .logprobs
            .map(|lp| self.logprob(token, lp))
            .into_iter()
            .collect();
        let mut delta = TokenDelta {
            text: String::new(),
            token_ids: vec![token],
            logprobs,
        };
        let mut finish: Option<(FinishReason, Option<String>)> = None;

        let is_eos = self.plan.eos_token_ids.contains(&token);
        if is_eos || self.plan.stop_token_ids.contains(&token) {
            // The stop token adds no text; release whatever was held.
            let matched = (!is_eos).then(|| self.pieces.text(token));
            let rest = self.detokenizer.finish();
            finish = Some(match self.stops.push(&rest) {
                StopOutcome::Stopped { emit, matched } => {
                    delta.text = emit;
                    (FinishReason::Stop, Some(matched))
                }
                StopOutcome::Continue { emit } => {
                    delta.text = emit + &self.stops.flush();
                    (FinishReason::Stop, matched)
                }
            });
        } else {
            let piece = self.detokenizer.push(token);
            match self.stops.push(&piece) {
                StopOutcome::Stopped { emit, matched } => {
                    delta.text = emit;
                    finish = Some((FinishReason::Stop, Some(matched)));
                }
                StopOutcome::Continue { emit } => delta.text = emit,
            }
            if finish.is_none() && self.generated >= self.plan.max_tokens {
                let rest = self.detokenizer.finish();
                finish = Some(match self.stops.push(&rest) {
                    StopOutcome::Stopped { emit, matched } => {
                        delta.text.push_str(&emit);
                        (FinishReason::Stop, Some(matched))
                    }
                    StopOutcome::Continue { emit } => {
                        delta.text.push_str(&emit);
                        delta.text.push_str(&self.stops.flush());
                        (FinishReason::Length, None)
                    }
                });
            }
        }

        if !self.send(GenerationEvent::Delta(delta)) {
            return Step::Finished(Outcome::Cancelled);
        }
        let Some((reason, matched_stop)) = finish else {
            return Step::Continue(token);
        };
        let usage = Usage {
            prompt_tokens: self.plan.prompt.ids.len() as u32,
            completion_tokens: self.generated as u32,
        };
        if !self.send(GenerationEvent::Finished(Finished {
            reason,
            usage,
            matched_stop,
        })) {
            return Step::Finished(Outcome::Cancelled);
        }
        Step::Finished(match reason {
            FinishReason::Stop => Outcome::Stop,
            FinishReason::Length => Outcome::Length,
        })
    }

    fn observe_latency(&mut self, metrics: &EngineMetrics) {
        let now = Instant::now();
        match self.last_token {
            None => metrics
                .time_to_first_token
                .observe((now - self.admitted).as_secs_f64()),
            Some(last) => metrics
                .inter_token_latency
                .observe((now - last).as_secs_f64()),
        }
        self.last_token = Some(now);
    }

    fn logprob(&self, token: u32, lp: Logprobs) -> TokenLogprob {
        TokenLogprob {
            token_id: token,
            token: self.pieces.text(token),
            bytes: self.pieces.bytes(token).to_vec(),
            logprob: lp.logprob,
            top: lp
                .top
                .into_iter()
                .map(|(id, logprob)| TopLogprob {
                    token_id: id,
                    token: self.pieces.text(id),
                    bytes: self.pieces.bytes(id).to_vec(),
                    logprob,
                })
                .collect(),
        }
    }

    /// Never waits in practice: the reply channel holds a whole request's events.
    fn send(&self, event: GenerationEvent) -> bool {
        self.reply.blocking_send(Ok(event)).is_ok()
    }
}
