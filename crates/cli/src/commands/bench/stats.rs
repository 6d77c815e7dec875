//! Latency percentiles.

use std::time::Duration;

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; zeros for no samples.
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            micros(samples[rank - 1])
        };
        let sum: Duration = samples.iter().sum();
        Self {
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            mean_us: micros(sum) / samples.len() as f64,
        }
    }
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
        assert_eq!(Percentiles::of(&mut []).p50_us, 0.0);
    }
}
