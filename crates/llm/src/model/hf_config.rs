//! A decoder's shape from a Hugging Face `config.json`, for every family served. Both rope
//! spellings are read: `rope_theta` with `rope_scaling` (transformers 4) and `rope_parameters`
//! (transformers 5).

use serde::Deserialize;

use crate::model::{
    Architecture,
    decoder::{DecoderConfig, Llama3Scaling, LongRope, RopeConfig, RopeLayout, RopeScaling},
};

/// The `config.json` fields the decoder uses, with `transformers`' defaults for optional ones.
#[derive(Debug, Deserialize)]
pub(crate) struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: usize,
    /// Phi-3's pretraining context, beside `max_position_embeddings`.
    original_max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeParameters>,
    rope_parameters: Option<RopeParameters>,
    partial_rotary_factor: Option<f64>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    /// Qwen's switch for `sliding_window`, applied from layer `max_window_layers` on.
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    /// transformers 5's per-layer attention kinds (`full_attention`, `sliding_attention`).
    layer_types: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_type: Option<String>,
    /// The older spelling of `rope_type`.
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    short_factor: Option<Vec<f64>>,
    long_factor: Option<Vec<f64>>,
    attention_factor: Option<f64>,
    partial_rotary_factor: Option<f64>,
}

impl HfConfig {
    /// The decoder config of `architecture`, or why the checkpoint cannot run here.
    pub(crate) fn into_decoder(self, architecture: Architecture) -> Result<DecoderConfig, String> {
        if let Some(act) = self.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(format!("activation `{act}` is not supported (only silu)"));
        }
        let windows = self.layer_windows(architecture);
        let rope = self.rope_parameters.or(self.rope_scaling);
        let partial = self
            .partial_rotary_factor
            .or_else(|| rope.as_ref().and_then(|r| r.partial_rotary_factor))
            .unwrap_or(1.0);
        if partial != 1.0 {
            return Err(format!(
                "partial rotary embeddings (partial_rotary_factor {partial}) are not supported"
            ));
        }
        let theta = self
            .rope_theta
            .or_else(|| rope.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(10_000.0);
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1));
        let scaling = match rope {
            None => None,
            Some(r) => scaling(
                r,
                theta,
                head_dim,
                self.max_position_embeddings,
                self.original_max_position_embeddings,
            )?,
        };
        Ok(DecoderConfig {
            architecture,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope: RopeConfig {
                theta,
                layout: RopeLayout::Halves,
                scaling,
            },
            layer_windows: windows,
        })
    }

    /// Which layers attend through `sliding_window`, as `transformers` decides it.
    fn layer_windows(&self, architecture: Architecture) -> Vec<Option<usize>> {
        let Some(window) = self.sliding_window else {
            return Vec::new();
        };
        let layers = self.num_hidden_layers;
        if let Some(types) = &self.layer_types {
            return types
                .iter()
                .map(|t| (t == "sliding_attention").then_some(window))
                .collect();
        }
        match architecture {
            Architecture::Phi3 => vec![Some(window); layers],
            Architecture::Qwen2 | Architecture::Qwen3 if self.use_sliding_window == Some(true) => {
                let from = self.max_window_layers.unwrap_or(layers);
                (0..layers).map(|l| (l >= from).then_some(window)).collect()
            }
            Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Llama => Vec::new(),
        }
    }
}

fn scaling(
    r: RopeParameters,
    theta: f64,
    head_dim: usize,
    max_position_embeddings: usize,
    original_max_position_embeddings: Option<usize>,
) -> Result<Option<RopeScaling>, String> {
    Ok(match r.rope_type.as_deref().or(r.kind.as_deref()) {
        None | Some("default") => None,
        Some("llama3") => {
            let scaling = Llama3Scaling {
                factor: r.factor.ok_or("llama3 rope scaling without `factor`")?,
                low_freq_factor: r.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: r.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: r
                    .original_max_position_embeddings
                    .unwrap_or(8192),
            };
            let plain: Vec<f64> = (0..head_dim / 2)
                .map(|i| {
                    let exponent = (2 * i) as f32 / head_dim as f32;
                    f64::from(1.0 / (theta as f32).powf(exponent))
                })
                .collect();
            Some(RopeScaling::Divisors(scaling.divisors(&plain)))
        }
        Some("longrope" | "su") => {
            let original = r
                .original_max_position_embeddings
                .or(original_max_position_embeddings)
                .unwrap_or(max_position_embeddings);
            let factor = r
                .factor
                .unwrap_or(max_position_embeddings as f64 / original as f64);
            Some(RopeScaling::LongRope(LongRope {
                short_factor: r
                    .short_factor
                    .ok_or("longrope scaling without `short_factor`")?,
                long_factor: r
                    .long_factor
                    .ok_or("longrope scaling without `long_factor`")?,
                original_max_position_embeddings: original,
                attention_factor: r
                    .attention_factor
                    .unwrap_or_else(|| LongRope::default_attention_factor(factor, original)),
            }))
        }
        Some(other) => return Err(format!("rope scaling `{other}` is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, architecture: Architecture) -> Result<DecoderConfig, String> {
        serde_json::from_str::<HfConfig>(json)
            .unwrap()
            .into_decoder(architecture)
    }

    const BASE: &str = r#""hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 128"#;

    #[test]
    fn unused_qwen_sliding_windows_are_plain_causal() {
        let config = parse(
            &format!(r#"{{{BASE}, "sliding_window": 4, "use_sliding_window": false}}"#),
            Architecture::Qwen2,
        )
        .unwrap();
        assert_eq!(config.window(0), None);
        assert_eq!(config.num_kv_heads, 2);
        let config = parse(
            &format!(
                r#"{{{BASE}, "sliding_window": 4, "use_sliding_window": true, "max_window_layers": 1}}"#
            ),
            Architecture::Qwen2,
        )
        .unwrap();
        assert_eq!((config.window(0), config.window(1)), (None, Some(4)));
    }

    #[test]
    fn phi3_windows_every_layer_and_reads_longrope_in_both_spellings() {
        let old = parse(
            &format!(
                r#"{{{BASE}, "sliding_window": 7, "original_max_position_embeddings": 32,
                "rope_theta": 500.0, "rope_scaling": {{"type": "su", "short_factor": [1.0, 1.0],
                "long_factor": [2.0, 3.0]}}}}"#
            ),
            Architecture::Phi3,
        )
        .unwrap();
        let new = parse(
            &format!(
                r#"{{{BASE}, "sliding_window": 7, "rope_parameters": {{"rope_type": "longrope",
                "rope_theta": 500.0, "original_max_position_embeddings": 32,
                "short_factor": [1.0, 1.0], "long_factor": [2.0, 3.0]}}}}"#
            ),
            Architecture::Phi3,
        )
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(old.window(1), Some(7));
        let Some(RopeScaling::LongRope(rope)) = &old.rope.scaling else {
            panic!("longrope expected");
        };
        // Context 128 over 32: factor 4.
        let expected = (1.0 + 4f64.ln() / 32f64.ln()).sqrt();
        assert!((rope.attention_factor - expected).abs() < 1e-12);
        assert_eq!(old.rope.theta, 500.0);
    }

    #[test]
    fn unsupported_features_are_refused_by_name() {
        let err = parse(
            &format!(r#"{{{BASE}, "partial_rotary_factor": 0.75}}"#),
            Architecture::Phi3,
        )
        .unwrap_err();
        assert!(err.contains("partial_rotary_factor"), "{err}");
        let err = parse(
            &format!(r#"{{{BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 4.0}}}}"#),
            Architecture::Qwen2,
        )
        .unwrap_err();
        assert!(err.contains("yarn"), "{err}");
        let err = parse(
            &format!(r#"{{{BASE}, "hidden_act": "gelu"}}"#),
            Architecture::Llama,
        )
        .unwrap_err();
        assert!(err.contains("gelu"), "{err}");
    }
}
