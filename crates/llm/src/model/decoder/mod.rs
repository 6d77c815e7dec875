//! One decoder for every family served (Llama, Qwen2, Qwen3, Phi-3), over either format.
//!
//! The weights ([`Decoder`]) are immutable and shared; each sequence owns a [`KvCache`]. Every
//! projection is a [`QLinear`]: quantized blocks from GGUF (multiplied by [`crate::kernels`]),
//! plain tensors from safetensors. The families differ only in what their checkpoints hold,
//! which the loader reads from the tensors present: q/k/v biases (Qwen2), per-head q/k norms
//! (Qwen3), fused `qkv` and `gate_up` projections (Phi-3), tied embeddings (no `lm_head`); and in
//! their rotary scaling and attention windows ([`DecoderConfig`]).
//!
//! The one layout difference between formats: llama.cpp's converter permutes a Llama's Q and K
//! rows so that its interleaved rotation (pairs `2i, 2i+1`) equals Hugging Face's rotation of
//! halves (`i, i+d/2`); weights are kept as stored and each rotates its own way ([`RopeLayout`]).
//!
//! - [`config`]: the shape; [`rope`]: rotary tables; [`kv_cache`]: one sequence's keys and values.
//! - `block`, `attention`: the forward pass; `source`: tensor names and readers per format.

mod attention;
mod block;
pub mod config;
mod gguf;
pub mod kv_cache;
pub mod rope;
mod source;

use std::io::{Read, Seek};

use candle_core::{DType, Device, Module, Tensor, quantized::gguf_file};
use candle_nn::{RmsNorm, VarBuilder};

pub use config::DecoderConfig;
pub use kv_cache::KvCache;
pub use rope::{Llama3Scaling, LongRope, RopeConfig, RopeLayout, RopeScaling};

use crate::kernels::QLinear;
use attention::{Positions, attend, attend_decoding, prepare};
use block::Block;
use rope::Rope;
use source::{GGUF_NAMES, GgufSource, HF_NAMES, Names, SafetensorsSource, Source};

/// One sequence's part of a batched forward: its new tokens and its cache, which the forward
/// extends.
#[derive(Debug)]
pub struct BatchItem<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// The weights of a decoder-only language model; immutable, so one copy serves any number of
/// sequences.
pub struct Decoder {
    config: DecoderConfig,
    /// The embedding table; rows are looked up (and dequantized) one token at a time.
    embed: QLinear,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: QLinear,
    rope: Rope,
    /// Rows of the embedding table: token ids must be below.
    vocab_size: usize,
    device: Device,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    fn build(
        config: DecoderConfig,
        names: &Names,
        source: &mut dyn Source,
        device: &Device,
    ) -> candle_core::Result<Self> {
        config.check()?;
        let rope = Rope::new(&config.rope, config.head_dim)?;
        let embed = QLinear::new(source.matrix(names.embed, None)?);
        let vocab_size = embed.rows()?;
        let lm_head = if source.has(names.lm_head) {
            QLinear::new(source.matrix(names.lm_head, None)?)
        } else {
            // Tied embeddings: the output projection is the embedding table, shared.
            embed.clone()
        };
        let blocks = (0..config.num_layers)
            .map(|layer| Block::load(source, names, &config, layer))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = RmsNorm::new(source.vector(names.norm)?, config.rms_norm_eps);
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            lm_head,
            rope,
            vocab_size,
            device: device.clone(),
        })
    }

    /// Loads a llama.cpp GGUF file whose `general.architecture` is a served family; the caller
    /// has read its metadata into `content`.
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut source = GgufSource {
            content,
            reader,
            device,
        };
        let config = gguf::config(content, &mut source)?;
        Self::build(config, &GGUF_NAMES, &mut source, device)
    }

    /// Builds the model from Hugging Face weights (names as `transformers` saves them).
    pub fn from_safetensors(
        config: DecoderConfig,
        vb: VarBuilder<'_>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Self::build(config, &HF_NAMES, &mut SafetensorsSource { vb }, device)
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Rows of the embedding table (at least the tokenizer's size).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `tokens` at the positions after those `cache` holds, extends the cache, and returns
    /// the logits of the last position, `[vocab]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> candle_core::Result<Tensor> {
        self.forward_batch(&mut [BatchItem { tokens, cache }])?
            .squeeze(0)
    }

    /// Runs several sequences at once and returns each one's last-position logits,
    /// `[items, vocab]`. The projections and the MLP run once over all items' rows together;
    /// attention runs per item against its own cache. On error every cache is left as it was.
    pub fn forward_batch(&self, items: &mut [BatchItem<'_>]) -> candle_core::Result<Tensor> {
        // A longrope sequence outgrowing the original context is run again from its start with
        // the long factors, as `transformers` generates it; the old cache is kept for errors.
        let mut reruns: Vec<Option<Vec<u32>>> = Vec::with_capacity(items.len());
        let mut backups: Vec<Option<KvCache>> = Vec::with_capacity(items.len());
        for item in items.iter_mut() {
            let cached = item.cache.len();
            let rerun = self.rope.must_recompute(cached, cached + item.tokens.len());
            if rerun {
                let mut all = item.cache.tokens().to_vec();
                all.extend_from_slice(item.tokens);
                reruns.push(Some(all));
                backups.push(Some(std::mem::take(item.cache)));
            } else {
                reruns.push(None);
                backups.push(None);
            }
        }
        let mut effective: Vec<BatchItem<'_>> = items
            .iter_mut()
            .zip(&reruns)
            .map(|(item, rerun)| BatchItem {
                tokens: rerun.as_deref().unwrap_or(item.tokens),
                cache: &mut *item.cache,
            })
            .collect();
        let result = self.run_batch(&mut effective);
        for (item, backup) in effective.iter_mut().zip(backups) {
            match (&result, backup) {
                (Ok(_), _) => item.cache.advance(item.tokens),
                (Err(_), Some(old)) => *item.cache = old,
                (Err(_), None) => item.cache.roll_back(),
            }
        }
        result
    }

    fn run_batch(&self, items: &mut [BatchItem<'_>]) -> candle_core::Result<Tensor> {
        if items.is_empty() {
            candle_core::bail!("no sequences to run");
        }
        if items.iter().any(|item| item.tokens.is_empty()) {
            candle_core::bail!("no tokens to run");
        }
        let ids: Vec<u32> = items
            .iter()
            .flat_map(|i| i.tokens.iter().copied())
            .collect();
        if let Some(id) = ids.iter().find(|id| **id as usize >= self.vocab_size) {
            candle_core::bail!(
                "token id {id} is outside the vocabulary of {}",
                self.vocab_size
            );
        }
        let positions = items
            .iter()
            .map(|item| {
                Positions::new(
                    &self.rope,
                    item.cache.len(),
                    item.tokens.len(),
                    &self.device,
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut x = self.embed.embedding(&Tensor::new(ids, &self.device)?)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = block.attn_norm(&x)?;
            let (q, k, v) = block.qkv(&h, &self.config)?;
            let mut attending = Vec::with_capacity(items.len());
            let mut row = 0;
            for (item, positions) in items.iter_mut().zip(&positions) {
                let rows = |t: &Tensor| t.narrow(0, row, positions.len);
                attending.push(prepare(
                    [&rows(&q)?, &rows(&k)?, &rows(&v)?],
                    layer,
                    &self.rope,
                    positions,
                    item.cache,
                )?);
                row += positions.len;
            }
            // Sequences that are all decoding attend together, in one parallel pass.
            let together = if positions.iter().all(|p| p.len == 1) {
                attend_decoding(&attending, layer, &self.config)?
            } else {
                None
            };
            let attention = match together {
                Some(attention) => attention,
                None => {
                    let outputs = attending
                        .iter()
                        .zip(&positions)
                        .map(|(a, p)| attend(a, layer, &self.config, p))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Tensor::cat(&outputs, 0)?
                }
            };
            x = (x + block.o(&attention)?)?;
            x = block.mlp(&x)?;
        }
        let last: Vec<u32> = positions
            .iter()
            .scan(0u32, |end, p| {
                *end += p.len as u32;
                Some(*end - 1)
            })
            .collect();
        let last = x.index_select(&Tensor::new(last, &self.device)?, 0)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        logits.to_dtype(DType::F32)
    }
}
