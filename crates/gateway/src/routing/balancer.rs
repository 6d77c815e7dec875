//! Which replica of a model takes the next attempt, and which replicas are out of rotation.
//! Pure: no I/O, no clock of its own (callers pass `now`), no locks.
//!
//! Picking: the fewest outstanding requests per unit of weight wins; ties (an idle pool, or
//! replicas equally busy) go to the replica furthest behind its weighted share, so sequential
//! traffic is spread by weight too (stride scheduling). A replica that fails `eject_after`
//! times in a row is ejected for `eject_for`; after that it is back in rotation, half open: a
//! success clears its record, one more failure ejects it again at once.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

/// The share step of a replica of weight 1; heavier replicas step less per pick.
const STRIDE: u64 = 1 << 32;

/// When replicas are ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EjectionPolicy {
    /// Consecutive failures that eject a replica; 0 never ejects.
    pub(crate) after: u32,
    /// How long an ejected replica stays out.
    pub(crate) cool_down: Duration,
}

#[derive(Debug, Clone)]
struct ReplicaState {
    weight: u64,
    outstanding: u64,
    /// Weighted picks so far (stride scheduling's pass value).
    pass: u64,
    failures: u32,
    ejected_until: Option<Instant>,
}

/// No replica can take an attempt: every one is ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AllEjected {
    /// Until the first replica is back in rotation.
    pub(crate) retry_after: Duration,
}

/// The state of one model's replicas.
#[derive(Debug, Clone)]
pub(crate) struct Balancer {
    replicas: Vec<ReplicaState>,
    policy: EjectionPolicy,
}

impl Balancer {
    /// Replicas with these weights (0 counts as 1), all in rotation.
    pub(crate) fn new(weights: impl IntoIterator<Item = u32>, policy: EjectionPolicy) -> Self {
        let replicas = weights
            .into_iter()
            .map(|weight| ReplicaState {
                weight: u64::from(weight.max(1)),
                outstanding: 0,
                pass: 0,
                failures: 0,
                ejected_until: None,
            })
            .collect();
        Self { replicas, policy }
    }

    /// The replica for the next attempt, counted as outstanding until [`Balancer::release`].
    /// Replicas in `tried` are avoided while another is in rotation.
    pub(crate) fn pick(&mut self, now: Instant, tried: &[usize]) -> Result<usize, AllEjected> {
        self.reinstate(now);
        let best_of = |avoid: &[usize]| {
            (0..self.replicas.len())
                .filter(|&i| self.replicas[i].ejected_until.is_none() && !avoid.contains(&i))
                .min_by(|&a, &b| self.compare(a, b))
        };
        let Some(best) = best_of(tried).or_else(|| best_of(&[])) else {
            return Err(AllEjected {
                retry_after: self.first_return(now),
            });
        };
        let replica = &mut self.replicas[best];
        replica.outstanding += 1;
        replica.pass = replica.pass.saturating_add(STRIDE / replica.weight);
        Ok(best)
    }

    /// The attempt on `index` is over, whatever its outcome.
    pub(crate) fn release(&mut self, index: usize) {
        if let Some(replica) = self.replicas.get_mut(index) {
            replica.outstanding = replica.outstanding.saturating_sub(1);
        }
    }

    /// `index` answered: its failure record is cleared.
    pub(crate) fn succeeded(&mut self, index: usize) {
        if let Some(replica) = self.replicas.get_mut(index) {
            replica.failures = 0;
        }
    }

    /// `index` failed (connect error, 5xx, broken stream). Returns true when this ejected it.
    pub(crate) fn failed(&mut self, index: usize, now: Instant) -> bool {
        let policy = self.policy;
        let Some(replica) = self.replicas.get_mut(index) else {
            return false;
        };
        replica.failures = replica.failures.saturating_add(1);
        let out_now = replica.ejected_until.is_some_and(|until| until > now);
        let eject = policy.after > 0 && replica.failures >= policy.after && !out_now;
        if eject {
            replica.ejected_until = Some(now + policy.cool_down);
        }
        eject
    }

    /// Whether `index` is in rotation at `now`.
    pub(crate) fn in_rotation(&self, index: usize, now: Instant) -> bool {
        self.replicas
            .get(index)
            .is_some_and(|r| r.ejected_until.is_none_or(|until| until <= now))
    }

    /// Brings back replicas whose cool-down is over, level with the busiest share of the
    /// others, so a returning replica is not flooded to catch up on the picks it missed.
    fn reinstate(&mut self, now: Instant) {
        let returning: Vec<usize> = (0..self.replicas.len())
            .filter(|i| {
                self.replicas[*i]
                    .ejected_until
                    .is_some_and(|until| until <= now)
            })
            .collect();
        if returning.is_empty() {
            return;
        }
        let level = self
            .replicas
            .iter()
            .filter(|r| r.ejected_until.is_none())
            .map(|r| r.pass)
            .min();
        for i in returning {
            let replica = &mut self.replicas[i];
            replica.ejected_until = None;
            if let Some(level) = level {
                replica.pass = replica.pass.max(level);
            }
        }
    }

    /// Least outstanding per weight, then furthest behind its share, then the lower index.
    fn compare(&self, a: usize, b: usize) -> Ordering {
        let (ra, rb) = (&self.replicas[a], &self.replicas[b]);
        let load_a = u128::from(ra.outstanding) * u128::from(rb.weight);
        let load_b = u128::from(rb.outstanding) * u128::from(ra.weight);
        load_a
            .cmp(&load_b)
            .then(ra.pass.cmp(&rb.pass))
            .then(a.cmp(&b))
    }

    fn first_return(&self, now: Instant) -> Duration {
        self.replicas
            .iter()
            .filter_map(|r| r.ejected_until)
            .min()
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: EjectionPolicy = EjectionPolicy {
        after: 2,
        cool_down: Duration::from_secs(10),
    };

    /// Picks `n` times, each attempt over before the next.
    fn sequential(balancer: &mut Balancer, now: Instant, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let i = balancer.pick(now, &[]).unwrap();
                balancer.release(i);
                i
            })
            .collect()
    }

    #[test]
    fn the_least_busy_replica_takes_the_next_request() {
        let now = Instant::now();
        let mut balancer = Balancer::new([1, 1, 1], POLICY);
        let first = balancer.pick(now, &[]).unwrap();
        let second = balancer.pick(now, &[]).unwrap();
        let third = balancer.pick(now, &[]).unwrap();
        let mut all = vec![first, second, third];
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2], "three in flight land on three replicas");
        balancer.release(second);
        assert_eq!(balancer.pick(now, &[]).unwrap(), second, "the idle one");
    }

    #[test]
    fn weights_share_sequential_traffic() {
        let now = Instant::now();
        let mut balancer = Balancer::new([3, 1], POLICY);
        let picks = sequential(&mut balancer, now, 400);
        let heavy = picks.iter().filter(|i| **i == 0).count();
        assert_eq!(heavy, 300, "3:1 by weight");
    }

    #[test]
    fn weights_scale_the_outstanding_count() {
        let now = Instant::now();
        let mut balancer = Balancer::new([2, 1], POLICY);
        // Held in flight: the weight-2 replica takes two for every one of the other.
        let picks: Vec<usize> = (0..6).map(|_| balancer.pick(now, &[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|i| **i == 0).count(), 4, "{picks:?}");
    }

    #[test]
    fn a_retry_avoids_the_replicas_already_tried() {
        let now = Instant::now();
        let mut balancer = Balancer::new([1, 1], POLICY);
        let first = balancer.pick(now, &[]).unwrap();
        balancer.release(first);
        let retry = balancer.pick(now, &[first]).unwrap();
        assert_ne!(retry, first);
        balancer.release(retry);
        // Both tried: the retry may go back to one of them rather than fail.
        assert!(balancer.pick(now, &[0, 1]).is_ok());
    }

    #[test]
    fn consecutive_failures_eject_and_the_cool_down_brings_back() {
        let now = Instant::now();
        let mut balancer = Balancer::new([1, 1], POLICY);
        assert!(!balancer.failed(1, now));
        assert!(
            balancer.failed(1, now),
            "the second failure in a row ejects"
        );
        assert!(!balancer.in_rotation(1, now));
        assert_eq!(sequential(&mut balancer, now, 5), [0; 5]);

        let later = now + POLICY.cool_down;
        assert!(balancer.in_rotation(1, later));
        let picks = sequential(&mut balancer, later, 4);
        assert!(picks.contains(&1), "back in rotation: {picks:?}");
        assert_eq!(
            picks.iter().filter(|i| **i == 1).count(),
            2,
            "level with the others, not flooded to catch up: {picks:?}"
        );
    }

    #[test]
    fn a_success_clears_the_record() {
        let now = Instant::now();
        let mut balancer = Balancer::new([1], POLICY);
        assert!(!balancer.failed(0, now));
        balancer.succeeded(0);
        assert!(!balancer.failed(0, now), "the count started over");
    }

    #[test]
    fn a_returning_replica_that_fails_again_is_ejected_at_once() {
        let now = Instant::now();
        let mut balancer = Balancer::new([1], POLICY);
        balancer.failed(0, now);
        assert!(balancer.failed(0, now));
        let later = now + POLICY.cool_down;
        let i = balancer.pick(later, &[]).unwrap();
        balancer.release(i);
        assert!(
            balancer.failed(0, later),
            "half open: one failure is enough"
        );
        assert!(!balancer.in_rotation(0, later));
    }

    #[test]
    fn with_every_replica_ejected_the_wait_is_known() {
        let now = Instant::now();
        let mut balancer = Balancer::new([1, 1], POLICY);
        for i in [0, 1] {
            balancer.failed(i, now);
            balancer.failed(i, now);
        }
        let soon = now + Duration::from_secs(4);
        assert_eq!(
            balancer.pick(soon, &[]),
            Err(AllEjected {
                retry_after: Duration::from_secs(6)
            })
        );
    }

    #[test]
    fn a_zero_threshold_never_ejects() {
        let now = Instant::now();
        let mut balancer = Balancer::new(
            [1],
            EjectionPolicy {
                after: 0,
                cool_down: Duration::from_secs(1),
            },
        );
        for _ in 0..10 {
            assert!(!balancer.failed(0, now));
        }
        assert!(balancer.pick(now, &[]).is_ok());
    }
}
