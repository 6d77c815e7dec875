//! The BERT encoder over memory-mapped safetensors, and one batch through it: packed (no
//! padding, [`super::bert`]) on the CPU, candle-transformers' padded `BertModel` on a GPU.
//!
//! Checkpoints name their tensors with or without a `bert.` prefix (a bare `BertModel`, as
//! MiniLM ships, or one saved from a `BertFor...` head); the prefix is read from the weights
//! rather than guessed from the config, and a file with neither is a clear error.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use crate::{
    error::LoadError,
    model::{
        bert::{PackedBert, Sequence},
        tokenize::Encoded,
    },
};

/// A tensor every BERT checkpoint has, under the prefix being probed.
const PROBE: &str = "embeddings.word_embeddings.weight";
/// Prefixes seen in published checkpoints, in the order they are tried.
const PREFIXES: [&str; 3] = ["", "bert", "model"];

/// Which implementation of the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// [`PackedBert`]: no padding, fused element-wise steps. CPU only.
    Packed,
    /// candle-transformers' `BertModel` on a padded batch: any device candle has.
    Padded,
}

impl Backend {
    /// The packed forward on the CPU, candle's model anywhere else.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            Self::Packed
        } else {
            Self::Padded
        }
    }
}

/// The encoder, owned by the engine thread.
pub struct Encoder {
    model: Model,
    hidden: usize,
}

enum Model {
    Packed(PackedBert),
    Padded { model: BertModel, device: Device },
}

/// The encoder's output for one batch: the token vectors of every input, one input after
/// another without padding, `hidden` values each.
#[derive(Debug)]
pub struct EncodedBatch {
    pub hidden_states: Vec<f32>,
    /// Input `i` holds token rows `starts[i]..starts[i + 1]`.
    starts: Vec<usize>,
    /// A mask of ones as long as the longest input, for poolers that take a mask.
    ones: Vec<u32>,
    pub hidden: usize,
}

impl EncodedBatch {
    fn new(hidden_states: Vec<f32>, lengths: impl Iterator<Item = usize>, hidden: usize) -> Self {
        let mut starts = vec![0];
        let mut longest = 0;
        for length in lengths {
            starts.push(starts[starts.len() - 1] + length);
            longest = longest.max(length);
        }
        Self {
            hidden_states,
            starts,
            ones: vec![1; longest],
            hidden,
        }
    }

    /// The token vectors of input `row` and their mask (all ones: nothing is padding).
    pub fn row(&self, row: usize) -> (&[f32], &[u32]) {
        let (start, end) = (self.starts[row], self.starts[row + 1]);
        (
            &self.hidden_states[start * self.hidden..end * self.hidden],
            &self.ones[..end - start],
        )
    }
}

impl Encoder {
    pub fn load(
        vb: VarBuilder<'static>,
        config: &Config,
        backend: Backend,
    ) -> Result<Self, LoadError> {
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
        let weights_error = |err: candle_core::Error| LoadError::Weights {
            reason: err.to_string(),
        };
        let model = match backend {
            Backend::Packed => Model::Packed(PackedBert::load(&vb, config).map_err(weights_error)?),
            Backend::Padded => Model::Padded {
                device: vb.device().clone(),
                model: BertModel::load(vb, config).map_err(weights_error)?,
            },
        };
        Ok(Self {
            model,
            hidden: config.hidden_size,
        })
    }

    /// Runs `inputs` as one batch.
    pub fn forward(
        &self,
        inputs: &[&Encoded],
        pad_id: u32,
    ) -> Result<EncodedBatch, candle_core::Error> {
        let lengths = inputs.iter().map(|e| e.ids.len());
        match &self.model {
            Model::Packed(model) => {
                let sequences: Vec<Sequence<'_>> = inputs
                    .iter()
                    .map(|e| Sequence {
                        ids: &e.ids,
                        type_ids: &e.type_ids,
                    })
                    .collect();
                let states = model.forward(&sequences)?;
                Ok(EncodedBatch::new(states, lengths, self.hidden))
            }
            Model::Padded { model, device } => {
                let padded = padded_forward(model, device, inputs, pad_id)?;
                let seq_len = inputs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
                let mut states = Vec::with_capacity(inputs.len() * seq_len * self.hidden);
                for (row, input) in inputs.iter().enumerate() {
                    let start = row * seq_len * self.hidden;
                    states.extend_from_slice(&padded[start..start + input.ids.len() * self.hidden]);
                }
                Ok(EncodedBatch::new(states, lengths, self.hidden))
            }
        }
    }
}

/// candle's model on `inputs` padded on the right with `pad_id` to the longest: `rows *
/// seq_len * hidden` values.
fn padded_forward(
    model: &BertModel,
    device: &Device,
    inputs: &[&Encoded],
    pad_id: u32,
) -> Result<Vec<f32>, candle_core::Error> {
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
    let ids = Tensor::from_slice(&ids, shape, device)?;
    let type_ids = Tensor::from_slice(&type_ids, shape, device)?;
    let mask = Tensor::from_slice(&mask, shape, device)?;
    model
        .forward(&ids, &type_ids, Some(&mask))?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}
