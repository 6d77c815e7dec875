//! Rotary position embeddings: the inverse frequencies of a head and the `cos`/`sin` tables of
//! a run of positions, with Llama 3's frequency divisors and Phi-3's `longrope` factors.

use candle_core::{Device, Tensor};

/// How the rotary embedding pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Dimension `i` with `i + head_dim / 2` (Hugging Face checkpoints, and llama.cpp's NEOX
    /// rotation used for Qwen and Phi-3).
    Halves,
    /// Dimension `2i` with `2i + 1` (llama.cpp's Llama, whose Q and K rows are permuted).
    Interleaved,
}

/// Llama 3.1+ long-context frequency scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl Llama3Scaling {
    /// What each inverse frequency is divided by: 1 for high frequencies, `factor` for low
    /// ones, a smooth blend between (the values llama.cpp stores as `rope_freqs.weight`).
    pub fn divisors(&self, inv_freq: &[f64]) -> Vec<f64> {
        let old = self.original_max_position_embeddings as f64;
        let low_freq_wavelen = old / self.low_freq_factor;
        let high_freq_wavelen = old / self.high_freq_factor;
        inv_freq
            .iter()
            .map(|freq| {
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                if wavelen < high_freq_wavelen {
                    1.0
                } else if wavelen > low_freq_wavelen {
                    self.factor
                } else {
                    let smooth = (old / wavelen - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - smooth) / self.factor + smooth)
                }
            })
            .collect()
    }
}

/// Phi-3's `longrope` (also spelled `su`): per-frequency extension factors, short ones for
/// positions inside the original context and long ones beyond, and a factor on `cos` and `sin`.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub original_max_position_embeddings: usize,
    pub attention_factor: f64,
}

impl LongRope {
    /// `transformers`' default attention factor for a context extended by `factor`.
    pub fn default_attention_factor(factor: f64, original_max_position_embeddings: usize) -> f64 {
        if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / (original_max_position_embeddings as f64).ln()).sqrt()
        }
    }
}

/// How the plain frequencies `theta^(-2i/d)` are changed.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Each frequency divided by its divisor (Llama 3's scaling, resolved).
    Divisors(Vec<f64>),
    LongRope(LongRope),
}

/// The rotary settings of a decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub layout: RopeLayout,
    pub scaling: Option<RopeScaling>,
}

/// The resolved rotary tables source: inverse frequencies for each regime.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    layout: RopeLayout,
    /// Frequencies of positions before `long_from` (all positions when there is no long regime).
    inv_freq: Vec<f32>,
    /// Frequencies from `long_from` on (longrope's long factors).
    long: Option<(usize, Vec<f32>)>,
    attention_factor: f32,
}

/// `theta^(-2i/d)` in f32 like `transformers`, so the two agree to the last bits, each divided
/// by `extension(i)`.
fn inv_freq(theta: f64, head_dim: usize, extension: impl Fn(usize) -> f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            let base = (theta as f32).powf(exponent);
            1.0 / (extension(i) as f32 * base)
        })
        .collect()
}

impl Rope {
    /// Resolves `config` for heads of width `head_dim`; factor lists must have `head_dim / 2`
    /// entries.
    pub(crate) fn new(config: &RopeConfig, head_dim: usize) -> candle_core::Result<Self> {
        let half = head_dim / 2;
        let check = |what: &str, len: usize| {
            if len == half {
                Ok(())
            } else {
                Err(candle_core::Error::Msg(format!(
                    "rope {what} has {len} entries, heads of width {head_dim} need {half}"
                )))
            }
        };
        let plain = || inv_freq(config.theta, head_dim, |_| 1.0);
        Ok(match &config.scaling {
            None => Self {
                layout: config.layout,
                inv_freq: plain(),
                long: None,
                attention_factor: 1.0,
            },
            Some(RopeScaling::Divisors(divisors)) => {
                check("frequency divisors", divisors.len())?;
                // Divided after the f32 frequency, as transformers' llama3 scaling does.
                let inv_freq = plain()
                    .into_iter()
                    .zip(divisors)
                    .map(|(freq, d)| (f64::from(freq) / d) as f32)
                    .collect();
                Self {
                    layout: config.layout,
                    inv_freq,
                    long: None,
                    attention_factor: 1.0,
                }
            }
            Some(RopeScaling::LongRope(rope)) => {
                check("short_factor", rope.short_factor.len())?;
                check("long_factor", rope.long_factor.len())?;
                Self {
                    layout: config.layout,
                    inv_freq: inv_freq(config.theta, head_dim, |i| rope.short_factor[i]),
                    long: Some((
                        rope.original_max_position_embeddings,
                        inv_freq(config.theta, head_dim, |i| rope.long_factor[i]),
                    )),
                    attention_factor: rope.attention_factor as f32,
                }
            }
        })
    }

    /// Whether a sequence `len` positions long rotates with the long factors.
    fn is_long(&self, len: usize) -> bool {
        self.long.as_ref().is_some_and(|(from, _)| len > *from)
    }

    /// Whether extending a sequence from `cached` to `len` positions changes its regime, so
    /// that the cached keys, rotated with the short factors, must be computed again.
    pub(crate) fn must_recompute(&self, cached: usize, len: usize) -> bool {
        cached > 0 && !self.is_long(cached) && self.is_long(len)
    }

    /// `cos` and `sin` of positions `start..start + len`, `[len, head_dim / 2]`. With longrope,
    /// the factors are those of a sequence ending at `start + len`: long ones once it outgrows
    /// the original context, as `transformers` decides it (which recomputes the whole sequence
    /// when it crosses that length; see [`Rope::must_recompute`]).
    pub(crate) fn tables(
        &self,
        start: usize,
        len: usize,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let freqs = match &self.long {
            Some((_, long)) if self.is_long(start + len) => long,
            _ => &self.inv_freq,
        };
        let half = freqs.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in start..start + len {
            for freq in freqs {
                let angle = pos as f32 * freq;
                cos.push(angle.cos() * self.attention_factor);
                sin.push(angle.sin() * self.attention_factor);
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, half), device)?,
            Tensor::from_vec(sin, (len, half), device)?,
        ))
    }

    /// Rotates `x`, `[batch, heads, len, head_dim]`, by tables from [`Rope::tables`].
    pub(crate) fn apply(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match self.layout {
            RopeLayout::Halves => candle_nn::rotary_emb::rope(x, cos, sin),
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longrope_switches_factors_once_the_sequence_outgrows_the_original_context() {
        let config = RopeConfig {
            theta: 10_000.0,
            layout: RopeLayout::Halves,
            scaling: Some(RopeScaling::LongRope(LongRope {
                short_factor: vec![1.0, 1.0],
                long_factor: vec![2.0, 4.0],
                original_max_position_embeddings: 4,
                attention_factor: 1.5,
            })),
        };
        let rope = Rope::new(&config, 4).unwrap();
        let cos = |start, len| -> Vec<Vec<f32>> {
            rope.tables(start, len, &Device::Cpu)
                .unwrap()
                .0
                .to_vec2()
                .unwrap()
        };
        // Four positions are short (plain frequencies 1 and 0.01).
        assert!((cos(3, 1)[0][0] - 3f32.cos() * 1.5).abs() < 1e-6);
        // Five are long (frequencies halved and quartered), every position of them.
        let long = cos(3, 2);
        assert!((long[0][0] - 1.5f32.cos() * 1.5).abs() < 1e-6);
        assert!((long[1][0] - 2f32.cos() * 1.5).abs() < 1e-6);
        assert!((long[1][1] - (4.0 * 0.01f32 / 4.0).cos() * 1.5).abs() < 1e-6);
        assert!(rope.must_recompute(4, 5));
        assert!(!rope.must_recompute(0, 5));
        assert!(!rope.must_recompute(5, 6));
    }

    #[test]
    fn factor_lists_must_cover_half_a_head() {
        let config = RopeConfig {
            theta: 10_000.0,
            layout: RopeLayout::Halves,
            scaling: Some(RopeScaling::Divisors(vec![1.0])),
        };
        assert!(Rope::new(&config, 8).is_err());
    }
}
