//! One transformer block: pre-norm attention and a SwiGLU MLP, each added to the residual.
//!
//! Projections and the MLP run over the rows of every sequence in a batch at once; attention
//! runs per sequence against its own cache ([`super::attention`]).

use candle_core::{D, Module, Tensor};
use candle_nn::RmsNorm;

use crate::kernels::QLinear;
use crate::model::decoder::{
    DecoderConfig,
    source::{Names, Part, Source, matrix_shape},
};

/// `x @ w.T + b`, the bias optional.
pub(crate) struct Linear {
    weight: QLinear,
    bias: Option<Tensor>,
}

impl Linear {
    fn load(
        source: &mut dyn Source,
        name: &str,
        shape: Option<(usize, usize)>,
    ) -> candle_core::Result<Self> {
        let weight = QLinear::new(source.matrix(&format!("{name}.weight"), shape)?);
        let bias_name = format!("{name}.bias");
        let bias = if source.has(&bias_name) {
            Some(source.vector(&bias_name)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.add_bias(self.weight.forward(x)?)
    }

    /// [`Linear::forward`] of projections of the same input, which is quantized once.
    fn forward_shared<const N: usize>(
        linears: [&Self; N],
        x: &Tensor,
    ) -> candle_core::Result<[Tensor; N]> {
        let ys = QLinear::forward_shared(linears.map(|l| &l.weight), x)?;
        let mut out = Vec::with_capacity(N);
        for (linear, y) in linears.iter().zip(ys) {
            out.push(linear.add_bias(y)?);
        }
        out.try_into()
            .map_err(|_| candle_core::Error::Msg("one output per projection".into()))
    }

    fn add_bias(&self, y: Tensor) -> candle_core::Result<Tensor> {
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

/// The query, key and value projections, separate or fused.
enum Qkv {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// One matrix whose output is `[q | k | v]`.
    Fused(Linear),
}

/// The gate and up projections, separate or fused (`[gate | up]`).
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

/// The weights of one block.
pub(crate) struct Block {
    attn_norm: RmsNorm,
    qkv: Qkv,
    /// Per-head RMSNorm of queries and keys before the rotation (Qwen3).
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    o: Linear,
    ffn_norm: RmsNorm,
    gate_up: GateUp,
    down: Linear,
}

impl Block {
    /// Loads block `layer`. Fused projections, biases and q/k norms are used when the
    /// checkpoint has them.
    pub(crate) fn load(
        source: &mut dyn Source,
        names: &Names,
        config: &DecoderConfig,
        layer: usize,
    ) -> candle_core::Result<Self> {
        let name = |part| (names.block)(layer, part);
        let eps = config.rms_norm_eps;
        let linear = |source: &mut dyn Source, part| {
            Linear::load(source, &name(part), matrix_shape(config, part))
        };
        let norm = |source: &mut dyn Source, part| -> candle_core::Result<RmsNorm> {
            Ok(RmsNorm::new(
                source.vector(&format!("{}.weight", name(part)))?,
                eps,
            ))
        };
        let optional_norm = |source: &mut dyn Source, part| -> candle_core::Result<_> {
            if source.has(&format!("{}.weight", name(part))) {
                Ok(Some(norm(source, part)?))
            } else {
                Ok(None)
            }
        };
        let qkv = if source.has(&format!("{}.weight", name(Part::Qkv))) {
            Qkv::Fused(linear(source, Part::Qkv)?)
        } else {
            Qkv::Separate {
                q: linear(source, Part::Q)?,
                k: linear(source, Part::K)?,
                v: linear(source, Part::V)?,
            }
        };
        let gate_up = if source.has(&format!("{}.weight", name(Part::Gate))) {
            GateUp::Separate {
                gate: linear(source, Part::Gate)?,
                up: linear(source, Part::Up)?,
            }
        } else {
            GateUp::Fused(linear(source, Part::GateUp)?)
        };
        Ok(Self {
            attn_norm: norm(source, Part::AttnNorm)?,
            qkv,
            q_norm: optional_norm(source, Part::QNorm)?,
            k_norm: optional_norm(source, Part::KNorm)?,
            o: linear(source, Part::O)?,
            ffn_norm: norm(source, Part::FfnNorm)?,
            gate_up,
            down: linear(source, Part::Down)?,
        })
    }

    pub(crate) fn attn_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.attn_norm.forward(x)
    }

    /// Queries `[rows, heads, head_dim]`, keys and values `[rows, kv_heads, head_dim]` of the
    /// normed rows `x` (`[rows, hidden]`), q/k norms applied.
    pub(crate) fn qkv(
        &self,
        x: &Tensor,
        config: &DecoderConfig,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = match &self.qkv {
            Qkv::Separate { q, k, v } => {
                let [q, k, v] = Linear::forward_shared([q, k, v], x)?;
                (q, k, v)
            }
            Qkv::Fused(qkv) => {
                let all = qkv.forward(x)?;
                let (q_w, kv_w) = (config.q_width(), config.kv_width());
                (
                    all.narrow(D::Minus1, 0, q_w)?,
                    all.narrow(D::Minus1, q_w, kv_w)?,
                    all.narrow(D::Minus1, q_w + kv_w, kv_w)?,
                )
            }
        };
        let rows = x.dim(0)?;
        let heads = |t: Tensor, n: usize| t.reshape((rows, n, config.head_dim));
        let mut q = heads(q, config.num_heads)?;
        let mut k = heads(k, config.num_kv_heads)?;
        if let Some(norm) = &self.q_norm {
            q = norm.forward(&q.contiguous()?)?;
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(&k.contiguous()?)?;
        }
        Ok((q, k, heads(v, config.num_kv_heads)?))
    }

    /// The output projection of attention outputs `[rows, heads * head_dim]`.
    pub(crate) fn o(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.o.forward(x)
    }

    /// The MLP half: `x + down(silu(gate(n)) * up(n))` with `n = ffn_norm(x)`.
    pub(crate) fn mlp(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.ffn_norm.forward(x)?;
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => {
                let [gate, up] = Linear::forward_shared([gate, up], &h)?;
                (gate, up)
            }
            GateUp::Fused(gate_up) => {
                let both = gate_up.forward(&h)?;
                let half = both.dim(D::Minus1)? / 2;
                (
                    both.narrow(D::Minus1, 0, half)?,
                    both.narrow(D::Minus1, half, half)?,
                )
            }
        };
        let h = crate::kernels::swiglu::swiglu(&gate, &up)?;
        x + self.down.forward(&h)?
    }
}
