//! The rate-limit arithmetic, free of I/O and clocks: both backends use it (the Redis Lua scripts
//! mirror it line for line, see `scripts/`).
//!
//! Each per-minute limit is a leaky bucket, the continuous form of GCRA: the bucket's level is
//! what was used, it drains at `limit` per minute, and it holds at most a minute's worth. Unlike a
//! fixed window there is no boundary at which twice the limit can pass, and the state is two
//! numbers. Requests go in one at a time before they run, and a request is admitted when it fits
//! under the limit. Tokens are only known after the response, so they go in afterwards, and a
//! request is admitted while the token level is under the limit: a principal can overshoot by one
//! response, and then waits for the level to drain below the limit again.

use std::time::Duration;

use super::AdaptiveConfig;
use super::headers::WindowState;

/// The window every limit is expressed over: a minute.
const WINDOW_US: f64 = 60_000_000.0;
/// Float drift must not refuse a request that fits exactly.
const EPSILON: f64 = 1e-6;

/// A leaky bucket's stored state: its level when last touched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Bucket {
    pub level: f64,
    /// Microseconds on the backend's clock.
    pub updated_us: u64,
}

impl Bucket {
    /// The level at `now_us`, after draining at `limit` per minute since the last update.
    pub(crate) fn level_at(&self, limit: u32, now_us: u64) -> f64 {
        let elapsed = now_us.saturating_sub(self.updated_us) as f64;
        (self.level - elapsed * per_us(limit)).max(0.0)
    }

    /// The bucket drained to `now_us` with `amount` added.
    pub(crate) fn add(&self, limit: u32, now_us: u64, amount: f64) -> Self {
        Self {
            level: self.level_at(limit, now_us) + amount,
            updated_us: now_us.max(self.updated_us),
        }
    }

    /// How long until the bucket is empty again, for expiring idle state.
    pub(crate) fn drained_in(&self, limit: u32, now_us: u64) -> Duration {
        micros(self.level_at(limit, now_us) / per_us(limit))
    }
}

/// What one limit says about a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub admit: bool,
    /// When refused, how long until it would be admitted.
    pub retry_after: Duration,
    /// The window as it will be once the request is counted (or as it is, when refused).
    pub window: WindowState,
}

/// A request costs one unit of the request bucket, and must fit under the limit.
pub(crate) fn check_request(level: f64, limit: u32) -> Verdict {
    let after = level + 1.0;
    let limit_f = f64::from(limit);
    if after <= limit_f + EPSILON {
        Verdict {
            admit: true,
            retry_after: Duration::ZERO,
            window: window(after, limit),
        }
    } else {
        Verdict {
            admit: false,
            retry_after: micros((after - limit_f) / per_us(limit)),
            window: window(level, limit),
        }
    }
}

/// Tokens are counted after the response, so a request only needs the level under the limit.
pub(crate) fn check_tokens(level: f64, limit: u32) -> Verdict {
    let limit_f = f64::from(limit);
    if level < limit_f {
        Verdict {
            admit: true,
            retry_after: Duration::ZERO,
            window: window(level, limit),
        }
    } else {
        Verdict {
            admit: false,
            retry_after: micros((level - limit_f) / per_us(limit)).max(Duration::from_micros(1)),
            window: window(level, limit),
        }
    }
}

/// The client's view of a bucket at `level`.
pub(crate) fn window(level: f64, limit: u32) -> WindowState {
    let remaining = (f64::from(limit) - level).max(0.0).floor();
    WindowState {
        limit,
        // Bounded by `limit`, a u32.
        remaining: remaining as u32,
        reset: micros(level / per_us(limit)),
    }
}

/// The adaptive tier of a principal with `violations` recent safety violations: 0 below the
/// threshold, then one more per threshold reached, up to the configured maximum.
pub(crate) fn tier(violations: u64, config: &AdaptiveConfig) -> u32 {
    let threshold = u64::from(config.threshold.max(1));
    let tier = violations / threshold;
    u32::try_from(tier).unwrap_or(u32::MAX).min(config.max_tier)
}

/// A limit halved once per tier, never below 1.
pub(crate) fn scaled(limit: u32, tier: u32) -> u32 {
    limit.checked_shr(tier).unwrap_or(0).max(1)
}

fn per_us(limit: u32) -> f64 {
    f64::from(limit.max(1)) / WINDOW_US
}

fn micros(us: f64) -> Duration {
    if us.is_finite() && us > 0.0 {
        Duration::from_micros(us.ceil() as u64)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    #[test]
    fn a_full_minute_of_requests_passes_then_the_next_waits_one_interval() {
        let limit = 60;
        let mut bucket = Bucket::default();
        for i in 0..60 {
            let verdict = check_request(bucket.level_at(limit, 0), limit);
            assert!(verdict.admit, "request {i}");
            assert_eq!(verdict.window.remaining, 59 - i);
            bucket = bucket.add(limit, 0, 1.0);
        }
        let refused = check_request(bucket.level_at(limit, 0), limit);
        assert!(!refused.admit);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.window.remaining, 0);
        assert_eq!(refused.window.reset, Duration::from_secs(60));
        // One interval later exactly one more fits.
        let later = check_request(bucket.level_at(limit, SECOND), limit);
        assert!(later.admit);
        assert_eq!(later.window.remaining, 0);
    }

    #[test]
    fn the_reset_is_the_time_to_drain_to_empty() {
        let bucket = Bucket::default().add(10, 0, 1.0);
        assert_eq!(
            window(bucket.level_at(10, 0), 10).reset,
            Duration::from_secs(6)
        );
        assert_eq!(bucket.drained_in(10, 3 * SECOND), Duration::from_secs(3));
        assert_eq!(bucket.level_at(10, 7 * SECOND), 0.0);
    }

    #[test]
    fn tokens_admit_under_the_limit_and_wait_out_an_overshoot() {
        let limit = 600; // ten per second
        assert!(check_tokens(599.0, limit).admit);
        let over = check_tokens(700.0, limit);
        assert!(!over.admit);
        // 100 tokens over, at ten per second.
        assert_eq!(over.retry_after, Duration::from_secs(10));
        assert_eq!(
            check_tokens(600.0, limit).retry_after,
            Duration::from_micros(1)
        );
        assert_eq!(over.window.remaining, 0);
        assert_eq!(over.window.reset, Duration::from_secs(70));
    }

    #[test]
    fn tiers_halve_the_limit_down_to_one() {
        let config = AdaptiveConfig {
            threshold: 3,
            window: Duration::from_secs(600),
            max_tier: 4,
        };
        assert_eq!(tier(2, &config), 0);
        assert_eq!(tier(3, &config), 1);
        assert_eq!(tier(6, &config), 2);
        assert_eq!(tier(1000, &config), 4);
        assert_eq!(scaled(60, 0), 60);
        assert_eq!(scaled(60, 1), 30);
        assert_eq!(scaled(60, 4), 3);
        assert_eq!(scaled(3, 4), 1);
        assert_eq!(scaled(60, 40), 1);
    }

    #[test]
    fn a_clock_going_backwards_does_not_refill() {
        let bucket = Bucket {
            level: 5.0,
            updated_us: 10 * SECOND,
        };
        assert_eq!(bucket.level_at(60, 5 * SECOND), 5.0);
        assert_eq!(bucket.add(60, 5 * SECOND, 1.0).updated_us, 10 * SECOND);
    }
}
