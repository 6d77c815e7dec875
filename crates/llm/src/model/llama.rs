//! The Llama decoder (Llama 3.x, Llama Guard 3) on candle's ops, one forward pass for both
//! formats.
//!
//! candle-transformers has a Llama for each format, but its GGUF one (`quantized_llama`) ignores
//! `rope_freqs.weight`, the Llama 3.1+ frequency scaling llama.cpp stores there, so a Llama 3.2
//! GGUF would rotate its low frequencies wrongly. Here every projection is a [`QMatMul`]
//! (quantized blocks from GGUF, plain tensors from safetensors) and the rotary table is built
//! from either source's scaling, so the two formats run the same code.
//!
//! The one layout difference: llama.cpp's converter permutes the Q and K rows so that its
//! interleaved rotation (pairs `2i, 2i+1`) equals Hugging Face's rotation of halves (`i, i+d/2`).
//! Weights are kept as stored and each format rotates its own way ([`RopeLayout`]).

use std::io::{Read, Seek};

use candle_core::{
    DType, Device, Module, Tensor,
    quantized::{QMatMul, gguf_file},
};
use candle_nn::{Embedding, RmsNorm, VarBuilder};
use serde::Deserialize;

/// How the rotary embedding pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Dimension `i` with `i + head_dim / 2` (Hugging Face checkpoints).
    Halves,
    /// Dimension `2i` with `2i + 1` (llama.cpp's permuted Q and K).
    Interleaved,
}

/// Llama 3.1+ long-context frequency scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl Llama3Scaling {
    /// What each inverse frequency is divided by: 1 for high frequencies, `factor` for low
    /// ones, a smooth blend between (the values llama.cpp stores as `rope_freqs.weight`).
    fn divisors(&self, inv_freq: &[f64]) -> Vec<f64> {
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

/// The shape of a Llama decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_layout: RopeLayout,
}

impl LlamaConfig {
    /// The rotary inverse frequencies `theta^(-2i/d)`, each divided by its scaling divisor.
    fn inv_freq(&self, divisors: Option<&[f64]>) -> Vec<f32> {
        let dim = self.head_dim;
        (0..dim / 2)
            .map(|i| {
                // f32 like transformers, so the two agree to the last bits.
                let exponent = (2 * i) as f32 / dim as f32;
                let freq = 1.0 / (self.rope_theta as f32).powf(exponent);
                let divisor = divisors.and_then(|d| d.get(i)).copied().unwrap_or(1.0);
                (f64::from(freq) / divisor) as f32
            })
            .collect()
    }

    fn check(&self) -> candle_core::Result<()> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
            || !self.head_dim.is_multiple_of(2)
        {
            candle_core::bail!(
                "unusable attention shape: {} heads, {} key/value heads of width {}",
                self.num_heads,
                self.num_kv_heads,
                self.head_dim
            );
        }
        Ok(())
    }
}

/// One transformer block.
struct Block {
    attn_norm: RmsNorm,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    o: QMatMul,
    ffn_norm: RmsNorm,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    cache: Option<(Tensor, Tensor)>,
}

/// The keys and values of a run of positions, per layer: a prefix to start later runs from.
#[derive(Clone)]
pub struct KvSnapshot {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl std::fmt::Debug for KvSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvSnapshot")
            .field("layers", &self.layers.len())
            .finish()
    }
}

/// A Llama decoder with its KV cache.
pub struct Llama {
    config: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: QMatMul,
    /// Rotary inverse frequencies, `[head_dim / 2]`.
    inv_freq: Tensor,
    device: Device,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where the weights come from, under the names of their format.
trait Source {
    fn vector(&mut self, name: &str) -> candle_core::Result<Tensor>;
    fn matrix(&mut self, name: &str) -> candle_core::Result<QMatMul>;
    fn has(&self, name: &str) -> bool;
}

/// Tensor names of one format.
struct Names {
    embed: &'static str,
    norm: &'static str,
    lm_head: &'static str,
    block: fn(usize, BlockTensor) -> String,
}

#[derive(Clone, Copy)]
enum BlockTensor {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

const GGUF_NAMES: Names = Names {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    lm_head: "output.weight",
    block: |i, t| {
        let part = match t {
            BlockTensor::AttnNorm => "attn_norm",
            BlockTensor::Q => "attn_q",
            BlockTensor::K => "attn_k",
            BlockTensor::V => "attn_v",
            BlockTensor::O => "attn_output",
            BlockTensor::FfnNorm => "ffn_norm",
            BlockTensor::Gate => "ffn_gate",
            BlockTensor::Up => "ffn_up",
            BlockTensor::Down => "ffn_down",
        };
        format!("blk.{i}.{part}.weight")
    },
};

const HF_NAMES: Names = Names {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    block: |i, t| {
        let part = match t {
            BlockTensor::AttnNorm => "input_layernorm",
            BlockTensor::Q => "self_attn.q_proj",
            BlockTensor::K => "self_attn.k_proj",
            BlockTensor::V => "self_attn.v_proj",
            BlockTensor::O => "self_attn.o_proj",
            BlockTensor::FfnNorm => "post_attention_layernorm",
            BlockTensor::Gate => "mlp.gate_proj",
            BlockTensor::Up => "mlp.up_proj",
            BlockTensor::Down => "mlp.down_proj",
        };
        format!("model.layers.{i}.{part}.weight")
    },
};

impl Llama {
    fn build(
        config: LlamaConfig,
        divisors: Option<&[f64]>,
        names: &Names,
        source: &mut dyn Source,
        device: &Device,
    ) -> candle_core::Result<Self> {
        config.check()?;
        let embed_weight = source.vector(names.embed)?;
        let hidden = config.hidden_size;
        let lm_head = if source.has(names.lm_head) {
            source.matrix(names.lm_head)?
        } else {
            // Tied embeddings (Llama 3.2 1B): the output projection is the embedding table.
            source.matrix(names.embed)?
        };
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let name = |t| (names.block)(i, t);
            let norm = |source: &mut dyn Source, t| -> candle_core::Result<RmsNorm> {
                Ok(RmsNorm::new(source.vector(&name(t))?, config.rms_norm_eps))
            };
            blocks.push(Block {
                attn_norm: norm(source, BlockTensor::AttnNorm)?,
                q: source.matrix(&name(BlockTensor::Q))?,
                k: source.matrix(&name(BlockTensor::K))?,
                v: source.matrix(&name(BlockTensor::V))?,
                o: source.matrix(&name(BlockTensor::O))?,
                ffn_norm: norm(source, BlockTensor::FfnNorm)?,
                gate: source.matrix(&name(BlockTensor::Gate))?,
                up: source.matrix(&name(BlockTensor::Up))?,
                down: source.matrix(&name(BlockTensor::Down))?,
                cache: None,
            });
        }
        let norm = RmsNorm::new(source.vector(names.norm)?, config.rms_norm_eps);
        let inv_freq = Tensor::new(config.inv_freq(divisors), device)?;
        Ok(Self {
            embed: Embedding::new(embed_weight, hidden),
            blocks,
            norm,
            lm_head,
            inv_freq,
            device: device.clone(),
            config,
        })
    }

    /// Loads a llama.cpp GGUF file (`general.architecture == "llama"`), whose metadata the
    /// caller has read.
    pub fn from_gguf<R: Read + Seek>(
        content: gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let md = &content.metadata;
        let get = |key: &str| {
            md.get(&format!("llama.{key}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("GGUF has no llama.{key}")))
        };
        let num_heads = get("attention.head_count")?.to_u32()? as usize;
        let hidden_size = get("embedding_length")?.to_u32()? as usize;
        let head_dim = match md.get("llama.attention.key_length") {
            Some(v) => v.to_u32()? as usize,
            None => hidden_size / num_heads.max(1),
        };
        let config = LlamaConfig {
            hidden_size,
            intermediate_size: get("feed_forward_length")?.to_u32()? as usize,
            num_layers: get("block_count")?.to_u32()? as usize,
            num_heads,
            num_kv_heads: match md.get("llama.attention.head_count_kv") {
                Some(v) => v.to_u32()? as usize,
                None => num_heads,
            },
            head_dim,
            rms_norm_eps: f64::from(get("attention.layer_norm_rms_epsilon")?.to_f32()?),
            rope_theta: match md.get("llama.rope.freq_base") {
                Some(v) => f64::from(v.to_f32()?),
                None => 10_000.0,
            },
            rope_layout: RopeLayout::Interleaved,
        };
        let mut source = GgufSource {
            content: &content,
            reader,
            device,
        };
        let divisors = if source.has("rope_freqs.weight") {
            let values: Vec<f32> = source.vector("rope_freqs.weight")?.to_vec1()?;
            Some(values.into_iter().map(f64::from).collect::<Vec<_>>())
        } else {
            None
        };
        Self::build(
            config,
            divisors.as_deref(),
            &GGUF_NAMES,
            &mut source,
            device,
        )
    }

    /// Builds the model from Hugging Face weights; `scaling` is `rope_scaling` when its type
    /// is `llama3`.
    pub fn from_safetensors(
        config: LlamaConfig,
        scaling: Option<Llama3Scaling>,
        vb: VarBuilder<'_>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let divisors = scaling.map(|s| {
            let plain: Vec<f64> = config.inv_freq(None).into_iter().map(f64::from).collect();
            s.divisors(&plain)
        });
        let mut source = SafetensorsSource {
            vb,
            config: &config,
        };
        let config = config.clone();
        Self::build(config, divisors.as_deref(), &HF_NAMES, &mut source, device)
    }

    /// Runs `tokens` at positions `pos..pos + tokens.len()` (extending the KV cache) and
    /// returns the logits of the last position.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let seq_len = tokens.len();
        if seq_len == 0 {
            candle_core::bail!("no tokens to run");
        }
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let (cos, sin) = self.rotary(pos, seq_len)?;
        let mask = if seq_len > 1 {
            Some(causal_mask(seq_len, pos, &self.device)?)
        } else {
            None
        };
        let mut x = self.embed.forward(&input)?;
        for block in &mut self.blocks {
            x = block.forward(&x, &self.config, &cos, &sin, mask.as_ref())?;
        }
        let last = x.narrow(1, seq_len - 1, 1)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        logits.flatten_all()
    }

    /// Forgets every cached position; the next forward starts a new sequence at 0.
    pub fn clear_kv_cache(&mut self) {
        for block in &mut self.blocks {
            block.cache = None;
        }
    }

    /// The KV cache as it stands (tensors are shared, not copied).
    pub fn kv_snapshot(&self) -> KvSnapshot {
        KvSnapshot {
            layers: self.blocks.iter().map(|b| b.cache.clone()).collect(),
        }
    }

    /// Puts back a cache taken by [`Llama::kv_snapshot`] of this model; the next forward
    /// continues after the positions it holds.
    pub fn restore_kv(&mut self, snapshot: &KvSnapshot) {
        for (block, cache) in self.blocks.iter_mut().zip(&snapshot.layers) {
            block.cache = cache.clone();
        }
    }

    /// `cos` and `sin` of positions `pos..pos + len`, `[len, head_dim / 2]`.
    fn rotary(&self, pos: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let positions = Tensor::arange(pos as u32, (pos + len) as u32, &self.device)?
            .to_dtype(DType::F32)?
            .reshape((len, 1))?;
        let angles = positions.broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        Ok((angles.cos()?, angles.sin()?))
    }
}

/// `-inf` where a query at `pos + i` would see a key after it, over all `pos + len` keys.
fn causal_mask(len: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = pos + len;
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (1, 1, len, total), device)
}

impl Block {
    fn forward(
        &mut self,
        x: &Tensor,
        config: &LlamaConfig,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let residual = x;
        let h = self.attn_norm.forward(x)?;
        let h = self.attention(&h, config, cos, sin, mask)?;
        let x = (residual + h)?;
        let h = self.ffn_norm.forward(&x)?;
        let h = candle_nn::ops::silu(&self.gate.forward(&h)?)? * self.up.forward(&h)?;
        x + self.down.forward(&h?)?
    }

    fn attention(
        &mut self,
        x: &Tensor,
        config: &LlamaConfig,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (batch, len, _) = x.dims3()?;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((batch, len, n, config.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q.forward(x)?, config.num_heads)?;
        let k = heads(self.k.forward(x)?, config.num_kv_heads)?;
        let v = heads(self.v.forward(x)?, config.num_kv_heads)?;
        let rotate = match config.rope_layout {
            RopeLayout::Halves => candle_nn::rotary_emb::rope,
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i,
        };
        let q = rotate(&q, cos, sin)?;
        let k = rotate(&k, cos, sin)?;
        let (k, v) = match self.cache.take() {
            Some((past_k, past_v)) => (
                Tensor::cat(&[&past_k, &k], 2)?,
                Tensor::cat(&[&past_v, &v], 2)?,
            ),
            None => (k, v),
        };
        self.cache = Some((k.clone(), v.clone()));
        let groups = config.num_heads / config.num_kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, groups)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, groups)?.contiguous()?;
        let scale = 1.0 / (config.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((
            batch,
            len,
            config.num_heads * config.head_dim,
        ))?;
        self.o.forward(&out)
    }
}

struct GgufSource<'a, R> {
    content: &'a gguf_file::Content,
    reader: &'a mut R,
    device: &'a Device,
}

impl<R: Read + Seek> Source for GgufSource<'_, R> {
    fn vector(&mut self, name: &str) -> candle_core::Result<Tensor> {
        self.content
            .tensor(self.reader, name, self.device)?
            .dequantize(self.device)
    }

    fn matrix(&mut self, name: &str) -> candle_core::Result<QMatMul> {
        let tensor = self.content.tensor(self.reader, name, self.device)?;
        QMatMul::from_arc(std::sync::Arc::new(tensor))
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}

struct SafetensorsSource<'a> {
    vb: VarBuilder<'a>,
    config: &'a LlamaConfig,
}

impl SafetensorsSource<'_> {
    /// The expected shape of a matrix, so a mislabelled checkpoint fails to load instead of
    /// producing garbage.
    fn shape_of(&self, name: &str) -> Option<(usize, usize)> {
        let c = self.config;
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        let suffixes = [
            ("q_proj.weight", (q, c.hidden_size)),
            ("k_proj.weight", (kv, c.hidden_size)),
            ("v_proj.weight", (kv, c.hidden_size)),
            ("o_proj.weight", (c.hidden_size, q)),
            ("gate_proj.weight", (c.intermediate_size, c.hidden_size)),
            ("up_proj.weight", (c.intermediate_size, c.hidden_size)),
            ("down_proj.weight", (c.hidden_size, c.intermediate_size)),
        ];
        suffixes
            .into_iter()
            .find(|(suffix, _)| name.ends_with(suffix))
            .map(|(_, shape)| shape)
    }
}

impl Source for SafetensorsSource<'_> {
    fn vector(&mut self, name: &str) -> candle_core::Result<Tensor> {
        self.vb.get_unchecked(name)
    }

    fn matrix(&mut self, name: &str) -> candle_core::Result<QMatMul> {
        let tensor = match self.shape_of(name) {
            Some(shape) => self.vb.get(shape, name)?,
            None => self.vb.get_unchecked(name)?,
        };
        Ok(QMatMul::Tensor(tensor))
    }

    fn has(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }
}
