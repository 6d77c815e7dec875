//! Choosing the next token from logits, with OpenAI/vLLM semantics. Pure: no I/O, no model, a
//! seeded RNG, so every rule is a plain `#[test]`.
//!
//! Order of operations (vLLM's): logit bias, repetition penalty (prompt and output tokens),
//! frequency and presence penalties (output tokens), then greedy argmax when the temperature is
//! zero, or temperature scaling, top-k, top-p, min-p and a draw from what is left. Logprobs are
//! the log-softmax of the distribution the token was drawn from.

use std::collections::{HashMap, HashSet};

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Temperatures below this are greedy: dividing by them would overflow.
const GREEDY_BELOW: f32 = 1e-5;

/// Sampling values a request falls back to when it leaves them unset: the model's
/// `generation_config.json` when it has one, otherwise OpenAI's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables.
    pub top_k: u32,
    pub min_p: f32,
    pub repetition_penalty: f32,
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
        }
    }
}

/// Fully resolved sampling settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// 1.0 disables.
    pub repetition_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// `None` draws a fresh seed from the OS.
    pub seed: Option<u64>,
    /// `Some(n)`: return the sampled token's logprob and the `n` most likely alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
        }
    }
}

/// One chosen token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprobs: Option<Logprobs>,
}

/// Log probabilities at one position.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    /// Of the sampled token.
    pub logprob: f32,
    /// The most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// The sampling state of one sequence: settings, RNG and the tokens seen so far.
#[derive(Debug)]
pub struct Sampler {
    config: SamplerConfig,
    rng: StdRng,
    output_counts: HashMap<u32, u32>,
    seen: HashSet<u32>,
}

impl Sampler {
    /// A sampler for a sequence starting with `prompt`.
    pub fn new(config: SamplerConfig, prompt: &[u32]) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let seen = if config.repetition_penalty == 1.0 {
            HashSet::new()
        } else {
            prompt.iter().copied().collect()
        };
        Self {
            config,
            rng,
            output_counts: HashMap::new(),
            seen,
        }
    }

    /// Chooses the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        self.apply_penalties(logits);
        let (token, distribution) = if self.config.temperature < GREEDY_BELOW {
            (argmax(logits), Distribution::Logits)
        } else {
            let probs = self.filtered_probs(logits);
            (self.draw(&probs), Distribution::Probs(probs))
        };
        let logprobs = self.config.logprobs.map(|top_n| {
            let all = match &distribution {
                Distribution::Logits => log_softmax(logits),
                Distribution::Probs(probs) => probs.iter().map(|p| p.ln()).collect(),
            };
            Logprobs {
                logprob: all[token as usize],
                top: top_n_finite(&all, top_n),
            }
        });
        *self.output_counts.entry(token).or_default() += 1;
        if self.config.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
        Sampled { token, logprobs }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        for &(id, bias) in &self.config.logit_bias {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit += bias;
            }
        }
        let penalty = self.config.repetition_penalty;
        if penalty != 1.0 {
            for &id in &self.seen {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit = if *logit > 0.0 {
                        *logit / penalty
                    } else {
                        *logit * penalty
                    };
                }
            }
        }
        let (frequency, presence) = (self.config.frequency_penalty, self.config.presence_penalty);
        if frequency != 0.0 || presence != 0.0 {
            for (&id, &count) in &self.output_counts {
                if let Some(logit) = logits.get_mut(id as usize) {
                    *logit -= frequency * count as f32 + presence;
                }
            }
        }
    }

    /// Temperature, top-k, top-p and min-p, as normalised probabilities (0 for dropped tokens).
    fn filtered_probs(&self, logits: &[f32]) -> Vec<f32> {
        let temperature = self.config.temperature;
        let mut scaled: Vec<f32> = logits
            .iter()
            .map(|l| {
                if l.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    l / temperature
                }
            })
            .collect();
        let k = self.config.top_k;
        if k > 0 && k < scaled.len() {
            let mut sorted = scaled.clone();
            let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let threshold = *kth;
            for value in &mut scaled {
                if *value < threshold {
                    *value = f32::NEG_INFINITY;
                }
            }
        }
        let mut probs = softmax(&scaled);
        if self.config.top_p < 1.0 {
            let mut order: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
            order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let mut mass = 0.0;
            let mut keep = order.len();
            for (rank, &i) in order.iter().enumerate() {
                mass += probs[i];
                // Keep the smallest prefix whose mass reaches top_p (always at least one token).
                if mass >= self.config.top_p {
                    keep = rank + 1;
                    break;
                }
            }
            for &i in &order[keep..] {
                probs[i] = 0.0;
            }
        }
        if self.config.min_p > 0.0 {
            let max = probs.iter().copied().fold(0.0, f32::max);
            let floor = self.config.min_p * max;
            for p in &mut probs {
                if *p < floor {
                    *p = 0.0;
                }
            }
        }
        let total: f32 = probs.iter().sum();
        if total > 0.0 {
            probs.iter_mut().for_each(|p| *p /= total);
        }
        probs
    }

    fn draw(&mut self, probs: &[f32]) -> u32 {
        let target = self.rng.random::<f32>();
        let mut cumulative = 0.0;
        let mut last_nonzero = None;
        for (i, &p) in probs.iter().enumerate() {
            if p <= 0.0 {
                continue;
            }
            cumulative += p;
            last_nonzero = Some(i);
            if target < cumulative {
                return i as u32;
            }
        }
        // Rounding left the sum just under the target: the last candidate takes the remainder.
        last_nonzero.map_or_else(|| argmax(probs), |i| i as u32)
    }
}

enum Distribution {
    /// Greedy: the processed logits themselves.
    Logits,
    /// Sampled: the filtered, renormalised probabilities.
    Probs(Vec<f32>),
}

/// Index of the largest value; the first on ties; NaN never wins.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

fn softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; values.len()];
    }
    let exps: Vec<f32> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Numerically stable log-softmax.
pub fn log_softmax(values: &[f32]) -> Vec<f32> {
    let max = values
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = values
        .iter()
        .filter(|v| !v.is_nan())
        .map(|v| (v - max).exp())
        .sum();
    let log_sum = max + sum.ln();
    values
        .iter()
        .map(|v| {
            if v.is_nan() {
                f32::NEG_INFINITY
            } else {
                v - log_sum
            }
        })
        .collect()
}

/// The `n` largest finite values with their indices, largest first (lowest index on ties).
fn top_n_finite(values: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut finite: Vec<(u32, f32)> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, v)| (i as u32, *v))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if finite.len() > n {
        finite.select_nth_unstable_by(n - 1, order);
        finite.truncate(n);
    }
    finite.sort_unstable_by(order);
    finite
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            seed: Some(0),
            ..SamplerConfig::default()
        }
    }

    fn sample_once(config: SamplerConfig, prompt: &[u32], logits: &[f32]) -> Sampled {
        Sampler::new(config, prompt).sample(&mut logits.to_vec())
    }

    #[test]
    fn zero_temperature_is_argmax_with_the_first_index_on_ties() {
        assert_eq!(sample_once(greedy(), &[], &[0.1, 2.0, -1.0, 2.0]).token, 1);
        assert_eq!(argmax(&[f32::NAN, -5.0]), 1);
    }

    #[test]
    fn logit_bias_can_force_or_forbid_a_token() {
        let forced = SamplerConfig {
            logit_bias: vec![(2, 100.0)],
            ..greedy()
        };
        assert_eq!(sample_once(forced, &[], &[5.0, 4.0, 0.0]).token, 2);
        let forbidden = SamplerConfig {
            logit_bias: vec![(0, -100.0)],
            ..greedy()
        };
        assert_eq!(sample_once(forbidden, &[], &[5.0, 4.0, 0.0]).token, 1);
        let out_of_range = SamplerConfig {
            logit_bias: vec![(99, 100.0)],
            ..greedy()
        };
        assert_eq!(sample_once(out_of_range, &[], &[5.0, 4.0]).token, 0);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let config = SamplerConfig {
            repetition_penalty: 2.0,
            ..greedy()
        };
        let sampler = Sampler::new(config, &[0, 2]);
        let mut logits = vec![3.0, 2.0, -1.0];
        sampler.apply_penalties(&mut logits);
        assert_eq!(logits, vec![1.5, 2.0, -2.0]);
    }

    #[test]
    fn frequency_and_presence_penalise_generated_tokens_only() {
        let config = SamplerConfig {
            frequency_penalty: 0.5,
            presence_penalty: 1.0,
            ..greedy()
        };
        let mut sampler = Sampler::new(config, &[1]);
        // Generate token 0 twice.
        for _ in 0..2 {
            assert_eq!(sampler.sample(&mut [10.0, 0.0]).token, 0);
        }
        let mut logits = vec![10.0, 0.0];
        sampler.apply_penalties(&mut logits);
        assert_eq!(logits, vec![10.0 - (0.5 * 2.0 + 1.0), 0.0]);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut sampler = Sampler::new(
                SamplerConfig {
                    seed: Some(seed),
                    ..SamplerConfig::default()
                },
                &[],
            );
            (0..40)
                .map(|_| sampler.sample(&mut logits.clone()).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.0, 1.0, 3.0, 2.0];
        for config in [
            SamplerConfig {
                top_k: 1,
                seed: Some(1),
                ..SamplerConfig::default()
            },
            SamplerConfig {
                top_p: 1e-6,
                seed: Some(1),
                ..SamplerConfig::default()
            },
            SamplerConfig {
                min_p: 0.99,
                seed: Some(1),
                ..SamplerConfig::default()
            },
        ] {
            let mut sampler = Sampler::new(config, &[]);
            for _ in 0..20 {
                assert_eq!(sampler.sample(&mut logits.to_vec()).token, 2);
            }
        }
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let config = SamplerConfig {
            top_k: 2,
            seed: Some(3),
            ..SamplerConfig::default()
        };
        let mut sampler = Sampler::new(config, &[]);
        for _ in 0..100 {
            let token = sampler.sample(&mut [1.0, 0.9, 0.8, 0.7]).token;
            assert!(token < 2, "{token}");
        }
    }

    #[test]
    fn logprobs_come_from_the_distribution_drawn_from() {
        let config = SamplerConfig {
            logprobs: Some(2),
            ..greedy()
        };
        let sampled = sample_once(config, &[], &[0.0, 0.0, f32::ln(2.0)]);
        let lp = sampled.logprobs.unwrap();
        assert_eq!(sampled.token, 2);
        assert!((lp.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, 2);
        assert_eq!(lp.top[1].0, 0, "ties go to the lower id");

        // With top_k=1 the drawn-from distribution is certain.
        let config = SamplerConfig {
            top_k: 1,
            logprobs: Some(3),
            seed: Some(0),
            ..SamplerConfig::default()
        };
        let lp = sample_once(config, &[], &[0.0, 1.0, 0.5]).logprobs.unwrap();
        assert_eq!(lp.logprob, 0.0);
        assert_eq!(lp.top, vec![(1, 0.0)]);
    }

    #[test]
    fn log_softmax_is_normalised() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
