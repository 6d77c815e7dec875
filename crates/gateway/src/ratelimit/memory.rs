//! The in-process backend: every principal's buckets in one map, on the Tokio clock (so tests
//! drive time with `tokio::time::pause`/`advance`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::bucket::{self, Bucket};
use super::{
    AdaptiveConfig, Admitted, ConcurrencyPermit, Limits, RateLimitHeaders, Refused, Slot, decide,
};

/// Subjects are swept for idle state once per this many calls, so memory follows the number of
/// recently active principals at a cost amortised over the calls.
pub(crate) const PRUNE_EVERY: u32 = 1024;

pub(crate) struct MemoryBackend {
    epoch: Instant,
    // A std Mutex: every section is a little arithmetic on one entry (or a sweep), never held
    // across an await.
    subjects: Mutex<Subjects>,
}

#[derive(Default)]
struct Subjects {
    map: HashMap<String, SubjectState>,
    calls_since_prune: u32,
}

impl Subjects {
    /// `subject`'s state, new if it has none. Its name is copied only then: `entry` would take
    /// an owned key, an allocation, on every call.
    fn state_mut(&mut self, subject: &str) -> &mut SubjectState {
        if !self.map.contains_key(subject) {
            return self.map.entry(subject.to_owned()).or_default();
        }
        self.map
            .get_mut(subject)
            .expect("the key was just found, under the same exclusive borrow")
    }
}

#[derive(Default)]
struct SubjectState {
    requests: Bucket,
    tokens: Bucket,
    in_flight: u32,
    /// Times of recent safety violations, oldest first.
    violations: VecDeque<u64>,
    /// When every bucket will have drained and every violation aged out.
    idle_at_us: u64,
}

impl SubjectState {
    fn tier(&mut self, now_us: u64, adaptive: Option<&AdaptiveConfig>) -> u32 {
        let Some(config) = adaptive else { return 0 };
        let window_us = micros(config.window);
        while self
            .violations
            .front()
            .is_some_and(|&at| at.saturating_add(window_us) <= now_us)
        {
            self.violations.pop_front();
        }
        bucket::tier(self.violations.len() as u64, config)
    }

    fn idle_after(&mut self, until_us: u64) {
        self.idle_at_us = self.idle_at_us.max(until_us);
    }

    fn is_idle(&self, now_us: u64) -> bool {
        self.in_flight == 0 && now_us >= self.idle_at_us
    }
}

impl MemoryBackend {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            subjects: Mutex::default(),
        }
    }

    fn now_us(&self) -> u64 {
        micros(self.epoch.elapsed())
    }

    fn lock(&self) -> MutexGuard<'_, Subjects> {
        // The sections cannot panic midway through an update, so a poisoned map is still sound.
        self.subjects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the map, sweeping idle subjects when it is time.
    fn lock_for_call(&self, now_us: u64) -> MutexGuard<'_, Subjects> {
        let mut subjects = self.lock();
        subjects.calls_since_prune += 1;
        if subjects.calls_since_prune >= PRUNE_EVERY {
            subjects.calls_since_prune = 0;
            subjects.map.retain(|_, state| !state.is_idle(now_us));
        }
        subjects
    }

    pub(crate) fn admit(
        self: &Arc<Self>,
        subject: &str,
        limits: &Limits,
        adaptive: Option<&AdaptiveConfig>,
    ) -> Result<Admitted, Refused> {
        let now = self.now_us();
        let mut subjects = self.lock_for_call(now);
        let state = subjects.state_mut(subject);
        let tier = state.tier(now, adaptive);
        let rpm = limits.rpm.map(|limit| bucket::scaled(limit, tier));
        let tpm = limits.tpm.map(|limit| bucket::scaled(limit, tier));

        let requests =
            rpm.map(|limit| bucket::check_request(state.requests.level_at(limit, now), limit));
        let tokens =
            tpm.map(|limit| bucket::check_tokens(state.tokens.level_at(limit, now), limit));
        let concurrency_full = limits
            .max_concurrent
            .is_some_and(|max| state.in_flight >= max);
        let headers = RateLimitHeaders {
            requests: requests.map(|v| v.window),
            tokens: tokens.map(|v| v.window),
        };
        if let Some((reason, retry_after)) = decide(requests, tokens, concurrency_full) {
            return Err(Refused {
                reason,
                retry_after,
                headers,
            });
        }

        if let Some(limit) = rpm {
            state.requests = state.requests.add(limit, now, 1.0);
            let drained = state.requests.drained_in(limit, now);
            state.idle_after(now.saturating_add(micros(drained)));
        }
        let slot = limits.max_concurrent.map(|_| {
            state.in_flight += 1;
            Slot::Memory(MemorySlot {
                backend: Arc::clone(self),
                subject: subject.to_owned(),
            })
        });
        Ok(Admitted {
            headers,
            permit: ConcurrencyPermit { _slot: slot },
        })
    }

    pub(crate) fn record_tokens(
        &self,
        subject: &str,
        tpm: u32,
        tokens: u64,
        adaptive: Option<&AdaptiveConfig>,
    ) {
        let now = self.now_us();
        let mut subjects = self.lock_for_call(now);
        let state = subjects.state_mut(subject);
        let tpm = bucket::scaled(tpm, state.tier(now, adaptive));
        state.tokens = state.tokens.add(tpm, now, tokens as f64);
        let drained = state.tokens.drained_in(tpm, now);
        state.idle_after(now.saturating_add(micros(drained)));
    }

    pub(crate) fn note_violation(&self, subject: &str, adaptive: &AdaptiveConfig) {
        let now = self.now_us();
        let mut subjects = self.lock_for_call(now);
        let state = subjects.state_mut(subject);
        state.tier(now, Some(adaptive));
        state.violations.push_back(now);
        while state.violations.len() > adaptive.max_kept() {
            state.violations.pop_front();
        }
        state.idle_after(now.saturating_add(micros(adaptive.window)));
    }

    fn release(&self, subject: &str) {
        let mut subjects = self.lock();
        if let Some(state) = subjects.map.get_mut(subject) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }

    #[cfg(test)]
    pub(crate) fn subjects(&self) -> usize {
        self.lock().map.len()
    }
}

/// An in-process concurrency slot.
pub(crate) struct MemorySlot {
    backend: Arc<MemoryBackend>,
    subject: String,
}

impl std::fmt::Debug for MemorySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySlot").finish_non_exhaustive()
    }
}

impl Drop for MemorySlot {
    fn drop(&mut self) {
        self.backend.release(&self.subject);
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
