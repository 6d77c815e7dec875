//! One choice's decoding state, separate from the model: the worker holds one per running
//! sequence of the batch. It turns logits into tokens (through the request's grammar, when it
//! has one), tokens into text deltas (and tool calls), and decides when the choice is finished.

use std::{cell::Cell, rc::Rc, sync::Arc, time::Instant};

use tokio::sync::mpsc;

use crate::{
    detokenizer::Detokenizer,
    engine::metrics::{EngineMetrics, Outcome},
    error::LlmError,
    grammar::Constraint,
    plan::GenerationPlan,
    request::{
        FinishReason, Finished, GenerationEvent, TokenDelta, TokenLogprob, TopLogprob, Usage,
    },
    sampler::{Logprobs, Sampler},
    stop::{StopMatcher, StopOutcome},
    tokenizer::TokenPieces,
    tool_calls::ToolCallParser,
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
    plan: Arc<GenerationPlan>,
    /// Which of the request's choices this is.
    index: u32,
    /// Completion tokens of all the request's choices so far, shared by them: each choice's
    /// usage reports the running total, so the last one to finish reports the request's.
    completion_tokens: Rc<Cell<u32>>,
    reply: Reply,
    pieces: &'a TokenPieces,
    sampler: Sampler,
    constraint: Option<Constraint>,
    detokenizer: Detokenizer<'a>,
    stops: StopMatcher,
    tools: Option<ToolCallParser>,
    generated: usize,
    admitted: Instant,
    last_token: Option<Instant>,
}

/// Which choice of a request a sequence is, and the request's shared token count.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    pub index: u32,
    pub completion_tokens: Rc<Cell<u32>>,
}

impl<'a> Sequence<'a> {
    pub fn new(
        plan: Arc<GenerationPlan>,
        choice: Choice,
        reply: Reply,
        pieces: &'a TokenPieces,
        admitted: Instant,
    ) -> Self {
        let mut sampler_config = plan.sampler.clone();
        // Each choice draws its own tokens, reproducibly: seed + choice index.
        sampler_config.seed = sampler_config
            .seed
            .map(|seed| seed.wrapping_add(u64::from(choice.index)));
        let sampler = Sampler::new(sampler_config, &plan.prompt.ids);
        let stops = StopMatcher::new(plan.stop.iter().cloned());
        Self {
            index: choice.index,
            completion_tokens: choice.completion_tokens,
            reply,
            pieces,
            sampler,
            constraint: plan.constraint.clone(),
            detokenizer: Detokenizer::new(pieces),
            stops,
            tools: plan.parse_tool_calls.then(ToolCallParser::new),
            generated: 0,
            admitted,
            last_token: None,
            plan,
        }
    }

    /// Sends the echoed prompt, when asked for. False when the caller is gone.
    pub fn start(&self) -> bool {
        // The echoed prompt carries no token ids, so that the deltas' ids are exactly the
        // completion's tokens (and line up with their logprobs).
        !self.plan.echo
            || self.send(GenerationEvent::Delta(TokenDelta {
                index: self.index,
                text: self.plan.prompt.text.clone(),
                ..TokenDelta::default()
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
        if let Some(constraint) = &mut self.constraint
            && let Err(err) = constraint.mask(logits)
        {
            return Step::Finished(self.fail(err));
        }
        let sampled = self.sampler.sample(logits);
        let token = sampled.token;
        let grammar_complete = match self.constraint.as_mut().map(|c| c.commit(token)) {
            Some(Err(err)) => return Step::Finished(self.fail(err)),
            Some(Ok(complete)) => complete,
            None => false,
        };
        self.generated += 1;
        self.completion_tokens
            .set(self.completion_tokens.get().saturating_add(1));
        metrics.generated_tokens.inc();
        self.observe_latency(metrics);

        let logprobs: Vec<TokenLogprob> = sampled
            .logprobs
            .map(|lp| self.logprob(token, lp))
            .into_iter()
            .collect();
        let mut delta = TokenDelta {
            index: self.index,
            token_ids: vec![token],
            logprobs,
            ..TokenDelta::default()
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
            // A complete grammar allows nothing but the end: stop now rather than spend a
            // forward pass on sampling it.
            let ended = if grammar_complete {
                Some(FinishReason::Stop)
            } else if self.generated >= self.plan.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let (None, Some(reason)) = (&finish, ended) {
                let rest = self.detokenizer.finish();
                finish = Some(match self.stops.push(&rest) {
                    StopOutcome::Stopped { emit, matched } => {
                        delta.text.push_str(&emit);
                        (FinishReason::Stop, Some(matched))
                    }
                    StopOutcome::Continue { emit } => {
                        delta.text.push_str(&emit);
                        delta.text.push_str(&self.stops.flush());
                        (reason, None)
                    }
                });
            }
        }

        if let Some(tools) = &mut self.tools {
            let mut parsed = tools.push(&delta.text);
            if finish.is_some() {
                parsed.text.push_str(&tools.finish().text);
            }
            delta.text = parsed.text;
            delta.tool_calls = parsed.calls;
            if let Some((reason @ FinishReason::Stop, _)) = &mut finish
                && tools.calls() > 0
            {
                *reason = FinishReason::ToolCalls;
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
            completion_tokens: self.completion_tokens.get(),
        };
        if !self.send(GenerationEvent::Finished(Finished {
            index: self.index,
            reason,
            usage,
            matched_stop,
        })) {
            return Step::Finished(Outcome::Cancelled);
        }
        Step::Finished(match reason {
            FinishReason::Stop | FinishReason::ToolCalls => Outcome::Stop,
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
