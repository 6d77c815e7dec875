//! The keys and values of one sequence.

use std::sync::Arc;

use candle_core::Tensor;

/// The keys and values one sequence has computed, per layer.
///
/// One value per sequence; the decoder's weights are shared. Each layer keeps its keys and
/// values in buffers with room to grow, written in place, so a decoding step does not copy the
/// whole cache. Cloning is cheap (the buffers are shared, not copied) and a clone is a snapshot:
/// a prompt prefix computed once can be cloned and extended by every sequence that starts with
/// it. Whichever clone writes first while the buffers are shared copies them (copy on write).
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// The tokens of the cached positions (a sequence whose rotation changes is run again).
    tokens: Vec<u32>,
    /// Held by every clone sharing these buffers: more than one holder means writing in place
    /// would change another clone's positions.
    owners: Arc<()>,
}

/// One layer's buffers, `[kv_heads, capacity, head_dim]`, of which the first `filled`
/// positions are written.
#[derive(Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    filled: usize,
}

impl LayerKv {
    /// Buffers for `capacity` positions of keys and values shaped like `k` and `v`.
    fn empty(k: &Tensor, v: &Tensor, capacity: usize) -> candle_core::Result<Self> {
        let buffer = |t: &Tensor| -> candle_core::Result<Tensor> {
            let (heads, _, d) = t.dims3()?;
            Tensor::zeros((heads, capacity, d), t.dtype(), t.device())
        };
        Ok(Self {
            k: buffer(k)?,
            v: buffer(v)?,
            filled: 0,
        })
    }

    fn capacity(&self) -> usize {
        self.k.dims()[1]
    }

    /// A private copy of the first `filled` positions, in buffers of `capacity` positions.
    fn copied(&self, capacity: usize) -> candle_core::Result<Self> {
        let mut copy = Self::empty(&self.k, &self.v, capacity)?;
        if self.filled > 0 {
            let written = |t: &Tensor| t.narrow(1, 0, self.filled)?.contiguous();
            copy.k.slice_set(&written(&self.k)?, 1, 0)?;
            copy.v.slice_set(&written(&self.v)?, 1, 0)?;
        }
        copy.filled = self.filled;
        Ok(copy)
    }
}

/// Room for `needed` positions: half as much again as `capacity` at least, so that a sequence
/// growing a token at a time is copied a logarithmic number of times.
fn grown_capacity(capacity: usize, needed: usize) -> usize {
    needed.max(capacity + capacity / 2).next_multiple_of(16)
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
    /// that a snapshot of a longer sequence can start another one sharing its beginning. Nothing
    /// is copied.
    pub fn truncate(&mut self, len: usize) -> candle_core::Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        if len == 0 {
            self.clear();
            return Ok(());
        }
        for layer in self.layers.iter_mut().flatten() {
            layer.filled = layer.filled.min(len);
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// Appends `k` and `v` of new positions, `[kv_heads, new, head_dim]`, to `layer` and returns
    /// the whole layer's keys and values, `[kv_heads, positions, head_dim]`. The length advances
    /// only through [`KvCache::advance`], once every layer has run.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if Arc::strong_count(&self.owners) > 1 {
            self.make_private()?;
        }
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let new = k.dim(1)?;
        let slot = &mut self.layers[layer];
        let filled = slot.as_ref().map_or(0, |kv| kv.filled);
        let needed = filled + new;
        let replacement = match slot.as_ref() {
            Some(kv) if kv.capacity() >= needed => None,
            Some(kv) => Some(kv.copied(grown_capacity(kv.capacity(), needed))?),
            None => Some(LayerKv::empty(k, v, needed)?),
        };
        let kv = match (replacement, slot) {
            (Some(replacement), slot) => slot.insert(replacement),
            (None, Some(kv)) => kv,
            (None, None) => candle_core::bail!("layer {layer} of the cache has no buffers"),
        };
        kv.k.slice_set(&k.contiguous()?, 1, filled)?;
        kv.v.slice_set(&v.contiguous()?, 1, filled)?;
        kv.filled = needed;
        Ok((kv.k.narrow(1, 0, needed)?, kv.v.narrow(1, 0, needed)?))
    }

    /// Gives this clone buffers of its own, holding its positions.
    fn make_private(&mut self) -> candle_core::Result<()> {
        for layer in self.layers.iter_mut().flatten() {
            *layer = layer.copied(grown_capacity(layer.filled, layer.filled + 1))?;
        }
        self.owners = Arc::new(());
        Ok(())
    }

    /// Records that every layer now holds `tokens` after the previous positions.
    pub(crate) fn advance(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Forgets whatever a failed forward appended past [`KvCache::len`], so the cache is as it
    /// was before that forward.
    pub(crate) fn roll_back(&mut self) {
        let len = self.len();
        if len == 0 {
            self.layers.clear();
            return;
        }
        for layer in self.layers.iter_mut().flatten() {
            layer.filled = layer.filled.min(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn positions(n: usize) -> Tensor {
        Tensor::zeros((1, n, 2), candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn truncating_keeps_the_first_positions() {
        let mut cache = KvCache::new();
        for layer in 0..2 {
            cache.append(layer, &positions(5), &positions(5)).unwrap();
        }
        cache.advance(&[1, 2, 3, 4, 5]);
        let mut cut = cache.clone();
        cut.truncate(2).unwrap();
        assert_eq!(cut.tokens(), &[1, 2]);
        let (k, _) = cut.append(1, &positions(1), &positions(1)).unwrap();
        assert_eq!(k.dim(1).unwrap(), 3);
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
            cache.append(layer, &positions(3), &positions(3)).unwrap();
        }
        cache.advance(&[1, 2, 3]);
        // A pass that got through layer 0 only.
        cache.append(0, &positions(2), &positions(2)).unwrap();
        cache.roll_back();
        let (k, _) = cache.append(0, &positions(1), &positions(1)).unwrap();
        assert_eq!(k.dim(1).unwrap(), 4);
        let mut fresh = KvCache::new();
        fresh.append(0, &positions(2), &positions(2)).unwrap();
        fresh.roll_back();
        assert!(fresh.layers.iter().all(Option::is_none));
    }

    fn filled(values: &[f32]) -> Tensor {
        Tensor::from_slice(values, (1, values.len(), 1), &Device::Cpu).unwrap()
    }

    fn keys(k: &Tensor) -> Vec<f32> {
        k.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn clones_extending_a_shared_snapshot_do_not_see_each_other() {
        let mut prompt = KvCache::new();
        prompt
            .append(0, &filled(&[1.0, 2.0]), &filled(&[1.0, 2.0]))
            .unwrap();
        prompt.advance(&[1, 2]);
        let (mut a, mut b) = (prompt.clone(), prompt.clone());
        let (ka, _) = a.append(0, &filled(&[3.0]), &filled(&[3.0])).unwrap();
        a.advance(&[3]);
        let (kb, _) = b.append(0, &filled(&[4.0]), &filled(&[4.0])).unwrap();
        b.advance(&[4]);
        assert_eq!(keys(&ka), [1.0, 2.0, 3.0]);
        assert_eq!(keys(&kb), [1.0, 2.0, 4.0]);
        // Growing in place, past the first buffers' room, keeps every position.
        for step in 0..40 {
            a.append(0, &filled(&[step as f32]), &filled(&[0.0]))
                .unwrap();
            a.advance(&[0]);
        }
        let (ka, _) = a.append(0, &filled(&[-1.0]), &filled(&[0.0])).unwrap();
        let expected: Vec<f32> = [1.0, 2.0, 3.0]
            .into_iter()
            .chain((0..40).map(|s| s as f32))
            .chain([-1.0])
            .collect();
        assert_eq!(keys(&ka), expected);
        // The snapshot still holds its own two positions, and extends from them.
        let (kp, _) = prompt.append(0, &filled(&[5.0]), &filled(&[5.0])).unwrap();
        assert_eq!(keys(&kp), [1.0, 2.0, 5.0]);
    }
}
