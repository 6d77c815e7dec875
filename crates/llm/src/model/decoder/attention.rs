//! Scaled dot-product attention of one sequence's new positions against its cache.

use candle_core::{Device, Tensor};

use crate::{
    kernels,
    model::decoder::{DecoderConfig, kv_cache::KvCache, rope::Rope},
};

/// What attention needs of one sequence in a forward pass, shared by every layer.
pub(crate) struct Positions {
    /// Position of the first new token (the cache length before the pass).
    pub start: usize,
    pub len: usize,
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Positions {
    pub(crate) fn new(
        rope: &Rope,
        start: usize,
        len: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let (cos, sin) = rope.tables(start, len, device)?;
        Ok(Self {
            start,
            len,
            cos,
            sin,
        })
    }
}

/// `-inf` where query `start + i` may not see key `j`: keys after it, and with a `window`,
/// keys `window` or more positions back. `None` when every key is visible.
fn mask(
    positions: &Positions,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let (start, len) = (positions.start, positions.len);
    let total = start + len;
    let windowed = window.is_some_and(|w| total > w);
    if len == 1 && !windowed {
        return Ok(None);
    }
    let visible = |i: usize, j: usize| {
        let query = start + i;
        j <= query && window.is_none_or(|w| query - j < w)
    };
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if visible(i, j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(mask, (1, 1, len, total), device)?))
}

/// One sequence's queries at a layer, rotated (`[1, heads, len, head_dim]`), and that layer's
/// keys and values with its new positions appended (`[kv_heads, positions, head_dim]`).
pub(crate) struct Attending {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

/// The first half of one sequence's attention at `layer`: `[q, k, v]` of its new positions (not
/// yet rotated), `q` `[len, heads, head_dim]`, `k` and `v` `[len, kv_heads, head_dim]`, are
/// rotated, and the keys and values appended to `cache`.
pub(crate) fn prepare(
    [q, k, v]: [&Tensor; 3],
    layer: usize,
    rope: &Rope,
    positions: &Positions,
    cache: &mut KvCache,
) -> candle_core::Result<Attending> {
    // [len, heads, d] -> [1, heads, len, d]
    let heads = |t: &Tensor| t.unsqueeze(0)?.transpose(1, 2)?.contiguous();
    let q = rope.apply(&heads(q)?, &positions.cos, &positions.sin)?;
    let k = rope.apply(&heads(k)?, &positions.cos, &positions.sin)?;
    let (k, v) = cache.append(layer, &k.squeeze(0)?, &heads(v)?.squeeze(0)?)?;
    Ok(Attending { q, k, v })
}

/// Decoding steps of several sequences (one new position each) at `layer`, all at once:
/// `[sequences, heads * head_dim]`. `None` where the CPU kernel does not apply.
pub(crate) fn attend_decoding(
    sequences: &[Attending],
    layer: usize,
    config: &DecoderConfig,
) -> candle_core::Result<Option<Tensor>> {
    let steps: Vec<_> = sequences
        .iter()
        .map(|s| kernels::attention::Step {
            q: &s.q,
            k: &s.k,
            v: &s.v,
        })
        .collect();
    let scale = 1.0 / (config.head_dim as f64).sqrt();
    kernels::attention::decode(
        &steps,
        config.num_heads / config.num_kv_heads,
        scale as f32,
        config.window(layer),
    )
}

/// The second half of one sequence's attention at `layer`: `[len, heads * head_dim]`.
pub(crate) fn attend(
    attending: &Attending,
    layer: usize,
    config: &DecoderConfig,
    positions: &Positions,
) -> candle_core::Result<Tensor> {
    let len = positions.len;
    if len == 1
        && let Some(out) = attend_decoding(std::slice::from_ref(attending), layer, config)?
    {
        return Ok(out);
    }
    let Attending { q, k, v } = attending;
    // Grouped-query attention without copying the cache once per query head: the query heads
    // sharing a key head are stacked as rows, `[kv_heads, groups * len, d]`.
    let (kv_heads, groups, d) = (
        config.num_kv_heads,
        config.num_heads / config.num_kv_heads,
        config.head_dim,
    );
    let total = k.dim(1)?;
    let scale = 1.0 / (d as f64).sqrt();
    let q = q.reshape((kv_heads, groups * len, d))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask(positions, config.window(layer), q.device())? {
        Some(mask) => scores
            .reshape((kv_heads, groups, len, total))?
            .broadcast_add(&mask.squeeze(0)?)?
            .reshape((kv_heads, groups * len, total))?,
        None => scores,
    };
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    // [kv_heads, groups * len, d] -> [heads, len, d] -> [len, heads * d]
    weights
        .matmul(v)?
        .reshape((config.num_heads, len, d))?
        .transpose(0, 1)?
        .reshape((len, config.q_width()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::rope::{RopeConfig, RopeLayout};

    fn visible(start: usize, len: usize, window: Option<usize>) -> Option<Vec<Vec<bool>>> {
        let rope = Rope::new(
            &RopeConfig {
                theta: 10_000.0,
                layout: RopeLayout::Halves,
                scaling: None,
            },
            4,
        )
        .unwrap();
        let positions = Positions::new(&rope, start, len, &Device::Cpu).unwrap();
        let mask = mask(&positions, window, &Device::Cpu).unwrap()?;
        let rows: Vec<Vec<f32>> = mask
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        Some(
            rows.into_iter()
                .map(|r| r.into_iter().map(|x| x == 0.0).collect())
                .collect(),
        )
    }

    #[test]
    fn a_single_decode_step_needs_no_mask_unless_its_window_is_full() {
        assert!(visible(5, 1, None).is_none());
        assert!(visible(2, 1, Some(3)).is_none());
        // Query 3 with a window of 3 sees keys 1, 2 and 3.
        assert_eq!(
            visible(3, 1, Some(3)).unwrap(),
            vec![vec![false, true, true, true]]
        );
    }

    #[test]
    fn prefill_masks_the_future_and_beyond_the_window() {
        assert_eq!(
            visible(0, 3, Some(2)).unwrap(),
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![false, true, true],
            ]
        );
    }
}
