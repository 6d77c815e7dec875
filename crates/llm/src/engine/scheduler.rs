//! The batching policy: which requests run, and what each one feeds the model at every step.
//!
//! Pure bookkeeping, no model and no I/O, so the whole policy is unit-tested here. The worker
//! asks for a [`Step`] before every forward pass and reports back what ended.
//!
//! - **Continuous batching.** Requests join ([`Scheduler::enqueue`]) and leave
//!   ([`Scheduler::finish_row`], [`Scheduler::remove`]) between any two steps.
//! - **Decodes first, then chunked prefill.** Every running sequence that has its prompt
//!   computed decodes one token each step; the rest of the step's token budget
//!   (`max_batch_tokens`) goes to prompts, at most `prefill_chunk` tokens of each, oldest
//!   first. A long prompt therefore costs the running streams one chunk per step, never its
//!   whole length.
//! - **KV budget by reservation.** The budget is counted in blocks of [`BLOCK_TOKENS`]
//!   positions. A request is admitted only once blocks for `prompt + max_tokens` of each of its
//!   choices are free, and holds them until each choice ends. No running sequence can then run
//!   out of cache: no preemption, no recomputation, no stream that stalls or fails halfway. The
//!   price is that a request reserves for its worst case; one asking for fewer tokens than it
//!   could reserves less.
//! - **FIFO admission.** The oldest waiting request is admitted first and nothing overtakes it,
//!   so a large request is never starved by a stream of small ones. A request that waits longer
//!   than `max_wait` is handed back as expired (the engine answers "overloaded, retry later").
//! - **Prefix cache.** The caches of recently finished sequences are kept ([`PrefixCache`]) in
//!   the blocks no sequence reserves, least recently used first out when a request needs them.
//!   A new request starts from the longest one sharing its prompt's beginning and prefills only
//!   the rest. A hit saves computation, not memory: the decoder's cache is contiguous and
//!   extended by copying, so a sequence's cache becomes its own after its first step and is
//!   charged in full.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

/// Positions per KV block, the unit the budget is counted in.
pub const BLOCK_TOKENS: usize = 16;

/// Identifies a request (all its choices) to the scheduler.
pub type RequestId = u64;

/// The scheduler's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// KV blocks of [`BLOCK_TOKENS`] positions, for running sequences and the prefix cache.
    pub total_blocks: usize,
    /// Most sequences decoding at once (a request with `n` choices counts `n`).
    pub max_running: usize,
    /// Most tokens one forward pass runs, decodes and prefill chunks together.
    pub max_batch_tokens: usize,
    /// Most prompt tokens one sequence prefills in one step.
    pub prefill_chunk: usize,
    /// How long a request may wait for admission before it is refused.
    pub max_wait: Duration,
    /// Most entries the prefix cache keeps, whatever room is left.
    pub max_prefixes: usize,
}

/// A limit that makes the scheduler unable to run anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerConfigError {
    #[error("max_running must be at least 1")]
    NoRunning,
    #[error("prefill_chunk must be at least 1")]
    NoChunk,
    #[error(
        "max_batch_tokens ({max_batch_tokens}) must exceed max_running ({max_running}), so that \
         prompts still progress while every running sequence decodes"
    )]
    BatchTooSmall {
        max_batch_tokens: usize,
        max_running: usize,
    },
    #[error("the KV cache budget must hold at least one block of {BLOCK_TOKENS} tokens")]
    NoBlocks,
}

impl SchedulerConfig {
    pub fn check(&self) -> Result<(), SchedulerConfigError> {
        if self.max_running == 0 {
            return Err(SchedulerConfigError::NoRunning);
        }
        if self.prefill_chunk == 0 {
            return Err(SchedulerConfigError::NoChunk);
        }
        if self.max_batch_tokens <= self.max_running {
            return Err(SchedulerConfigError::BatchTooSmall {
                max_batch_tokens: self.max_batch_tokens,
                max_running: self.max_running,
            });
        }
        if self.total_blocks == 0 {
            return Err(SchedulerConfigError::NoBlocks);
        }
        Ok(())
    }

    /// Blocks a request reserves: `prompt + max_tokens` positions for each of its `rows`
    /// choices.
    pub fn blocks_for(&self, prompt: usize, max_tokens: usize, rows: usize) -> usize {
        (prompt + max_tokens).div_ceil(BLOCK_TOKENS) * rows
    }
}

/// A request as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: RequestId,
    pub prompt: Arc<[u32]>,
    pub max_tokens: usize,
    /// Choices: sequences that decode once the shared prompt is computed.
    pub rows: usize,
    pub arrived: Instant,
}

/// What one request does in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Run `prompt[start..start + len]`; `last` when this completes the prompt, so its logits
    /// give the first token.
    Prefill {
        id: RequestId,
        start: usize,
        len: usize,
        last: bool,
    },
    /// Each of the request's `rows` running choices feeds its latest token.
    Decode { id: RequestId, rows: usize },
}

/// A request taken off the queue this step.
#[derive(Debug, Clone)]
pub struct Admitted<S> {
    pub id: RequestId,
    /// A cached sequence sharing the prompt's first `reused` tokens; the request starts from
    /// it cut to that length.
    pub prefix: Option<(S, usize)>,
}

/// One step's decisions.
#[derive(Debug, Clone)]
pub struct Step<S> {
    /// Requests admitted, in order; their work is in `work`.
    pub admitted: Vec<Admitted<S>>,
    /// Requests that waited past `max_wait`, now dropped by the scheduler.
    pub expired: Vec<RequestId>,
    /// Decodes first, then prefill chunks, oldest request first.
    pub work: Vec<Work>,
}

impl<S> Step<S> {
    pub fn tokens(&self) -> usize {
        self.work
            .iter()
            .map(|w| match w {
                Work::Prefill { len, .. } => *len,
                Work::Decode { rows, .. } => *rows,
            })
            .sum()
    }
}

#[derive(Debug)]
struct Running {
    id: RequestId,
    prompt_len: usize,
    /// Prompt tokens still to compute.
    to_prefill: usize,
    rows: usize,
    blocks_per_row: usize,
}

/// Decides every step's batch; see the module documentation for the policy.
#[derive(Debug)]
pub struct Scheduler<S> {
    config: SchedulerConfig,
    waiting: VecDeque<Request>,
    running: Vec<Running>,
    /// Blocks reserved by running requests.
    reserved: usize,
    prefixes: PrefixCache<S>,
}

impl<S: Clone> Scheduler<S> {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerConfigError> {
        config.check()?;
        let prefixes = PrefixCache::new(config.max_prefixes, BLOCK_TOKENS);
        Ok(Self {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            reserved: 0,
            prefixes,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Whether a request of this shape could ever be admitted, even alone.
    pub fn fits_ever(&self, prompt: usize, max_tokens: usize, rows: usize) -> bool {
        rows <= self.config.max_running
            && self.config.blocks_for(prompt, max_tokens, rows) <= self.config.total_blocks
    }

    /// Queues a request behind those already waiting. One that can never fit is the caller's
    /// to refuse first ([`Scheduler::fits_ever`]); queued anyway, it expires.
    pub fn enqueue(&mut self, request: Request) {
        self.waiting.push_back(request);
    }

    /// Forgets a request, waiting or running (cancelled, failed); its blocks are freed.
    /// False when it was unknown.
    pub fn remove(&mut self, id: RequestId) -> bool {
        if let Some(at) = self.waiting.iter().position(|r| r.id == id) {
            self.waiting.remove(at);
            return true;
        }
        match self.running.iter().position(|r| r.id == id) {
            Some(at) => {
                let gone = self.running.remove(at);
                self.reserved -= gone.rows * gone.blocks_per_row;
                true
            }
            None => false,
        }
    }

    /// One choice of a running request ended; its blocks are freed, and the request is gone
    /// with its last choice.
    pub fn finish_row(&mut self, id: RequestId) {
        let Some(at) = self.running.iter().position(|r| r.id == id) else {
            return;
        };
        let running = &mut self.running[at];
        running.rows = running.rows.saturating_sub(1);
        self.reserved -= running.blocks_per_row;
        if running.rows == 0 {
            self.running.remove(at);
        }
    }

    /// Offers a finished sequence's cache (`tokens` are its cached positions) to the prefix
    /// cache. It is kept if the blocks no request reserves can hold it, evicting older entries
    /// as needed.
    pub fn remember(&mut self, tokens: Vec<u32>, snapshot: S) {
        let blocks = tokens.len().div_ceil(BLOCK_TOKENS);
        let room = self.config.total_blocks - self.reserved;
        if tokens.is_empty() || blocks > room {
            return;
        }
        if !self.prefixes.insert(tokens, snapshot) {
            return;
        }
        while self.prefixes.blocks() > room {
            if !self.prefixes.evict_oldest() {
                break;
            }
        }
    }

    /// Decides the next step: admissions, expiries and the work of the forward pass.
    pub fn step(&mut self, now: Instant) -> Step<S> {
        let admitted = self.admit();
        let expired = self.expire(now);
        let mut budget = self.config.max_batch_tokens;
        let mut work = Vec::new();
        for running in &self.running {
            if running.to_prefill == 0 {
                work.push(Work::Decode {
                    id: running.id,
                    rows: running.rows,
                });
                budget = budget.saturating_sub(running.rows);
            }
        }
        for running in &mut self.running {
            if budget == 0 {
                break;
            }
            if running.to_prefill == 0 {
                continue;
            }
            let len = running
                .to_prefill
                .min(self.config.prefill_chunk)
                .min(budget);
            work.push(Work::Prefill {
                id: running.id,
                start: running.prompt_len - running.to_prefill,
                len,
                last: len == running.to_prefill,
            });
            running.to_prefill -= len;
            budget -= len;
        }
        Step {
            admitted,
            expired,
            work,
        }
    }

    fn admit(&mut self) -> Vec<Admitted<S>> {
        let mut admitted = Vec::new();
        while let Some(head) = self.waiting.front() {
            if self.running_rows() + head.rows > self.config.max_running {
                break;
            }
            let blocks_per_row = self
                .config
                .blocks_for(head.prompt.len(), head.max_tokens, 1);
            let blocks = blocks_per_row * head.rows;
            if self.reserved + blocks > self.config.total_blocks {
                break;
            }
            // Looked up before making room, so that the entry it starts from goes last.
            let hit = self.prefixes.lookup(&head.prompt);
            while self.reserved + blocks + self.prefixes.blocks() > self.config.total_blocks {
                if !self.prefixes.evict_oldest() {
                    break;
                }
            }
            let Some(head) = self.waiting.pop_front() else {
                break;
            };
            let reused = hit.as_ref().map_or(0, |(_, reused)| *reused);
            self.reserved += blocks;
            self.running.push(Running {
                id: head.id,
                prompt_len: head.prompt.len(),
                to_prefill: head.prompt.len() - reused,
                rows: head.rows,
                blocks_per_row,
            });
            admitted.push(Admitted {
                id: head.id,
                prefix: hit,
            });
        }
        admitted
    }

    fn expire(&mut self, now: Instant) -> Vec<RequestId> {
        let max_wait = self.config.max_wait;
        let mut expired = Vec::new();
        self.waiting.retain(|request| {
            let keep = now.saturating_duration_since(request.arrived) <= max_wait;
            if !keep {
                expired.push(request.id);
            }
            keep
        });
        expired
    }

    /// Choices running (admitted and not finished).
    pub fn running_rows(&self) -> usize {
        self.running.iter().map(|r| r.rows).sum()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Blocks reserved by running requests.
    pub fn reserved_blocks(&self) -> usize {
        self.reserved
    }

    /// Blocks the prefix cache holds.
    pub fn cached_blocks(&self) -> usize {
        self.prefixes.blocks()
    }

    /// Nothing waits and nothing runs.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }
}

/// The caches of finished sequences, by their tokens, least recently used first out.
///
/// A linear scan finds the longest shared prefix: the entries are few (bounded by
/// `max_entries` and the budget) and comparing tokens costs nothing next to a forward pass.
#[derive(Debug)]
pub struct PrefixCache<S> {
    entries: Vec<PrefixEntry<S>>,
    max_entries: usize,
    /// Fewer shared tokens than this are not worth a hit.
    min_shared: usize,
    clock: u64,
}

#[derive(Debug)]
struct PrefixEntry<S> {
    tokens: Vec<u32>,
    snapshot: S,
    last_used: u64,
}

impl<S: Clone> PrefixCache<S> {
    pub fn new(max_entries: usize, min_shared: usize) -> Self {
        Self {
            entries: Vec::new(),
            max_entries,
            min_shared: min_shared.max(1),
            clock: 0,
        }
    }

    /// Blocks all entries hold.
    pub fn blocks(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.tokens.len().div_ceil(BLOCK_TOKENS))
            .sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry sharing the longest beginning with `prompt`, and how many of its tokens to
    /// reuse: at most all but the prompt's last token, whose logits the request needs, and at
    /// least `min_shared`.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(S, usize)> {
        let usable = prompt.len().saturating_sub(1);
        let (at, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(at, entry)| (at, shared_prefix(&entry.tokens, prompt).min(usable)))
            .max_by_key(|(at, shared)| (*shared, std::cmp::Reverse(*at)))?;
        if shared < self.min_shared {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[at];
        entry.last_used = self.clock;
        Some((entry.snapshot.clone(), shared))
    }

    /// Adds an entry, replacing those it extends. False when an entry already holds all of
    /// `tokens` (that one is refreshed instead).
    pub fn insert(&mut self, tokens: Vec<u32>, snapshot: S) -> bool {
        self.clock += 1;
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(&tokens))
        {
            entry.last_used = self.clock;
            return false;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.entries.push(PrefixEntry {
            tokens,
            snapshot,
            last_used: self.clock,
        });
        while self.entries.len() > self.max_entries {
            self.evict_oldest();
        }
        true
    }

    /// Drops the least recently used entry; false when there was none.
    pub fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(at, _)| at);
        match oldest {
            Some(at) => {
                self.entries.remove(at);
                true
            }
            None => false,
        }
    }
}

fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SchedulerConfig {
        SchedulerConfig {
            total_blocks: 64,
            max_running: 8,
            max_batch_tokens: 64,
            prefill_chunk: 32,
            max_wait: Duration::from_secs(10),
            max_prefixes: 8,
        }
    }

    fn request(id: RequestId, prompt_len: usize, max_tokens: usize, at: Instant) -> Request {
        Request {
            id,
            prompt: (0..prompt_len as u32)
                .map(|t| t + 1000 * id as u32)
                .collect(),
            max_tokens,
            rows: 1,
            arrived: at,
        }
    }

    fn decodes(step: &Step<u8>) -> Vec<RequestId> {
        step.work
            .iter()
            .filter_map(|w| match w {
                Work::Decode { id, .. } => Some(*id),
                Work::Prefill { .. } => None,
            })
            .collect()
    }

    fn prefills(step: &Step<u8>) -> Vec<(RequestId, usize, usize, bool)> {
        step.work
            .iter()
            .filter_map(|w| match *w {
                Work::Prefill {
                    id,
                    start,
                    len,
                    last,
                } => Some((id, start, len, last)),
                Work::Decode { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_long_prompt_is_split_into_chunks_interleaved_with_the_running_decodes() {
        let now = Instant::now();
        let mut scheduler = Scheduler::<u8>::new(config()).unwrap();
        for id in 1..=4 {
            scheduler.enqueue(request(id, 8, 16, now));
        }
        let first = scheduler.step(now);
        assert_eq!(first.admitted.len(), 4);
        assert_eq!(
            prefills(&first),
            vec![
                (1, 0, 8, true),
                (2, 0, 8, true),
                (3, 0, 8, true),
                (4, 0, 8, true)
            ]
        );

        scheduler.enqueue(request(9, 100, 16, now));
        let mut chunks = Vec::new();
        while chunks
            .last()
            .is_none_or(|c: &(RequestId, usize, usize, bool)| !c.3)
        {
            let step = scheduler.step(now);
            assert_eq!(
                decodes(&step),
                vec![1, 2, 3, 4],
                "every stream decodes every step"
            );
            assert!(step.tokens() <= 64);
            let prefill = prefills(&step);
            assert_eq!(prefill.len(), 1);
            chunks.push(prefill[0]);
        }
        assert_eq!(
            chunks,
            vec![
                (9, 0, 32, false),
                (9, 32, 32, false),
                (9, 64, 32, false),
                (9, 96, 4, true)
            ]
        );
        assert_eq!(decodes(&scheduler.step(now)), vec![1, 2, 3, 4, 9]);
    }

    #[test]
    fn the_step_budget_caps_prefill_after_the_decodes() {
        let now = Instant::now();
        let mut scheduler = Scheduler::<u8>::new(SchedulerConfig {
            max_batch_tokens: 10,
            max_running: 4,
            ..config()
        })
        .unwrap();
        for id in 1..=3 {
            scheduler.enqueue(request(id, 2, 4, now));
        }
        scheduler.step(now);
        scheduler.enqueue(request(4, 40, 4, now));
        let step = scheduler.step(now);
        assert_eq!(decodes(&step), vec![1, 2, 3]);
        assert_eq!(prefills(&step), vec![(4, 0, 7, false)]);
    }

    #[test]
    fn a_full_budget_queues_in_order_and_expires_after_max_wait() {
        let now = Instant::now();
        // 8 blocks: a request of 8 + 56 tokens takes 4.
        let mut scheduler = Scheduler::<u8>::new(SchedulerConfig {
            total_blocks: 8,
            ..config()
        })
        .unwrap();
        for id in 1..=3 {
            scheduler.enqueue(request(id, 8, 56, now));
        }
        // A small one behind the third must not overtake it.
        scheduler.enqueue(request(4, 4, 4, now));
        let step = scheduler.step(now);
        assert_eq!(
            step.admitted.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(scheduler.reserved_blocks(), 8);
        assert_eq!(scheduler.waiting(), 2);
        assert!(scheduler.step(now).admitted.is_empty());

        let late = now + Duration::from_secs(11);
        let step = scheduler.step(late);
        assert_eq!(step.expired, vec![3, 4]);
        assert_eq!(scheduler.waiting(), 0);
        assert!(
            !scheduler.fits_ever(100, 100, 1),
            "13 blocks never fit in 8"
        );
        assert!(scheduler.fits_ever(64, 64, 1));
    }

    #[test]
    fn finished_sequences_free_their_blocks_for_the_next_request() {
        let now = Instant::now();
        let mut scheduler = Scheduler::<u8>::new(SchedulerConfig {
            total_blocks: 6,
            ..config()
        })
        .unwrap();
        let mut two = request(1, 8, 24, now);
        two.rows = 2;
        scheduler.enqueue(two);
        scheduler.enqueue(request(2, 8, 72, now));
        assert_eq!(scheduler.step(now).admitted.len(), 1);
        assert_eq!(
            (scheduler.reserved_blocks(), scheduler.running_rows()),
            (4, 2)
        );
        scheduler.finish_row(1);
        assert_eq!(scheduler.reserved_blocks(), 2);
        assert!(scheduler.step(now).admitted.is_empty(), "4 free, 5 needed");
        scheduler.finish_row(1);
        assert_eq!(scheduler.reserved_blocks(), 0);
        let step = scheduler.step(now);
        assert_eq!(step.admitted[0].id, 2);
        assert!(scheduler.remove(2));
        assert!(scheduler.is_idle());
        assert!(!scheduler.remove(2));
    }

    #[test]
    fn max_running_counts_choices() {
        let now = Instant::now();
        let mut scheduler = Scheduler::<u8>::new(SchedulerConfig {
            max_running: 4,
            ..config()
        })
        .unwrap();
        let mut three = request(1, 4, 4, now);
        three.rows = 3;
        scheduler.enqueue(three);
        let mut two = request(2, 4, 4, now);
        two.rows = 2;
        scheduler.enqueue(two);
        assert_eq!(scheduler.step(now).admitted.len(), 1);
        // One prefill serves all three choices; then they decode as three rows.
        assert_eq!(
            scheduler.step(now).work,
            vec![Work::Decode { id: 1, rows: 3 }]
        );
        assert!(!scheduler.fits_ever(4, 4, 5));
    }

    #[test]
    fn a_prefix_hit_prefills_only_the_rest_and_the_cache_yields_to_requests() {
        let now = Instant::now();
        let mut scheduler = Scheduler::<u8>::new(SchedulerConfig {
            total_blocks: 8,
            ..config()
        })
        .unwrap();
        let system: Vec<u32> = (0..40).collect();
        scheduler.remember(system.clone(), 7);
        assert_eq!(scheduler.cached_blocks(), 3);

        let mut prompt = system.clone();
        prompt.extend([500, 501, 502]);
        scheduler.enqueue(Request {
            id: 1,
            prompt: prompt.into(),
            max_tokens: 5,
            rows: 1,
            arrived: now,
        });
        let step = scheduler.step(now);
        let prefix = step.admitted[0].prefix;
        assert_eq!(prefix, Some((7, 40)));
        assert_eq!(prefills(&step), vec![(1, 40, 3, true)]);
        assert_eq!(
            scheduler.reserved_blocks(),
            3,
            "the sequence is charged in full"
        );

        // The same prompt again: all but its last token come from the cache.
        scheduler.enqueue(Request {
            id: 2,
            prompt: system[..20].into(),
            max_tokens: 12,
            rows: 1,
            arrived: now,
        });
        let step = scheduler.step(now);
        assert_eq!(step.admitted[0].prefix, Some((7, 19)));
        assert_eq!(prefills(&step), vec![(2, 19, 1, true)]);

        // A request needing the cache's blocks evicts it rather than wait.
        scheduler.enqueue(request(3, 16, 16, now));
        let step = scheduler.step(now);
        assert_eq!(step.admitted.len(), 1);
        assert_eq!(step.admitted[0].prefix, None);
        assert_eq!(scheduler.cached_blocks(), 0);
        assert_eq!(scheduler.reserved_blocks(), 7);
    }

    #[test]
    fn the_prefix_cache_keeps_the_longest_entries_and_forgets_the_least_recent() {
        let mut cache = PrefixCache::new(2, 1);
        assert!(cache.insert(vec![1, 2, 3], 'a'));
        assert!(!cache.insert(vec![1, 2], 'x'), "already held");
        assert!(cache.insert(vec![1, 2, 3, 4], 'b'), "extends and replaces");
        assert_eq!(cache.len(), 1);
        assert!(cache.insert(vec![9, 9], 'c'));
        assert_eq!(cache.lookup(&[1, 2, 3, 4, 5]), Some(('b', 4)));
        assert!(cache.insert(vec![7], 'd'));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lookup(&[9, 9, 9]), None, "least recently used went");
        assert_eq!(cache.lookup(&[5]), None);
        let mut picky = PrefixCache::new(2, 3);
        picky.insert(vec![1, 2, 3, 4], 'a');
        assert_eq!(
            picky.lookup(&[1, 2, 9]),
            None,
            "two shared tokens are not enough"
        );
        assert_eq!(picky.lookup(&[1, 2, 3, 9]), Some(('a', 3)));
        assert!(cache.evict_oldest() && cache.evict_oldest() && !cache.evict_oldest());
    }

    #[test]
    fn remember_keeps_only_what_free_blocks_hold() {
        let mut scheduler = Scheduler::<u8>::new(SchedulerConfig {
            total_blocks: 4,
            ..config()
        })
        .unwrap();
        scheduler.remember((0..80).collect(), 1);
        assert_eq!(scheduler.cached_blocks(), 0, "5 blocks never fit in 4");
        scheduler.remember((0..32).collect(), 1);
        scheduler.remember((100..132).collect(), 2);
        scheduler.remember((200..232).collect(), 3);
        assert_eq!(scheduler.cached_blocks(), 4, "the oldest made room");
    }

    #[test]
    fn unusable_limits_are_refused() {
        let bad = |c: SchedulerConfig| Scheduler::<u8>::new(c).unwrap_err();
        assert_eq!(
            bad(SchedulerConfig {
                max_running: 0,
                ..config()
            }),
            SchedulerConfigError::NoRunning
        );
        assert!(matches!(
            bad(SchedulerConfig {
                max_batch_tokens: 8,
                ..config()
            }),
            SchedulerConfigError::BatchTooSmall { .. }
        ));
        assert_eq!(
            bad(SchedulerConfig {
                total_blocks: 0,
                ..config()
            }),
            SchedulerConfigError::NoBlocks
        );
    }
}
