//! Attention of one new position against a sequence's cached keys and values (a decoding
//! step): per query head, its scores against the visible keys, their softmax, and the values
//! weighted by it. Candle's batched products take longer to set up than to compute for one
//! query row (and ask the OS for the CPU count on every call), so decoding uses this kernel
//! where the CPU has AVX-512, and the caller's candle path otherwise.

use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

/// Keys or values of one layer, `[kv_heads, positions, head_dim]` in a CPU tensor whose rows
/// are contiguous (the cache's buffers, narrowed to the filled positions).
struct Heads<'a> {
    data: &'a [f32],
    start: usize,
    head_stride: usize,
}

impl Heads<'_> {
    /// Rows `rows` of head `h`, `d` values each.
    fn rows(&self, h: usize, rows: std::ops::Range<usize>, d: usize) -> &[f32] {
        let at = self.start + h * self.head_stride;
        &self.data[at + rows.start * d..at + rows.end * d]
    }
}

/// One sequence's decoding step at one layer: its query row, rotated (`[1, heads, 1,
/// head_dim]`), and its keys and values including the new position (`[kv_heads, positions,
/// head_dim]`).
pub(crate) struct Step<'t> {
    pub q: &'t Tensor,
    pub k: &'t Tensor,
    pub v: &'t Tensor,
}

/// `softmax(scale * q . K^T) V` of each step's query heads (grouped `groups` to a key head),
/// seeing the last `window` positions when given: `[steps, heads * head_dim]`, every head of
/// every step in one parallel pass. `None` where this kernel does not apply (no AVX-512,
/// another dtype or device, a head size it does not take).
pub(crate) fn decode(
    steps: &[Step<'_>],
    groups: usize,
    scale: f32,
    window: Option<usize>,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = super::x86::Avx512::detect() {
        return decode_with(avx512, steps, groups, scale, window);
    }
    let _ = (steps, groups, scale, window);
    Ok(None)
}

#[cfg(target_arch = "x86_64")]
fn decode_with(
    avx512: super::x86::Avx512,
    steps: &[Step<'_>],
    groups: usize,
    scale: f32,
    window: Option<usize>,
) -> candle_core::Result<Option<Tensor>> {
    let Some(first) = steps.first() else {
        return Ok(None);
    };
    let (kv_heads, _, d) = first.k.dims3()?;
    let heads = kv_heads * groups;
    let mut queries = Vec::with_capacity(steps.len());
    for step in steps {
        let (_, positions, step_d) = step.k.dims3()?;
        if [step.q.dtype(), step.k.dtype(), step.v.dtype()] != [DType::F32; 3]
            || !step.q.device().is_cpu()
            || !avx512.attends(d)
            || step_d != d
            || step.k.dim(0)? != kv_heads
            || step.v.dims() != step.k.dims()
            || step.q.elem_count() != heads * d
            || positions == 0
        {
            return Ok(None);
        }
        queries.push(step.q.flatten_all()?.contiguous()?);
    }
    let guards: Vec<_> = steps
        .iter()
        .zip(&queries)
        .map(|(step, q)| {
            (
                q.storage_and_layout(),
                step.k.storage_and_layout(),
                step.v.storage_and_layout(),
            )
        })
        .collect();
    let mut views = Vec::with_capacity(steps.len());
    for ((q, q_layout), (k, k_layout), (v, v_layout)) in &guards {
        let (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v)) = (&**q, &**k, &**v) else {
            return Ok(None);
        };
        let view = |data, layout: &candle_core::Layout| {
            let stride = layout.stride();
            (stride[1] == d && stride[2] == 1).then(|| Heads {
                data,
                start: layout.start_offset(),
                head_stride: stride[0],
            })
        };
        let (Some(keys), Some(values)) = (
            view(k.as_slice::<f32>()?, k_layout),
            view(v.as_slice::<f32>()?, v_layout),
        ) else {
            return Ok(None);
        };
        let query = &q.as_slice::<f32>()?[q_layout.start_offset()..][..heads * d];
        let positions = k_layout.dims()[1];
        let visible = positions.saturating_sub(window.unwrap_or(positions))..positions;
        views.push((query, keys, values, visible));
    }
    let mut out = vec![0f32; steps.len() * heads * d];
    out.par_chunks_mut(d).enumerate().for_each(|(task, out)| {
        let (query, keys, values, visible) = &views[task / heads];
        let h = task % heads;
        avx512.attend(
            &query[h * d..(h + 1) * d],
            keys.rows(h / groups, visible.clone(), d),
            values.rows(h / groups, visible.clone(), d),
            scale,
            out,
        );
    });
    Ok(Some(Tensor::from_vec(
        out,
        (steps.len(), heads * d),
        first.q.device(),
    )?))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::kernels::tests::max_abs_diff;

    /// The same attention with candle's operations, as the decoder computed it before.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, groups: usize, scale: f64) -> Tensor {
        let (kv_heads, _, d) = k.dims3().unwrap();
        let q = q.reshape((kv_heads, groups, d)).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let weights = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        weights
            .matmul(&v.contiguous().unwrap())
            .unwrap()
            .reshape((1, kv_heads * groups * d))
            .unwrap()
    }

    #[test]
    fn decoding_attention_matches_candles_products_over_cache_views_and_windows() {
        if !cfg!(target_arch = "x86_64") || !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let device = Device::Cpu;
        for (kv_heads, groups, d, positions) in [(2, 7, 64, 37), (1, 1, 16, 1), (4, 2, 96, 300)] {
            // Buffers with room for more positions than are filled, as the cache keeps them.
            let buffer = |mean: f32| {
                let t = Tensor::randn(mean, 1.0, (kv_heads, positions + 5, d), &device).unwrap();
                t.narrow(1, 0, positions).unwrap()
            };
            let (k, v) = (buffer(0.0), buffer(0.5));
            let q = Tensor::randn(0f32, 1.0, (1, kv_heads * groups, 1, d), &device).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            for window in [None, Some(positions.div_ceil(2))] {
                let step = Step {
                    q: &q,
                    k: &k,
                    v: &v,
                };
                let ours = decode(&[step], groups, scale as f32, window)
                    .unwrap()
                    .expect("the kernel takes these heads");
                let visible = window.map_or(positions, |w| w.min(positions));
                let (k, v) = (
                    k.narrow(1, positions - visible, visible).unwrap(),
                    v.narrow(1, positions - visible, visible).unwrap(),
                );
                let theirs = reference(&q, &k, &v, groups, scale);
                let diff = max_abs_diff(&ours, &theirs);
                assert!(
                    diff < 1e-5,
                    "{kv_heads}x{groups} heads of {d}, {window:?}: {diff}"
                );
            }
        }
    }
}
