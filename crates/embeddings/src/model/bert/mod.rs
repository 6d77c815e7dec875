//! BERT on the CPU over a packed batch: the tokens of every input one after another, no padding.
//!
//! candle-transformers' `BertModel` pads a batch to its longest input and runs every layer on
//! the padded `(batch, seq_len, hidden)` tensor; at a batch of short sentences of uneven length a
//! fifth or more of that work is padding, and its chain of small tensor ops (bias, activation,
//! residual, norm, each a pass over memory and a rayon dispatch) costs as much again as the
//! matrix products. Here the linear layers run on one `(tokens, hidden)` matrix through candle's
//! `matmul`; bias, activation, residual and layer norm are fused into one pass over each
//! product, and attention is computed row by row inside each input's own rows, which is what
//! the padded model's mask achieves. Numbers are the same model's: the weights are read with
//! the checkpoint's tensor names, the order of every sum within 1e-6.

mod kernels;

use candle_core::{CpuStorage, Device, Module as _, Storage, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use kernels::{Activation, Norm, Packing, attend_row, bias_activation};

/// Rows one rayon task takes in the element-wise passes: enough to outweigh the dispatch.
const ROWS_PER_TASK: usize = 16;

/// One input, as the packed forward takes it.
pub struct Sequence<'a> {
    pub ids: &'a [u32],
    pub type_ids: &'a [u32],
}

/// A linear layer: its weight transposed to `(in, out)` for `x @ w`, and its bias.
struct Dense {
    weight: Tensor,
    bias: Vec<f32>,
}

impl Dense {
    fn load(vb: &VarBuilder<'_>, inputs: usize, outputs: usize) -> candle_core::Result<Self> {
        Self::stack(std::slice::from_ref(vb), inputs, outputs)
    }

    /// Several layers of the same input side by side, as one: `x @ [w1 w2 ...]`.
    fn stack(vbs: &[VarBuilder<'_>], inputs: usize, outputs: usize) -> candle_core::Result<Self> {
        let mut weights = Vec::with_capacity(vbs.len());
        let mut bias = Vec::with_capacity(vbs.len() * outputs);
        for vb in vbs {
            weights.push(vb.get((outputs, inputs), "weight")?);
            bias.extend(vb.get(outputs, "bias")?.to_vec1::<f32>()?);
        }
        let weight = Tensor::cat(&weights, 0)?.t()?.contiguous()?;
        Ok(Self { weight, bias })
    }

    /// `x @ w`, bias not added: the caller fuses it with what follows.
    fn product(&self, x: Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight)
    }
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

/// The encoder's weights, held on the CPU.
pub struct PackedBert {
    word: Tensor,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    activation: Activation,
}

impl PackedBert {
    /// Reads the encoder under `vb` (already at the checkpoint's prefix, if any).
    pub fn load(vb: &VarBuilder<'_>, config: &Config) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        if config.num_attention_heads == 0 || !hidden.is_multiple_of(config.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            );
        }
        let eps = config.layer_norm_eps as f32;
        let norm = |vb: VarBuilder<'_>| -> candle_core::Result<Norm> {
            Ok(Norm {
                weight: vb.get(hidden, "weight")?.to_vec1()?,
                bias: vb.get(hidden, "bias")?.to_vec1()?,
                eps,
            })
        };
        let embeddings = vb.pp("embeddings");
        let table = |name: &str, rows: usize| {
            embeddings
                .get((rows, hidden), &format!("{name}.weight"))?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let layers = (0..config.num_hidden_layers)
            .map(|index| {
                let vb = vb.pp(format!("encoder.layer.{index}"));
                let attention = vb.pp("attention");
                let projections = ["query", "key", "value"].map(|p| attention.pp("self").pp(p));
                Ok(Layer {
                    qkv: Dense::stack(&projections, hidden, hidden)?,
                    attention_out: Dense::load(&attention.pp("output.dense"), hidden, hidden)?,
                    attention_norm: norm(attention.pp("output.LayerNorm"))?,
                    intermediate: Dense::load(
                        &vb.pp("intermediate.dense"),
                        hidden,
                        config.intermediate_size,
                    )?,
                    output: Dense::load(&vb.pp("output.dense"), config.intermediate_size, hidden)?,
                    output_norm: norm(vb.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word: embeddings.get((config.vocab_size, hidden), "word_embeddings.weight")?,
            position: table("position_embeddings", config.max_position_embeddings)?,
            token_type: table("token_type_embeddings", config.type_vocab_size)?,
            embedding_norm: norm(embeddings.pp("LayerNorm"))?,
            layers,
            hidden,
            heads: config.num_attention_heads,
            activation: match config.hidden_act {
                HiddenAct::Gelu => Activation::GeluErf,
                HiddenAct::GeluApproximate => Activation::GeluTanh,
                HiddenAct::Relu => Activation::Relu,
            },
        })
    }

    /// The last hidden state of every token of every input, inputs one after another:
    /// `sum(lengths) * hidden` values.
    pub fn forward(&self, inputs: &[Sequence<'_>]) -> candle_core::Result<Vec<f32>> {
        let packing = Packing::new(inputs.iter().map(|input| input.ids.len()));
        let mut hidden = self.embed(inputs)?;
        for layer in &self.layers {
            self.layer(layer, &packing, &mut hidden)?;
        }
        Ok(hidden)
    }

    /// Word, position and token-type embeddings, summed and normalised.
    fn embed(&self, inputs: &[Sequence<'_>]) -> candle_core::Result<Vec<f32>> {
        let h = self.hidden;
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.ids.iter().copied()).collect();
        let rows = ids.len();
        let ids = Tensor::from_vec(ids, rows, &Device::Cpu)?;
        // candle's embedding lookup checks every id against the table.
        let mut out = candle_nn::Embedding::new(self.word.clone(), h)
            .forward(&ids)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut row = 0;
        for input in inputs {
            for position in 0..input.ids.len() {
                let type_id = input.type_ids.get(position).copied().unwrap_or(0);
                let (Some(position), Some(token_type)) = (
                    self.position.get(position * h..(position + 1) * h),
                    usize::try_from(type_id)
                        .ok()
                        .and_then(|t| self.token_type.get(t * h..(t + 1) * h)),
                ) else {
                    candle_core::bail!(
                        "position {position} or token type {type_id} is past the model's tables"
                    );
                };
                for ((o, p), t) in out[row * h..(row + 1) * h]
                    .iter_mut()
                    .zip(position)
                    .zip(token_type)
                {
                    *o += p + t;
                }
                row += 1;
            }
        }
        par_rows(&mut out, h, |rows| self.embedding_norm.apply(rows));
        Ok(out)
    }

    fn layer(
        &self,
        layer: &Layer,
        packing: &Packing,
        hidden: &mut [f32],
    ) -> candle_core::Result<()> {
        let h = self.hidden;
        let rows = packing.rows();

        // Self-attention: one product for the query, key and value projections, bias added.
        let qkv = layer
            .qkv
            .product(Tensor::from_slice(hidden, (rows, h), &Device::Cpu)?)?;
        let qkv = with_values(&qkv, |values| {
            let mut qkv = values.to_vec();
            par_rows(&mut qkv, 3 * h, |rows| add_bias(rows, &layer.qkv.bias));
            qkv
        })?;
        let mut context = vec![0.0f32; rows * h];
        context
            .par_chunks_mut(h)
            .enumerate()
            .with_min_len(ROWS_PER_TASK / 2)
            .for_each_init(Vec::new, |scores, (row, out)| {
                attend_row(&qkv, row, packing.span_of(row), self.heads, out, scores);
            });
        let context = Tensor::from_vec(context, (rows, h), &Device::Cpu)?;
        let projected = layer.attention_out.product(context)?;
        with_values(&projected, |projected| {
            par_residual(
                hidden,
                projected,
                &layer.attention_out.bias,
                &layer.attention_norm,
            )
        })?;

        // Feed-forward: bias and activation in one pass, then bias, residual and norm in one.
        let inner =
            layer
                .intermediate
                .product(Tensor::from_slice(hidden, (rows, h), &Device::Cpu)?)?;
        let width = layer.intermediate.bias.len();
        let mut inner = with_values(&inner, <[f32]>::to_vec)?;
        par_rows(&mut inner, width, |rows| {
            bias_activation(rows, &layer.intermediate.bias, self.activation)
        });
        let inner = Tensor::from_vec(inner, (rows, width), &Device::Cpu)?;
        let projected = layer.output.product(inner)?;
        with_values(&projected, |projected| {
            par_residual(hidden, projected, &layer.output.bias, &layer.output_norm)
        })
    }
}

fn add_bias(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (x, b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

/// Runs `step` over blocks of whole rows of `width` values, in parallel.
fn par_rows(values: &mut [f32], width: usize, step: impl Fn(&mut [f32]) + Send + Sync) {
    values.par_chunks_mut(width * ROWS_PER_TASK).for_each(step);
}

/// `hidden = norm(hidden + projected + bias)` over blocks of rows, in parallel.
fn par_residual(hidden: &mut [f32], projected: &[f32], bias: &[f32], norm: &Norm) {
    let block = bias.len() * ROWS_PER_TASK;
    hidden
        .par_chunks_mut(block)
        .zip(projected.par_chunks(block))
        .for_each(|(hidden, projected)| norm.residual(hidden, projected, bias));
}

/// Calls `read` with the values of a contiguous f32 tensor on the CPU, without copying them.
fn with_values<R>(tensor: &Tensor, read: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) => {
            Ok(read(&values[start..end]))
        }
        _ => candle_core::bail!("expected a contiguous f32 tensor on the CPU"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::DType;
    use candle_transformers::models::bert::BertModel;

    use super::*;

    /// A tiny BERT with random weights under the checkpoint's tensor names.
    fn random_bert(config: &Config) -> VarBuilder<'static> {
        let device = Device::Cpu;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![config.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![config.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![config.type_vocab_size, h],
            ),
        ];
        let norm = |prefix: String, shapes: &mut Vec<(String, Vec<usize>)>| {
            shapes.push((format!("{prefix}.weight"), vec![h]));
            shapes.push((format!("{prefix}.bias"), vec![h]));
        };
        norm("embeddings.LayerNorm".into(), &mut shapes);
        for layer in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{layer}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                shapes.push((format!("{p}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("{p}.{name}.bias"), vec![out]));
            }
            norm(format!("{p}.attention.output.LayerNorm"), &mut shapes);
            norm(format!("{p}.output.LayerNorm"), &mut shapes);
        }
        let tensors: HashMap<String, Tensor> = shapes
            .into_iter()
            .map(|(name, shape)| {
                let t = Tensor::randn(0f32, 0.5, shape, &device).unwrap();
                (name, t)
            })
            .collect();
        VarBuilder::from_tensors(tensors, DType::F32, &device)
    }

    fn tiny_config(act: HiddenAct) -> Config {
        Config {
            vocab_size: 40,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 24,
            hidden_act: act,
            max_position_embeddings: 32,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            ..Config::default()
        }
    }

    #[test]
    fn packed_matches_candles_padded_model_on_uneven_inputs() {
        for act in [HiddenAct::Gelu, HiddenAct::GeluApproximate, HiddenAct::Relu] {
            let config = tiny_config(act);
            let vb = random_bert(&config);
            let packed = PackedBert::load(&vb, &config).unwrap();
            let padded = BertModel::load(vb, &config).unwrap();
            let inputs: [(&[u32], &[u32]); 3] = [
                (&[1, 5, 9, 2], &[0, 0, 1, 1]),
                (&[1, 2], &[0, 0]),
                (&[1, 30, 31, 32, 33, 34, 39, 2], &[0; 8]),
            ];
            let sequences: Vec<Sequence<'_>> = inputs
                .iter()
                .map(|(ids, type_ids)| Sequence { ids, type_ids })
                .collect();
            let states = packed.forward(&sequences).unwrap();
            let mut row = 0;
            for (ids, type_ids) in inputs {
                // One input alone needs no mask: the reference for its rows.
                let len = ids.len();
                let ids_t = Tensor::from_slice(ids, (1, len), &Device::Cpu).unwrap();
                let types_t = Tensor::from_slice(type_ids, (1, len), &Device::Cpu).unwrap();
                let expected: Vec<f32> = padded
                    .forward(&ids_t, &types_t, None)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let got = &states[row * 16..(row + len) * 16];
                let worst = expected
                    .iter()
                    .zip(got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-5, "{act:?}: largest difference {worst:e}");
                row += len;
            }
        }
    }

    #[test]
    fn ids_past_the_tables_are_errors_not_panics() {
        let config = tiny_config(HiddenAct::Gelu);
        let packed = PackedBert::load(&random_bert(&config), &config).unwrap();
        let forward = |ids: &[u32], type_ids: &[u32]| packed.forward(&[Sequence { ids, type_ids }]);
        assert!(forward(&[1, 40], &[0, 0]).is_err());
        assert!(forward(&[1, 2], &[0, 2]).is_err());
        assert!(forward(&[1; 33], &[0; 33]).is_err());
        assert!(forward(&[1; 32], &[0; 32]).is_ok());
    }
}
