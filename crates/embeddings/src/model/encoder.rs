//! The BERT encoder over memory-mapped safetensors, and one padded batch through it.
//!
//! Checkpoints name their tensors with or without a `bert.` prefix (a bare `BertModel`, as
//! MiniLM ships, or one saved from a `BertFor...` head); the prefix is read from the weights
//! rather than guessed from the config, and a file with neither is a clear error.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use crate::{error::LoadError, model::tokenize::Encoded};

/// A tensor every BERT checkpoint has, under the prefix being probed.
const PROBE: &str = "embeddings.word_embeddings.weight";
/// Prefixes seen in published checkpoints, in the order they are tried.
const PREFIXES: [&str; 3] = ["", "bert", "model"];

/// The encoder, owned by the engine thread.
pub struct Encoder {
    model: BertModel,
    device: Device,
    hidden: usize,
}

/// The encoder's output for one batch: `rows` sequences of `seq_len` token vectors of `hidden`
/// values, and the attention mask they were computed under.
#[derive(Debug)]
pub struct EncodedBatch {
    pub hidden_states: Vec<f32>,
    pub mask: Vec<u32>,
    pub seq_len: usize,
    pub hidden: usize,
}

impl EncodedBatch {
    /// The token vectors and mask of row `row`.
    pub fn row(&self, row: usize) -> (&[f32], &[u32]) {
        let tokens = self.seq_len * self.hidden;
        (
            &self.hidden_states[row * tokens..(row + 1) * tokens],
            &self.mask[row * self.seq_len..(row + 1) * self.seq_len],
        )
    }
}

impl Encoder {
    pub fn load(vb: VarBuilder<'static>, config: &Config) -> Result<Self, LoadError> {
        let prefix = PREFIXES
            .into_iter()
            .find(|prefix| vb.contains_tensor(&join(prefix, PROBE)))
            .ok_or_else(|| LoadError::Weights {
                reason: format!(
                    "no BERT encoder in the weights: none of {} found",
                    PREFIXES
                        .iter()
                        .map(|p| format!("`{}`", join(p, PROBE)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let vb = if prefix.is_empty() { vb } else { vb.pp(prefix) };
        let device = vb.device().clone();
        let model = BertModel::load(vb, config).map_err(|err| LoadError::Weights {
            reason: err.to_string(),
        })?;
        Ok(Self {
            model,
            device,
            hidden: config.hidden_size,
        })
    }

    /// Runs `inputs` as one batch, padded on the right with `pad_id` to the longest.
    pub fn forward(
        &self,
        inputs: &[&Encoded],
        pad_id: u32,
    ) -> Result<EncodedBatch, candle_core::Error> {
        let rows = inputs.len();
        let seq_len = inputs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows * seq_len);
        let mut type_ids = Vec::with_capacity(rows * seq_len);
        let mut mask = Vec::with_capacity(rows * seq_len);
        for input in inputs {
            let padding = seq_len - input.ids.len();
            ids.extend(&input.ids);
            ids.extend(std::iter::repeat_n(pad_id, padding));
            type_ids.extend(&input.type_ids);
            type_ids.extend(std::iter::repeat_n(0, padding));
            mask.extend(std::iter::repeat_n(1u32, input.ids.len()));
            mask.extend(std::iter::repeat_n(0u32, padding));
        }
        let shape = (rows, seq_len);
        let ids_t = Tensor::from_slice(&ids, shape, &self.device)?;
        let type_ids_t = Tensor::from_slice(&type_ids, shape, &self.device)?;
        let mask_t = Tensor::from_slice(&mask, shape, &self.device)?;
        let output = self.model.forward(&ids_t, &type_ids_t, Some(&mask_t))?;
        let hidden_states = output
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(EncodedBatch {
            hidden_states,
            mask,
            seq_len,
            hidden: self.hidden,
        })
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}
