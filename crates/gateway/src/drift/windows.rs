//! The two samples drift compares: a baseline window, frozen once full, and a sliding window of
//! the most recent prompt embeddings.

use std::collections::VecDeque;

use serde::Serialize;

use super::ks;

/// Embeddings in arrival order, split into the baseline and the recent window.
#[derive(Debug)]
pub(crate) struct Windows {
    capacity: usize,
    baseline: Vec<Vec<f32>>,
    recent: VecDeque<Vec<f32>>,
}

/// Where collection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// The baseline is still filling; nothing to compare yet.
    CollectingBaseline,
    /// The baseline is full and the recent window holds too few samples to compare.
    CollectingRecent,
    /// Both windows are ready.
    Comparing,
}

impl Windows {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(2),
            baseline: Vec::new(),
            recent: VecDeque::new(),
        }
    }

    /// Adds one embedding: to the baseline while it fills, then to the recent window, whose
    /// oldest sample it pushes out. An embedding of another width means the embedding model
    /// changed, which makes every sample so far incomparable: collection starts over.
    pub(crate) fn push(&mut self, embedding: Vec<f32>) {
        let width = self.baseline.first().map(Vec::len);
        if width.is_some_and(|width| width != embedding.len()) {
            tracing::warn!(
                "prompt embeddings changed width; drift collection starts a new baseline"
            );
            self.baseline.clear();
            self.recent.clear();
        }
        if self.baseline.len() < self.capacity {
            self.baseline.push(embedding);
            return;
        }
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back(embedding);
    }

    /// Makes the recent window the new baseline, as after an accepted change in traffic.
    /// Returns how many samples the new baseline has.
    pub(crate) fn rebase(&mut self) -> usize {
        if self.recent.is_empty() {
            return self.baseline.len();
        }
        self.baseline = self.recent.drain(..).collect();
        self.baseline.len()
    }

    pub(crate) fn baseline_len(&self) -> usize {
        self.baseline.len()
    }

    pub(crate) fn recent_len(&self) -> usize {
        self.recent.len()
    }

    pub(crate) fn phase(&self, min_recent: usize) -> Phase {
        if self.baseline.len() < self.capacity {
            Phase::CollectingBaseline
        } else if self.recent.len() < min_recent.max(2) {
            Phase::CollectingRecent
        } else {
            Phase::Comparing
        }
    }

    /// Both windows as per-dimension columns, each sorted, ready for [`compare`]; the copy lets
    /// the caller compare without holding the lock.
    pub(crate) fn columns(&self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        (
            sorted_columns(self.baseline.iter()),
            sorted_columns(self.recent.iter()),
        )
    }
}

fn sorted_columns<'a>(rows: impl Iterator<Item = &'a Vec<f32>> + Clone) -> Vec<Vec<f32>> {
    let width = rows.clone().next().map_or(0, Vec::len);
    let mut columns: Vec<Vec<f32>> = vec![Vec::new(); width];
    for row in rows {
        for (column, value) in columns.iter_mut().zip(row) {
            column.push(*value);
        }
    }
    for column in &mut columns {
        column.sort_by(f32::total_cmp);
    }
    columns
}

/// The per-dimension two-sample KS tests between the windows, summarised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Comparison {
    /// Embedding dimensions tested.
    pub(crate) dimensions: usize,
    /// Mean KS statistic over the dimensions.
    pub(crate) mean_ks: f64,
    /// Largest KS statistic of any dimension.
    pub(crate) max_ks: f64,
    /// Share of dimensions whose test rejects "same distribution" at `alpha`: about `alpha`
    /// when nothing changed, whatever the window sizes, which is why alerts use it.
    pub(crate) rejected_share: f64,
}

/// Tests every dimension; `baseline` and `recent` are sorted columns of one width.
pub(crate) fn compare(baseline: &[Vec<f32>], recent: &[Vec<f32>], alpha: f64) -> Comparison {
    let dimensions = baseline.len().min(recent.len());
    if dimensions == 0 {
        return Comparison {
            dimensions: 0,
            mean_ks: 0.0,
            max_ks: 0.0,
            rejected_share: 0.0,
        };
    }
    let (mut sum, mut max, mut rejected) = (0.0, 0.0f64, 0usize);
    for (base, now) in baseline.iter().zip(recent) {
        let statistic = ks::statistic(base, now);
        sum += statistic;
        max = max.max(statistic);
        if ks::p_value(statistic, base.len(), now.len()) < alpha {
            rejected += 1;
        }
    }
    Comparison {
        dimensions,
        mean_ks: sum / dimensions as f64,
        max_ks: max,
        rejected_share: rejected as f64 / dimensions as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream (xorshift), so the tests need no seeded RNG crate.
    fn noise(seed: &mut u64) -> f32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 40) as f32 / (1u64 << 24) as f32
    }

    fn sample(seed: &mut u64, width: usize, shift: f32) -> Vec<f32> {
        (0..width).map(|_| noise(seed) + shift).collect()
    }

    #[test]
    fn the_baseline_fills_first_then_the_recent_window_slides() {
        let mut windows = Windows::new(3);
        for i in 0..3 {
            assert_eq!(windows.phase(2), Phase::CollectingBaseline);
            windows.push(vec![i as f32]);
        }
        assert_eq!(windows.phase(2), Phase::CollectingRecent);
        for i in 3..8 {
            windows.push(vec![i as f32]);
        }
        assert_eq!(windows.phase(2), Phase::Comparing);
        let (baseline, recent) = windows.columns();
        assert_eq!(baseline, vec![vec![0.0, 1.0, 2.0]]);
        assert_eq!(recent, vec![vec![5.0, 6.0, 7.0]]);
        assert_eq!(windows.rebase(), 3);
        assert_eq!(windows.columns().0, vec![vec![5.0, 6.0, 7.0]]);
        assert_eq!(windows.recent_len(), 0);
    }

    #[test]
    fn a_new_width_starts_over() {
        let mut windows = Windows::new(2);
        windows.push(vec![0.0, 1.0]);
        windows.push(vec![0.0]);
        assert_eq!(windows.baseline_len(), 1);
        assert_eq!(windows.columns().0, vec![vec![0.0]]);
    }

    #[test]
    fn same_distribution_rarely_rejects_and_a_shift_always_does() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut windows = Windows::new(300);
        for _ in 0..600 {
            windows.push(sample(&mut seed, 64, 0.0));
        }
        let (baseline, recent) = windows.columns();
        let same = compare(&baseline, &recent, 0.01);
        assert_eq!(same.dimensions, 64);
        assert!(same.rejected_share < 0.1, "{same:?}");
        assert!(same.mean_ks < 0.12, "{same:?}");

        for _ in 0..300 {
            windows.push(sample(&mut seed, 64, 0.2));
        }
        let (baseline, recent) = windows.columns();
        let shifted = compare(&baseline, &recent, 0.01);
        assert_eq!(shifted.rejected_share, 1.0, "{shifted:?}");
        assert!(shifted.mean_ks > 0.15, "{shifted:?}");
    }
}
