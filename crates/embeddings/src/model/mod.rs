//! A sentence-transformers model: the directory's [`layout`], its [`tokenize`]r, the BERT
//! [`encoder`] and the [`pooling`] after it, put together as [`SentenceModel`].

mod bert;
pub mod encoder;
pub mod layout;
pub mod pooling;
pub mod tokenize;

use std::path::Path;

use candle_core::{DType, Device};

use crate::{
    batch,
    error::{EmbedFailure, LoadError},
    vector,
};
use encoder::{Backend, Encoder};
use layout::ModelLayout;
use pooling::Pooling;
use tokenize::{Encoded, TextEncoder};

/// Text the warm-up pass embeds.
const WARM_UP_TEXT: &str = "warm-up";

/// What a loaded model tells its callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Length of the vectors.
    pub dimension: usize,
    /// Longest input in tokens, special tokens included; longer inputs are truncated.
    pub max_seq_length: usize,
    /// The model's pipeline ends in L2 normalisation: every vector has unit length.
    pub normalized: bool,
    /// `pooling_mode` names, in concatenation order.
    pub pooling: Vec<&'static str>,
    /// Token ids run from 0 to `vocab_size - 1`.
    pub vocab_size: usize,
}

/// One input's vector, after the model's own pipeline (pooling, and normalisation when the
/// model has it).
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceVector {
    pub values: Vec<f32>,
    /// Tokens the model read, special tokens included.
    pub tokens: usize,
    pub truncated: bool,
}

/// The model, owned by the engine thread.
pub struct SentenceModel {
    encoder: Encoder,
    text: TextEncoder,
    pooling: Pooling,
    spec: ModelSpec,
}

impl SentenceModel {
    /// Reads `dir` and maps its weights onto `device`, with the forward pass that suits it.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, LoadError> {
        Self::load_with(dir, device, Backend::for_device(device))
    }

    /// Reads `dir` onto `device` and runs it with `backend` (which must suit the device:
    /// [`Backend::Packed`] is CPU only).
    pub fn load_with(dir: &Path, device: &Device, backend: Backend) -> Result<Self, LoadError> {
        let layout = ModelLayout::read(dir)?;
        let pad_id = u32::try_from(layout.bert.pad_token_id).unwrap_or(0);
        let text = TextEncoder::load(
            &layout.tokenizer,
            layout.max_seq_length,
            layout.lowercase,
            pad_id,
        )?;
        let vb = passerelle_model_runtime::weights::mmap_safetensors(
            &layout.weights,
            DType::F32,
            device,
        )
        .map_err(|err| LoadError::Weights {
            reason: err.to_string(),
        })?;
        let encoder = Encoder::load(vb, &layout.bert, backend)?;
        let spec = ModelSpec {
            dimension: layout.dimension(),
            max_seq_length: layout.max_seq_length,
            normalized: layout.normalize,
            pooling: layout.pooling.modes().iter().map(|m| m.name()).collect(),
            vocab_size: layout.bert.vocab_size,
        };
        Ok(Self {
            encoder,
            text,
            pooling: layout.pooling,
            spec,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Embeds one short text so the first request pays no first-run cost.
    pub fn warm_up(&self) -> Result<(), LoadError> {
        self.embed(&[WARM_UP_TEXT.to_owned()], 1)
            .map(drop)
            .map_err(|err| LoadError::WarmUp(err.to_string()))
    }

    /// Takes pre-tokenized inputs as they are, cut at `max_seq_length` like a text would be.
    /// Ids were checked against the vocabulary when the request was admitted.
    pub fn encode_ids(&self, ids: &[u32]) -> Encoded {
        let kept = ids.len().min(self.spec.max_seq_length);
        Encoded {
            ids: ids[..kept].to_vec(),
            type_ids: vec![0; kept],
            truncated: kept < ids.len(),
        }
    }

    /// Tokenizes `texts` (in parallel on the current rayon pool).
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Encoded>, EmbedFailure> {
        self.text.encode(texts).map_err(EmbedFailure::Tokenizer)
    }

    /// Embeds `texts`, at most `max_batch` per forward pass, in input order.
    pub fn embed(
        &self,
        texts: &[String],
        max_batch: usize,
    ) -> Result<Vec<SentenceVector>, EmbedFailure> {
        let encoded = self.tokenize(texts)?;
        self.embed_encoded(&encoded, max_batch, |_, _| {})
    }

    /// Embeds tokenized inputs, at most `max_batch` per pass; `on_pass` hears each pass's size
    /// and duration.
    pub fn embed_encoded(
        &self,
        encoded: &[Encoded],
        max_batch: usize,
        mut on_pass: impl FnMut(usize, std::time::Duration),
    ) -> Result<Vec<SentenceVector>, EmbedFailure> {
        let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
        let mut out: Vec<Option<SentenceVector>> = vec![None; encoded.len()];
        for pass in batch::plan(&lengths, max_batch) {
            let started = std::time::Instant::now();
            let inputs: Vec<&Encoded> = pass.iter().map(|&i| &encoded[i]).collect();
            let states = self.encoder.forward(&inputs, self.text.pad_id())?;
            for (row, &index) in pass.iter().enumerate() {
                let (tokens, mask) = states.row(row);
                let mut values = self.pooling.pool(tokens, states.hidden, mask);
                if self.spec.normalized {
                    vector::l2_normalize(&mut values);
                }
                out[index] = Some(SentenceVector {
                    values,
                    tokens: lengths[index],
                    truncated: encoded[index].truncated,
                });
            }
            on_pass(pass.len(), started.elapsed());
        }
        Ok(out.into_iter().flatten().collect())
    }
}
