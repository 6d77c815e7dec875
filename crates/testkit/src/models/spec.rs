//! The shape of a Qwen2 model to write, with named presets.

use std::{fmt, str::FromStr};

use crate::models::TestkitError;

/// Architecture hyper-parameters of a Qwen2 decoder, as `config.json` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2Spec {
    /// Written as `general.name` in GGUF files.
    pub name: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Context length (`max_position_embeddings`, GGUF `qwen2.context_length`).
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// BPE merges learned from the bundled English text (fewer when the text runs out of pairs).
    pub merges: usize,
    /// Rows of the embedding matrix. `None` rounds the tokenizer's size up to a multiple of 64;
    /// rows beyond the tokenizer are filled as `vocab_fill` says.
    pub vocab_size: Option<usize>,
    /// What the rows beyond the learned vocabulary and the added tokens hold.
    pub vocab_fill: VocabFill,
}

impl Qwen2Spec {
    /// A model small enough that a test loads it and generates dozens of tokens in milliseconds.
    pub fn tiny() -> Self {
        Self {
            name: "passerelle-tiny-qwen2".to_owned(),
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 4096,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            merges: 400,
            vocab_size: None,
            vocab_fill: VocabFill::Reserved,
        }
    }

    /// The real Qwen2.5-0.5B architecture (about 494M parameters) with random weights, for trying
    /// the server at a realistic size.
    pub fn qwen2_5_0_5b() -> Self {
        Self {
            name: "passerelle-random-qwen2.5-0.5b".to_owned(),
            hidden_size: 896,
            intermediate_size: 4864,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            max_position_embeddings: 32768,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            merges: 400,
            vocab_size: Some(151_936),
            vocab_fill: VocabFill::Reserved,
        }
    }

    /// The spec of a named [`Preset`].
    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Tiny => Self::tiny(),
            Preset::Qwen2_5_0_5b => Self::qwen2_5_0_5b(),
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Rejects shapes the Qwen2 architecture cannot have.
    pub fn validate(&self) -> Result<(), TestkitError> {
        let fail = |why: String| Err(TestkitError::InvalidSpec(why));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return fail("head counts must be positive".to_owned());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return fail(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        Ok(())
    }
}

/// Named model shapes offered by the `passerelle-testkit` binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// [`Qwen2Spec::tiny`].
    Tiny,
    /// [`Qwen2Spec::qwen2_5_0_5b`].
    Qwen2_5_0_5b,
}

impl FromStr for Preset {
    type Err = TestkitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny" => Ok(Self::Tiny),
            "qwen2.5-0.5b" => Ok(Self::Qwen2_5_0_5b),
            other => Err(TestkitError::InvalidSpec(format!(
                "unknown preset `{other}` (expected `tiny` or `qwen2.5-0.5b`)"
            ))),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tiny => "tiny",
            Self::Qwen2_5_0_5b => "qwen2.5-0.5b",
        })
    }
}

/// What fills the embedding rows beyond the learned vocabulary and the added tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VocabFill {
    /// `<|reserved_N|>` padding, as real checkpoints pad theirs: left out of `tokenizer.json`,
    /// UNUSED in GGUF, decoding to nothing. A random-weight model samples almost only these, so
    /// its streams carry no text.
    #[default]
    Reserved,
    /// Distinct synthetic words, ` w0`, ` w1`, ... (`Ġw0` in byte-level symbols), ordinary BPE
    /// tokens in both `tokenizer.json` and GGUF that no text encodes to but every one of which
    /// decodes to text, so a random-weight model streams content (for timing first tokens).
    Words,
}

impl FromStr for VocabFill {
    type Err = TestkitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reserved" => Ok(Self::Reserved),
            "words" => Ok(Self::Words),
            other => Err(TestkitError::InvalidSpec(format!(
                "unknown vocabulary fill `{other}` (expected `reserved` or `words`)"
            ))),
        }
    }
}

impl fmt::Display for VocabFill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reserved => "reserved",
            Self::Words => "words",
        })
    }
}

/// How weights are stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    /// GGUF only: 8-bit blocks of 32.
    Q8_0,
    /// GGUF only: 4-bit k-quant blocks of 256. Like llama.cpp, matrices whose rows are not a
    /// multiple of 256 fall back to Q8_0.
    Q4K,
    /// GGUF only: llama.cpp's Q4_K_M mix, tensor by tensor as `llama-quantize` chooses it
    /// (Q4_K, Q6_K for the output and some `attn_v`/`ffn_down`, and its fallbacks for short
    /// rows: Q5_0 and Q8_0), so that a file is comparable with a llama.cpp-quantized one.
    Q4KM,
}

impl FromStr for WeightDtype {
    type Err = TestkitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            "q8_0" => Ok(Self::Q8_0),
            "q4_k" => Ok(Self::Q4K),
            "q4_k_m" => Ok(Self::Q4KM),
            other => Err(TestkitError::InvalidSpec(format!(
                "unknown dtype `{other}` (expected f32, f16, bf16, q8_0, q4_k or q4_k_m)"
            ))),
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::Q4KM => "q4_k_m",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_parse_by_name() {
        for preset in [Preset::Tiny, Preset::Qwen2_5_0_5b] {
            Qwen2Spec::preset(preset).validate().unwrap();
            assert_eq!(preset.to_string().parse::<Preset>().unwrap(), preset);
        }
        assert_eq!(Qwen2Spec::qwen2_5_0_5b().head_dim(), 64);
    }

    #[test]
    fn vocab_fills_parse_by_name() {
        for fill in [VocabFill::Reserved, VocabFill::Words] {
            assert_eq!(fill.to_string().parse::<VocabFill>().unwrap(), fill);
        }
        assert!("padding".parse::<VocabFill>().is_err());
    }

    #[test]
    fn rejects_heads_that_do_not_divide() {
        let mut spec = Qwen2Spec::tiny();
        spec.num_key_value_heads = 3;
        assert!(spec.validate().is_err());
    }
}
