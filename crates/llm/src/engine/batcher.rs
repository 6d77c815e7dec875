//! The batching loop on the engine thread.
//!
//! Each iteration takes whatever commands arrived (without waiting while anything runs), drops
//! cancelled requests, asks the [`Scheduler`] for a step, runs it as ONE batched forward pass
//! (the running choices' decodes and the prompts' prefill chunks together), then samples,
//! streams and retires. A request's choices share its prompt: it is prefilled once and its
//! cache cloned for each choice, which then decode side by side in the batch.

use std::{
    cell::Cell, collections::BTreeMap, panic::AssertUnwindSafe, rc::Rc, sync::Arc, time::Instant,
};

use rayon::ThreadPool;
use tokio::sync::mpsc::{self, error::TryRecvError};
use tracing::Span;

use crate::{
    engine::{
        Waiting,
        metrics::{EngineMetrics, Outcome},
        scheduler::{Admitted, Request, RequestId, Scheduler, Work},
        sequence::{Choice, Reply, Sequence, Step},
        worker::{Command, Job, panic_message},
    },
    error::LlmError,
    model::{BatchItem, Decoder, KvCache},
    plan::GenerationPlan,
    request::GenerationEvent,
    served::ServedModel,
};

/// A request on the engine thread, from its arrival to the end of its last choice.
struct Group<'s> {
    plan: Arc<GenerationPlan>,
    reply: Reply,
    span: Span,
    arrived: Instant,
    /// Taken into the batch, and told so with `Started`.
    admitted: bool,
    /// The prompt's cache while it is prefilled; each choice starts from a copy.
    prompt_cache: KvCache,
    /// Whether the prompt is computed and the choices started.
    decoding: bool,
    rows: Vec<Row<'s>>,
    completion_tokens: Rc<Cell<u32>>,
    /// How the last choice to end ended.
    outcome: Outcome,
    /// A choice failed or the caller left: the whole request ends.
    aborted: Option<Outcome>,
}

/// One running choice.
struct Row<'s> {
    sequence: Sequence<'s>,
    cache: KvCache,
    /// The token to feed at the next step.
    next: u32,
    index: u32,
    /// Set when the choice ended this step.
    ended: Option<Outcome>,
}

/// What one row of a step's logits belongs to.
#[derive(Debug, Clone, Copy)]
enum Target {
    Prompt {
        id: RequestId,
        len: usize,
        last: bool,
    },
    Choice {
        id: RequestId,
        row: usize,
    },
}

impl Target {
    fn id(self) -> RequestId {
        match self {
            Self::Prompt { id, .. } | Self::Choice { id, .. } => id,
        }
    }
}

fn work_id(work: &Work) -> RequestId {
    match work {
        Work::Prefill { id, .. } | Work::Decode { id, .. } => *id,
    }
}

pub(crate) struct Batcher<'s> {
    decoder: &'s Decoder,
    served: &'s ServedModel,
    pool: &'s ThreadPool,
    metrics: &'s EngineMetrics,
    waiting: &'s Waiting,
    scheduler: Scheduler<KvCache>,
    /// Longest cache the prefix cache may keep (see `worker::prefix_limit`).
    prefix_limit: Option<usize>,
    /// By id: arrival order, so batches are built in a reproducible order.
    groups: BTreeMap<RequestId, Group<'s>>,
    next_id: RequestId,
}

impl<'s> Batcher<'s> {
    pub fn new(
        decoder: &'s Decoder,
        served: &'s ServedModel,
        pool: &'s ThreadPool,
        metrics: &'s EngineMetrics,
        waiting: &'s Waiting,
        scheduler: Scheduler<KvCache>,
        prefix_limit: Option<usize>,
    ) -> Self {
        Self {
            decoder,
            served,
            pool,
            metrics,
            waiting,
            scheduler,
            prefix_limit,
            groups: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// Runs until every handle is dropped and every request has ended.
    pub fn run(mut self, commands: &mut mpsc::Receiver<Command>) {
        let mut open = true;
        loop {
            if self.groups.is_empty() {
                match open.then(|| commands.blocking_recv()).flatten() {
                    Some(command) => self.intake(command),
                    None => return,
                }
            }
            while open {
                match commands.try_recv() {
                    Ok(command) => self.intake(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.drop_cancelled();
            let step = self.scheduler.step(Instant::now());
            for id in step.expired {
                self.expire(id);
            }
            for admitted in step.admitted {
                self.admit(admitted);
            }
            let work: Vec<Work> = step
                .work
                .into_iter()
                .filter(|w| self.groups.contains_key(&work_id(w)))
                .collect();
            if work.is_empty() {
                // Only requests waiting for room that nothing running will free: they expire.
                if !self.groups.is_empty() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            } else {
                self.run_step(&work);
                self.retire();
            }
            self.metrics
                .running_sequences
                .set(self.scheduler.running_rows() as i64);
            self.metrics
                .kv_blocks_used
                .set(self.scheduler.reserved_blocks() as i64);
            self.metrics
                .kv_blocks_cached
                .set(self.scheduler.cached_blocks() as i64);
        }
    }

    fn intake(&mut self, command: Command) {
        let Command::Generate(Job {
            plan,
            reply,
            span,
            admitted: arrived,
        }) = command;
        let rows = plan.choices as usize;
        if !self
            .scheduler
            .fits_ever(plan.prompt.ids.len(), plan.max_tokens, rows)
        {
            // The handle fits every request to the budget before sending it.
            self.waiting.remove();
            let _ = reply.blocking_send(Err(LlmError::Internal(
                "the request does not fit the KV cache budget".to_owned(),
            )));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.scheduler.enqueue(Request {
            id,
            prompt: plan.prompt.ids.as_slice().into(),
            max_tokens: plan.max_tokens,
            rows,
            arrived,
        });
        self.groups.insert(
            id,
            Group {
                plan: Arc::new(plan),
                reply,
                span,
                arrived,
                admitted: false,
                prompt_cache: KvCache::new(),
                decoding: false,
                rows: Vec::new(),
                completion_tokens: Rc::new(Cell::new(0)),
                outcome: Outcome::Stop,
                aborted: None,
            },
        );
    }

    fn drop_cancelled(&mut self) {
        let gone: Vec<RequestId> = self
            .groups
            .iter()
            .filter(|(_, group)| group.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.end(id, Outcome::Cancelled);
        }
    }

    /// Forgets a request, frees what it held and counts how it ended.
    fn end(&mut self, id: RequestId, outcome: Outcome) {
        self.scheduler.remove(id);
        let Some(group) = self.groups.remove(&id) else {
            return;
        };
        if group.admitted {
            self.metrics.active_requests.dec();
        } else {
            self.waiting.remove();
        }
        self.metrics.finished(outcome);
        let _entered = group.span.enter();
        tracing::debug!(?outcome, "generation ended");
    }

    fn fail(&mut self, id: RequestId, err: LlmError) {
        if let Some(group) = self.groups.get(&id) {
            // The caller may already be gone; the outcome is an error either way.
            let _ = group.reply.blocking_send(Err(err));
        }
        self.end(id, Outcome::Error);
    }

    /// A request found no room in time: the scheduler has dropped it already.
    fn expire(&mut self, id: RequestId) {
        let Some(group) = self.groups.remove(&id) else {
            return;
        };
        self.waiting.remove();
        self.metrics.overloaded.inc();
        let waited = group.arrived.elapsed();
        let _entered = group.span.enter();
        tracing::info!(?waited, "no room in the batch; refused as overloaded");
        let _ = group
            .reply
            .blocking_send(Err(LlmError::Overloaded { waited }));
    }

    fn admit(&mut self, admitted: Admitted<KvCache>) {
        let id = admitted.id;
        let Some(group) = self.groups.get_mut(&id) else {
            self.scheduler.remove(id);
            return;
        };
        group.admitted = true;
        self.waiting.remove();
        self.metrics.active_requests.inc();
        if let Some((mut cache, reused)) = admitted.prefix {
            if let Err(err) = cache.truncate(reused) {
                self.fail(id, err.into());
                return;
            }
            group.prompt_cache = cache;
            self.metrics.prefix_cache_hits.inc();
            self.metrics.prefix_cache_tokens.inc_by(reused as u64);
        }
        let prompt_tokens = u32::try_from(group.plan.prompt.ids.len()).unwrap_or(u32::MAX);
        if group
            .reply
            .blocking_send(Ok(GenerationEvent::Started { prompt_tokens }))
            .is_err()
        {
            self.end(id, Outcome::Cancelled);
        }
    }

    /// Runs one forward pass over `work` and samples from its logits.
    fn run_step(&mut self, work: &[Work]) {
        let by_id: BTreeMap<RequestId, Work> = work.iter().map(|w| (work_id(w), *w)).collect();
        let mut items = Vec::new();
        let mut targets = Vec::new();
        let mut broken = Vec::new();
        for (&id, group) in &mut self.groups {
            match by_id.get(&id) {
                Some(&Work::Prefill {
                    start, len, last, ..
                }) => match group.plan.prompt.ids.get(start..start + len) {
                    Some(tokens) if group.prompt_cache.len() == start => {
                        items.push(BatchItem {
                            tokens,
                            cache: &mut group.prompt_cache,
                        });
                        targets.push(Target::Prompt { id, len, last });
                    }
                    _ => broken.push(id),
                },
                Some(Work::Decode { .. }) => {
                    for (row, choice) in group.rows.iter_mut().enumerate() {
                        items.push(BatchItem {
                            tokens: std::slice::from_ref(&choice.next),
                            cache: &mut choice.cache,
                        });
                        targets.push(Target::Choice { id, row });
                    }
                }
                None => {}
            }
        }
        let (decoder, pool) = (self.decoder, self.pool);
        let result = (!items.is_empty()).then(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                pool.install(|| {
                    decoder
                        .forward_batch(&mut items)
                        .and_then(|logits| logits.to_vec2::<f32>())
                })
            }))
        });
        drop(items);
        for id in broken {
            self.fail(
                id,
                LlmError::Internal("the scheduler and the prompt's cache disagree".to_owned()),
            );
        }
        let logits = match result {
            None => return,
            Some(Ok(Ok(logits))) => logits,
            Some(Ok(Err(err))) => {
                tracing::error!(error = %err, "the batched forward pass failed");
                let message = err.to_string();
                self.fail_all(&targets, |_| {
                    LlmError::Generation(candle_core::Error::Msg(message.clone()))
                });
                return;
            }
            Some(Err(panic)) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(%message, "the batched forward pass panicked");
                self.fail_all(&targets, |_| {
                    LlmError::Internal(format!("the engine panicked: {message}"))
                });
                return;
            }
        };
        for (target, mut logits) in targets.into_iter().zip(logits) {
            match target {
                Target::Prompt { id, len, last } => {
                    self.metrics.prompt_tokens.inc_by(len as u64);
                    if last {
                        self.start_choices(id, &logits);
                    }
                }
                Target::Choice { id, row } => self.sample(id, row, &mut logits),
            }
        }
    }

    fn fail_all(&mut self, targets: &[Target], err: impl Fn(RequestId) -> LlmError) {
        let mut ids: Vec<RequestId> = targets.iter().map(|t| t.id()).collect();
        ids.dedup();
        for id in ids {
            self.fail(id, err(id));
        }
    }

    /// The prompt is computed: every choice samples its first token from its last logits and
    /// gets its own copy of the prompt's cache.
    fn start_choices(&mut self, id: RequestId, logits: &[f32]) {
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        let _entered = group.span.enter();
        group.decoding = true;
        let choices = group.plan.choices;
        for index in 0..choices {
            let choice = Choice {
                index,
                completion_tokens: group.completion_tokens.clone(),
            };
            let sequence = Sequence::new(
                group.plan.clone(),
                choice,
                group.reply.clone(),
                self.served.tokenizer.pieces(),
                group.arrived,
            );
            if !sequence.start() {
                group.aborted = Some(Outcome::Cancelled);
                return;
            }
            let cache = if index + 1 == choices {
                std::mem::take(&mut group.prompt_cache)
            } else {
                group.prompt_cache.clone()
            };
            let mut row = Row {
                sequence,
                cache,
                next: 0,
                index,
                ended: None,
            };
            match accept(&mut row.sequence, &mut logits.to_vec(), self.metrics) {
                Step::Continue(token) => row.next = token,
                Step::Finished(outcome) => {
                    row.ended = Some(outcome);
                    if matches!(outcome, Outcome::Error | Outcome::Cancelled) {
                        group.aborted = Some(outcome);
                        return;
                    }
                }
            }
            group.rows.push(row);
        }
    }

    fn sample(&mut self, id: RequestId, row: usize, logits: &mut [f32]) {
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        if group.aborted.is_some() {
            return;
        }
        let _entered = group.span.enter();
        let Some(choice) = group.rows.get_mut(row) else {
            return;
        };
        match accept(&mut choice.sequence, logits, self.metrics) {
            Step::Continue(token) => choice.next = token,
            Step::Finished(outcome) => {
                choice.ended = Some(outcome);
                if matches!(outcome, Outcome::Error | Outcome::Cancelled) {
                    group.aborted = Some(outcome);
                }
            }
        }
    }

    /// Frees the choices that ended this step, keeps the first choice's cache for later
    /// prompts, and ends the requests with nothing left running.
    fn retire(&mut self) {
        let ids: Vec<RequestId> = self.groups.keys().copied().collect();
        for id in ids {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            if let Some(outcome) = group.aborted {
                self.end(id, outcome);
                continue;
            }
            if group.rows.iter().all(|row| row.ended.is_none()) {
                continue;
            }
            let (ended, running): (Vec<Row<'s>>, Vec<Row<'s>>) = std::mem::take(&mut group.rows)
                .into_iter()
                .partition(|row| row.ended.is_some());
            group.rows = running;
            let done = group.decoding && group.rows.is_empty();
            for row in ended {
                let outcome = row.ended.unwrap_or(Outcome::Stop);
                group.outcome = outcome;
                self.scheduler.finish_row(id);
                if row.index == 0
                    && self
                        .prefix_limit
                        .is_none_or(|limit| row.cache.len() <= limit)
                {
                    let tokens = row.cache.tokens().to_vec();
                    self.scheduler.remember(tokens, row.cache);
                }
            }
            if done {
                let outcome = group.outcome;
                self.end(id, outcome);
            }
        }
    }
}

/// Samples through `sequence`; a panic (a bug) fails this request only.
fn accept(sequence: &mut Sequence<'_>, logits: &mut [f32], metrics: &EngineMetrics) -> Step {
    std::panic::catch_unwind(AssertUnwindSafe(|| sequence.accept(logits, metrics))).unwrap_or_else(
        |panic| {
            let message = panic_message(panic.as_ref());
            tracing::error!(%message, "sampling panicked");
            Step::Finished(sequence.fail(LlmError::Internal(format!(
                "the engine panicked: {message}"
            ))))
        },
    )
}
