//! Percentiles of latencies and of rates.

use std::time::Duration;

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// Samples they are taken over.
    pub count: usize,
}

impl Percentiles {
    /// Nearest-rank percentiles; zeros for no samples.
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| micros(samples[rank(q, samples.len())]);
        let sum: Duration = samples.iter().sum();
        Self {
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            mean_us: micros(sum) / samples.len() as f64,
            count: samples.len(),
        }
    }
}

/// Percentiles of a set of rates, where the slow tail is the low one.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Spread {
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub mean: f64,
    pub count: usize,
}

impl Spread {
    /// Nearest-rank percentiles; zeros for no samples.
    pub fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable_by(f64::total_cmp);
        let at = |q: f64| samples[rank(q, samples.len())];
        Self {
            p10: at(0.10),
            p50: at(0.50),
            p90: at(0.90),
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
            count: samples.len(),
        }
    }
}

/// The index of the nearest-rank `q` quantile of `len` sorted samples, `len` > 0.
fn rank(q: f64, len: usize) -> usize {
    ((q * len as f64).ceil() as usize).clamp(1, len) - 1
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!((p.p50_us, p.p90_us, p.p99_us), (50.0, 90.0, 99.0));
        assert!((p.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(p.count, 100);
        assert_eq!(Percentiles::of(&mut []).p50_us, 0.0);

        let mut rates: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Spread::of(&mut rates);
        assert_eq!((s.p10, s.p50, s.p90, s.count), (1.0, 5.0, 9.0, 10));
        assert_eq!(Spread::of(&mut []).count, 0);
    }
}
