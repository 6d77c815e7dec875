//! Sampling and stopping parameters shared by chat and text completions: their OpenAI shapes,
//! their ranges, and their conversion to the contract's messages. Each error names its param.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use passerelle_proto::llm::{SamplingParams, StoppingCriteria};
use serde::Deserialize;

use crate::error::ApiError;

/// Most choices one request may ask for; each holds a slot in the service's batch.
pub const MAX_N: u32 = 16;
/// Most stop sequences, as in OpenAI's API.
pub const MAX_STOP: usize = 4;
/// Most `logit_bias` entries; bounds the work each sampling step does for one request.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with the request's usage (and `usage: null` on the others).
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both completion APIs accept, gathered from either request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u32>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub seed: Option<i64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
}

impl Sampling {
    /// Validates every field and builds the contract's message.
    pub(crate) fn into_proto(self) -> Result<SamplingParams, ApiError> {
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_N).contains(&n) => n,
            Some(n) => {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("`n` must be between 1 and {MAX_N}, got {n}."),
                ));
            }
        };
        let top_k = match self.top_k {
            None => None,
            // -1 is vLLM's spelling of "disabled", 0 the contract's.
            Some(-1 | 0) => Some(0),
            Some(k) => Some(u32::try_from(k).map_err(|_| {
                ApiError::invalid_param(
                    "top_k",
                    format!("`top_k` must be -1 (disabled) or a positive integer, got {k}."),
                )
            })?),
        };
        let repetition_penalty = match self.repetition_penalty {
            Some(p) if !(p > 0.0 && p <= 2.0) => {
                return Err(ApiError::invalid_param(
                    "repetition_penalty",
                    format!("`repetition_penalty` must be greater than 0 and at most 2, got {p}."),
                ));
            }
            p => p.map(|p| p as f32),
        };
        Ok(SamplingParams {
            temperature: in_range(self.temperature, 0.0..=2.0, "temperature")?,
            top_p: in_range(self.top_p, 0.0..=1.0, "top_p")?,
            top_k,
            min_p: in_range(self.min_p, 0.0..=1.0, "min_p")?,
            presence_penalty: in_range(self.presence_penalty, -2.0..=2.0, "presence_penalty")?
                .unwrap_or(0.0),
            frequency_penalty: in_range(self.frequency_penalty, -2.0..=2.0, "frequency_penalty")?
                .unwrap_or(0.0),
            repetition_penalty,
            logit_bias: logit_bias(self.logit_bias)?,
            // OpenAI seeds are signed; the bit pattern keeps distinct seeds distinct.
            seed: self.seed.map(|s| s as u64),
            n,
        })
    }
}

/// `max_tokens` (or `max_completion_tokens`) and `stop`, validated.
pub(crate) fn stopping(
    max_tokens: Option<(u32, &'static str)>,
    stop: Option<Stop>,
) -> Result<StoppingCriteria, ApiError> {
    if let Some((0, param)) = max_tokens {
        return Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be at least 1."),
        ));
    }
    let stop = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "`stop` may hold at most {MAX_STOP} sequences, got {}.",
                stop.len()
            ),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "`stop` sequences must not be empty.",
        ));
    }
    Ok(StoppingCriteria {
        max_tokens: max_tokens.map(|(n, _)| n),
        stop,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
    })
}

fn in_range(
    value: Option<f64>,
    range: RangeInclusive<f64>,
    param: &'static str,
) -> Result<Option<f32>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if range.contains(&v) => Ok(Some(v as f32)),
        Some(v) => Err(ApiError::invalid_param(
            param,
            format!(
                "`{param}` must be between {} and {}, got {v}.",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// OpenAI sends token ids as JSON object keys, so strings; the contract wants numbers.
fn logit_bias(bias: Option<HashMap<String, f64>>) -> Result<HashMap<u32, f32>, ApiError> {
    let Some(bias) = bias else {
        return Ok(HashMap::new());
    };
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid_param(
            "logit_bias",
            format!(
                "`logit_bias` may hold at most {MAX_LOGIT_BIAS} entries, got {}.",
                bias.len()
            ),
        ));
    }
    bias.into_iter()
        .map(|(token, value)| {
            let id: u32 = token.trim().parse().map_err(|_| {
                ApiError::invalid_param("logit_bias", format!("`logit_bias` keys must be token ids, got {token:?}."))
            })?;
            if !(-100.0..=100.0).contains(&value) {
                return Err(ApiError::invalid_param(
                    "logit_bias",
                    format!("`logit_bias` values must be between -100 and 100, got {value} for token {id}."),
                ));
            }
            Ok((id, value as f32))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        match result.unwrap_err() {
            ApiError::InvalidRequest {
                param: Some(param), ..
            } => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_leave_the_model_in_charge() {
        let p = Sampling::default().into_proto().unwrap();
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.min_p, p.seed),
            (None, None, None, None, None)
        );
        assert_eq!(
            (p.n, p.presence_penalty, p.frequency_penalty),
            (1, 0.0, 0.0)
        );
        assert!(p.logit_bias.is_empty());
    }

    #[test]
    fn every_range_is_enforced_and_named() {
        type Set = fn(&mut Sampling, f64);
        let cases: [(&str, Set, f64, f64, f64); 5] = [
            (
                "temperature",
                |s, v| s.temperature = Some(v),
                0.0,
                2.0,
                2.01,
            ),
            ("top_p", |s, v| s.top_p = Some(v), 0.0, 1.0, 1.01),
            ("min_p", |s, v| s.min_p = Some(v), 0.0, 1.0, -0.01),
            (
                "presence_penalty",
                |s, v| s.presence_penalty = Some(v),
                -2.0,
                2.0,
                2.5,
            ),
            (
                "frequency_penalty",
                |s, v| s.frequency_penalty = Some(v),
                -2.0,
                2.0,
                -2.5,
            ),
        ];
        for (param, set, low, high, bad) in cases {
            for ok in [low, high] {
                let mut s = Sampling::default();
                set(&mut s, ok);
                assert!(s.into_proto().is_ok(), "{param}={ok} rejected");
            }
            let mut s = Sampling::default();
            set(&mut s, bad);
            assert_eq!(param_of(s.into_proto()), param);
        }
    }

    #[test]
    fn n_must_be_between_1_and_max() {
        for bad in [0, MAX_N + 1] {
            let s = Sampling {
                n: Some(bad),
                ..Default::default()
            };
            assert_eq!(param_of(s.into_proto()), "n");
        }
        let s = Sampling {
            n: Some(MAX_N),
            ..Default::default()
        };
        assert_eq!(s.into_proto().unwrap().n, MAX_N);
    }

    #[test]
    fn top_k_accepts_disabled_spellings() {
        for (k, want) in [(-1, 0), (0, 0), (40, 40)] {
            let s = Sampling {
                top_k: Some(k),
                ..Default::default()
            };
            assert_eq!(s.into_proto().unwrap().top_k, Some(want));
        }
        let s = Sampling {
            top_k: Some(-2),
            ..Default::default()
        };
        assert_eq!(param_of(s.into_proto()), "top_k");
    }

    #[test]
    fn repetition_penalty_must_be_positive() {
        for bad in [0.0, -1.0, 2.5] {
            let s = Sampling {
                repetition_penalty: Some(bad),
                ..Default::default()
            };
            assert_eq!(param_of(s.into_proto()), "repetition_penalty");
        }
        let s = Sampling {
            repetition_penalty: Some(1.1),
            ..Default::default()
        };
        assert!(s.into_proto().is_ok());
    }

    #[test]
    fn logit_bias_keys_become_token_ids() {
        let bias = |pairs: &[(&str, f64)]| Sampling {
            logit_bias: Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
            ..Default::default()
        };
        let p = bias(&[("50256", -100.0), ("7", 100.0)])
            .into_proto()
            .unwrap();
        assert_eq!(p.logit_bias[&50256], -100.0);
        assert_eq!(p.logit_bias[&7], 100.0);
        assert_eq!(param_of(bias(&[("abc", 1.0)]).into_proto()), "logit_bias");
        assert_eq!(param_of(bias(&[("-1", 1.0)]).into_proto()), "logit_bias");
        assert_eq!(param_of(bias(&[("1", 100.5)]).into_proto()), "logit_bias");
    }

    #[test]
    fn negative_seeds_are_kept_distinct() {
        let s = Sampling {
            seed: Some(-1),
            ..Default::default()
        };
        assert_eq!(s.into_proto().unwrap().seed, Some(u64::MAX));
    }

    #[test]
    fn stop_and_max_tokens() {
        let s = stopping(Some((16, "max_tokens")), Some(Stop::One("\n".into()))).unwrap();
        assert_eq!((s.max_tokens, s.stop), (Some(16), vec!["\n".to_owned()]));
        assert_eq!(
            param_of(stopping(Some((0, "max_tokens")), None)),
            "max_tokens"
        );
        assert_eq!(
            param_of(stopping(Some((0, "max_completion_tokens")), None)),
            "max_completion_tokens"
        );
        let five = Stop::Many((0..5).map(|i| i.to_string()).collect());
        assert_eq!(param_of(stopping(None, Some(five))), "stop");
        assert_eq!(
            param_of(stopping(None, Some(Stop::One(String::new())))),
            "stop"
        );
        assert_eq!(
            stopping(None, Some(Stop::Many(vec!["a".into(); 4])))
                .unwrap()
                .stop
                .len(),
            4
        );
    }
}
