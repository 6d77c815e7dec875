//! Turning token vectors into one sentence vector, as sentence-transformers' `Pooling` module
//! does: the modes, their configuration file (`1_Pooling/config.json`, in both its legacy
//! `pooling_mode_*` form and the newer `pooling_mode` form) and the arithmetic itself.
//!
//! Pooling runs on the host over the encoder's output: it is a few additions per value, and as a
//! pure function over slices it is tested here without a model.

use serde::Deserialize;

/// One way of pooling token vectors. Several modes are concatenated, in the order
/// sentence-transformers concatenates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token (`[CLS]`).
    Cls,
    /// The element-wise maximum over real tokens.
    Max,
    /// The mean over real tokens.
    Mean,
    /// The sum over real tokens divided by the square root of their count.
    MeanSqrtLen,
    /// The mean over real tokens weighted by position (1, 2, 3, ...).
    WeightedMean,
    /// The last real token.
    LastToken,
}

impl PoolingMode {
    /// The modes in the order of sentence-transformers' legacy `pooling_mode_*` keys, which is
    /// also the order it concatenates them in.
    const LEGACY_KEYS: [(&'static str, PoolingMode); 6] = [
        ("pooling_mode_cls_token", Self::Cls),
        ("pooling_mode_max_tokens", Self::Max),
        ("pooling_mode_mean_tokens", Self::Mean),
        ("pooling_mode_mean_sqrt_len_tokens", Self::MeanSqrtLen),
        ("pooling_mode_weightedmean_tokens", Self::WeightedMean),
        ("pooling_mode_lasttoken", Self::LastToken),
    ];

    /// The mode named as in sentence-transformers' `pooling_mode`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "cls" => Self::Cls,
            "max" => Self::Max,
            "mean" => Self::Mean,
            "mean_sqrt_len_tokens" => Self::MeanSqrtLen,
            "weightedmean" => Self::WeightedMean,
            "lasttoken" => Self::LastToken,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Max => "max",
            Self::Mean => "mean",
            Self::MeanSqrtLen => "mean_sqrt_len_tokens",
            Self::WeightedMean => "weightedmean",
            Self::LastToken => "lasttoken",
        }
    }
}

/// The pooling a model was trained with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    modes: Vec<PoolingMode>,
}

/// Why a pooling configuration was not understood.
#[derive(Debug, thiserror::Error)]
pub enum PoolingConfigError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "unknown pooling mode `{0}` (known: cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken)"
    )]
    UnknownMode(String),
    #[error("`pooling_mode` names no mode")]
    NoMode,
}

/// `pooling_mode` is one name or a list of names.
#[derive(Deserialize)]
#[serde(untagged)]
enum ModeNames {
    One(String),
    Several(Vec<String>),
}

impl Pooling {
    /// Pooling with these modes, concatenated in this order.
    pub fn new(modes: Vec<PoolingMode>) -> Option<Self> {
        (!modes.is_empty()).then_some(Self { modes })
    }

    pub fn modes(&self) -> &[PoolingMode] {
        &self.modes
    }

    /// Parses `1_Pooling/config.json`. The newer `pooling_mode` key wins over the legacy
    /// booleans; with neither, sentence-transformers pools by mean, and so does this.
    pub fn from_config_json(json: &str) -> Result<Self, PoolingConfigError> {
        let config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)?;
        if let Some(value) = config.get("pooling_mode") {
            let names = match ModeNames::deserialize(value)? {
                ModeNames::One(name) => vec![name],
                ModeNames::Several(names) => names,
            };
            let modes = names
                .iter()
                .map(|name| {
                    PoolingMode::from_name(name)
                        .ok_or_else(|| PoolingConfigError::UnknownMode(name.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Self::new(modes).ok_or(PoolingConfigError::NoMode);
        }
        let modes: Vec<PoolingMode> = PoolingMode::LEGACY_KEYS
            .iter()
            .filter(|(key, _)| config.get(*key).and_then(|v| v.as_bool()) == Some(true))
            .map(|(_, mode)| *mode)
            .collect();
        Ok(Self::new(modes).unwrap_or_else(|| Self {
            modes: vec![PoolingMode::Mean],
        }))
    }

    /// Length of a pooled vector over token vectors of `hidden` values.
    pub fn output_dimension(&self, hidden: usize) -> usize {
        self.modes.len() * hidden
    }

    /// Pools one sequence: `tokens` holds `mask.len()` token vectors of `hidden` values each,
    /// row after row; `mask` is 1 for real tokens and 0 for padding. Padding is on the right.
    pub fn pool(&self, tokens: &[f32], hidden: usize, mask: &[u32]) -> Vec<f32> {
        debug_assert_eq!(tokens.len(), hidden * mask.len());
        let mut out = Vec::with_capacity(self.output_dimension(hidden));
        let rows = || {
            tokens
                .chunks_exact(hidden)
                .zip(mask)
                .filter(|(_, m)| **m != 0)
                .map(|(row, _)| row)
        };
        let real = mask.iter().filter(|m| **m != 0).count();
        for mode in &self.modes {
            match mode {
                PoolingMode::Cls => {
                    // sentence-transformers takes the first real token, which with padding on the
                    // right is position 0 whatever the mask says.
                    let first = mask.iter().position(|m| *m != 0).unwrap_or(0);
                    out.extend_from_slice(&tokens[first * hidden..(first + 1) * hidden]);
                }
                PoolingMode::LastToken => match mask.iter().rposition(|m| *m != 0) {
                    Some(last) => {
                        out.extend_from_slice(&tokens[last * hidden..(last + 1) * hidden])
                    }
                    // No real token at all: sentence-transformers gathers the masked (zeroed)
                    // last position.
                    None => out.extend(std::iter::repeat_n(0.0, hidden)),
                },
                PoolingMode::Max => {
                    let mut max = vec![f32::NEG_INFINITY; hidden];
                    for row in rows() {
                        for (m, v) in max.iter_mut().zip(row) {
                            *m = m.max(*v);
                        }
                    }
                    out.extend(max);
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    let sum = weighted_sum(rows().map(|row| (row, 1.0)), hidden);
                    // Clamped like sentence-transformers, so an all-padding row gives zeros.
                    let count = (real as f32).max(1e-9);
                    let divisor = if *mode == PoolingMode::Mean {
                        count
                    } else {
                        count.sqrt()
                    };
                    out.extend(sum.into_iter().map(|s| s / divisor));
                }
                PoolingMode::WeightedMean => {
                    let weighted = tokens
                        .chunks_exact(hidden)
                        .zip(mask)
                        .enumerate()
                        .filter(|(_, (_, m))| **m != 0)
                        .map(|(position, (row, _))| (row, (position + 1) as f32));
                    let total: f32 = mask
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| **m != 0)
                        .map(|(position, _)| (position + 1) as f32)
                        .sum();
                    let sum = weighted_sum(weighted, hidden);
                    out.extend(sum.into_iter().map(|s| s / total.max(1e-9)));
                }
            }
        }
        out
    }
}

fn weighted_sum<'a>(rows: impl Iterator<Item = (&'a [f32], f32)>, hidden: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; hidden];
    for (row, weight) in rows {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += v * weight;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three token vectors of two values; the third is padding.
    const TOKENS: [f32; 6] = [1.0, -2.0, 3.0, 4.0, 100.0, 100.0];
    const MASK: [u32; 3] = [1, 1, 0];

    fn pooled(modes: &[PoolingMode]) -> Vec<f32> {
        Pooling::new(modes.to_vec())
            .unwrap()
            .pool(&TOKENS, 2, &MASK)
    }

    #[test]
    fn padding_never_reaches_a_pooled_vector() {
        assert_eq!(pooled(&[PoolingMode::Mean]), vec![2.0, 1.0]);
        assert_eq!(pooled(&[PoolingMode::Max]), vec![3.0, 4.0]);
        assert_eq!(pooled(&[PoolingMode::LastToken]), vec![3.0, 4.0]);
        assert_eq!(pooled(&[PoolingMode::Cls]), vec![1.0, -2.0]);
        let sqrt2 = 2f32.sqrt();
        assert_eq!(
            pooled(&[PoolingMode::MeanSqrtLen]),
            vec![4.0 / sqrt2, 2.0 / sqrt2]
        );
        // Weights 1 and 2 over a total of 3.
        assert_eq!(
            pooled(&[PoolingMode::WeightedMean]),
            vec![(1.0 + 6.0) / 3.0, (-2.0 + 8.0) / 3.0]
        );
    }

    #[test]
    fn several_modes_concatenate_in_order() {
        let pooling = Pooling::new(vec![PoolingMode::Cls, PoolingMode::Mean]).unwrap();
        assert_eq!(pooling.output_dimension(2), 4);
        assert_eq!(pooling.pool(&TOKENS, 2, &MASK), vec![1.0, -2.0, 2.0, 1.0]);
    }

    #[test]
    fn reads_both_config_forms() {
        let legacy = r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false}"#;
        assert_eq!(
            Pooling::from_config_json(legacy).unwrap().modes(),
            &[PoolingMode::Mean]
        );
        // Legacy keys concatenate in sentence-transformers' fixed order, not the file's.
        let legacy_two = r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#;
        assert_eq!(
            Pooling::from_config_json(legacy_two).unwrap().modes(),
            &[PoolingMode::Cls, PoolingMode::Mean]
        );
        let none = r#"{"word_embedding_dimension": 8}"#;
        assert_eq!(
            Pooling::from_config_json(none).unwrap().modes(),
            &[PoolingMode::Mean]
        );
        let modern =
            r#"{"embedding_dimension": 8, "pooling_mode": "lasttoken", "include_prompt": true}"#;
        assert_eq!(
            Pooling::from_config_json(modern).unwrap().modes(),
            &[PoolingMode::LastToken]
        );
        let list = r#"{"pooling_mode": ["max", "cls"], "pooling_mode_mean_tokens": true}"#;
        assert_eq!(
            Pooling::from_config_json(list).unwrap().modes(),
            &[PoolingMode::Max, PoolingMode::Cls]
        );
    }

    #[test]
    fn rejects_unknown_modes() {
        let err = Pooling::from_config_json(r#"{"pooling_mode": "median"}"#).unwrap_err();
        assert!(err.to_string().contains("`median`"), "{err}");
        assert!(Pooling::from_config_json(r#"{"pooling_mode": []}"#).is_err());
        assert!(Pooling::from_config_json("not json").is_err());
    }
}
