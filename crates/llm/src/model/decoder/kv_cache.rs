//! The keys and values of one sequence.

use candle_core::Tensor;

/// The keys and values one sequence has computed, per layer, `[1, kv_heads, len, head_dim]`.
///
/// One value per sequence; the decoder's weights are shared. Cloning is cheap (tensors are
/// reference-counted, not copied) and a clone is a snapshot: a prompt prefix computed once can be
/// cloned and extended by every sequence that starts with it.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// The tokens of the cached positions (a sequence whose rotation changes is run again).
    tokens: Vec<u32>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("len", &self.len())
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl KvCache {
    /// An empty cache: the next forward starts a sequence at position 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions cached: the position the next token takes.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens whose keys and values are cached, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.layers.clear();
        self.tokens.clear();
    }

    /// Keeps the first `len` positions and forgets the rest (nothing when it holds no more), so
    /// that a snapshot of a longer sequence can start another one sharing its beginning. The
    /// tensors are narrowed, not copied.
    pub fn truncate(&mut self, len: usize) -> candle_core::Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        if len == 0 {
            self.clear();
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, 0, len)?;
            *v = v.narrow(2, 0, len)?;
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// Appends `k` and `v` of new positions to `layer` and returns the whole layer's keys and
    /// values. The length advances only through [`KvCache::advance`], once every layer has run.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (k, v) = match self.layers[layer].take() {
            Some((past_k, past_v)) => (
                Tensor::cat(&[&past_k, &k], 2)?,
                Tensor::cat(&[&past_v, &v], 2)?,
            ),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Records that every layer now holds `tokens` after the previous positions.
    pub(crate) fn advance(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Drops whatever a failed forward appended past [`KvCache::len`], so the cache is as it
    /// was before that forward.
    pub(crate) fn roll_back(&mut self) {
        let len = self.len();
        for layer in &mut self.layers {
            let kept = match layer.take() {
                Some(_) if len == 0 => None,
                Some((k, v)) => match (k.narrow(2, 0, len), v.narrow(2, 0, len)) {
                    (Ok(k), Ok(v)) => Some((k, v)),
                    // Shorter than `len` cannot happen; dropping the layer is the safe answer.
                    _ => None,
                },
                None => None,
            };
            *layer = kept;
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn positions(n: usize) -> Tensor {
        Tensor::zeros((1, 1, n, 2), candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn truncating_keeps_the_first_positions() {
        let mut cache = KvCache::new();
        for layer in 0..2 {
            cache.append(layer, positions(5), positions(5)).unwrap();
        }
        cache.advance(&[1, 2, 3, 4, 5]);
        let mut cut = cache.clone();
        cut.truncate(2).unwrap();
        assert_eq!(cut.tokens(), &[1, 2]);
        let (k, _) = cut.append(1, positions(1), positions(1)).unwrap();
        assert_eq!(k.dim(2).unwrap(), 3);
        assert_eq!(cache.len(), 5, "the original is untouched");
        cut.truncate(9).unwrap();
        assert_eq!(cut.len(), 2);
        cut.truncate(0).unwrap();
        assert!(cut.is_empty());
    }

    #[test]
    fn a_failed_pass_is_rolled_back_to_the_last_complete_one() {
        let mut cache = KvCache::new();
        for layer in 0..2 {
            cache.append(layer, positions(3), positions(3)).unwrap();
        }
        cache.advance(&[1, 2, 3]);
        // A pass that got through layer 0 only.
        cache.append(0, positions(2), positions(2)).unwrap();
        cache.roll_back();
        let (k, _) = cache.append(0, positions(1), positions(1)).unwrap();
        assert_eq!(k.dim(2).unwrap(), 4);
        let mut fresh = KvCache::new();
        fresh.append(0, positions(2), positions(2)).unwrap();
        fresh.roll_back();
        assert!(fresh.layers.iter().all(Option::is_none));
    }
}
