//! One namespace's vectors and the search for the one closest to a query.
//!
//! Vectors are unit length, so cosine similarity is their dot product. A namespace holding
//! fewer than [`SCAN_THRESHOLD`] vectors is searched by an exact scan: at that size it is
//! faster than a graph and never misses. From the threshold up, an HNSW graph (`hnsw_rs`)
//! answers instead. `hnsw_rs` cannot delete, so removed vectors become tombstones that the
//! search filters out; once tombstones pass [`REBUILD_TOMBSTONE_FRACTION`] of the graph it is
//! rebuilt from the live vectors, and when the namespace shrinks to half the threshold the
//! graph is dropped for the scan again (the gap keeps a namespace hovering at the threshold
//! from rebuilding on every insert).
//!
//! The index keeps the one full-precision copy of the vectors: the scan reads it, a rebuild
//! starts from it, and it re-scores the graph's best candidates exactly. The graph holds its
//! own copy as 8-bit integers ([`quantize`]), a quarter of the size: a search at 100,000
//! entries is bound by reading vectors from memory, and ranking candidates needs far less
//! precision than the similarity reported.
//!
//! A rebuild of a large graph (tens of seconds at 100,000 entries) runs on a thread of its own
//! while the old graph keeps answering: inserts and removals meanwhile go to both, and the new
//! graph takes over at the first call after it is complete.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use hnsw_rs::prelude::{Distance, Hnsw};

pub use crate::vector::dot;

/// Below this many vectors a namespace is scanned; from it up, searched through HNSW.
/// At 384 dimensions a 512-vector scan costs about as much as a graph search.
pub const SCAN_THRESHOLD: usize = 512;

/// A graph whose tombstones exceed this fraction of its points is rebuilt.
pub const REBUILD_TOMBSTONE_FRACTION: f32 = 0.25;

/// Graphs of at least this many live vectors are rebuilt in the background; smaller ones,
/// which take well under a second, in place.
pub const BACKGROUND_REBUILD_FROM: usize = 4096;

/// HNSW `M`: links per point and layer (16 is the usual choice for a few hundred dimensions).
const MAX_CONNECTIONS: usize = 16;
/// Candidates explored while inserting: build quality against insert cost.
const EF_CONSTRUCTION: usize = 100;
/// Candidates explored while searching (and returned, so that tombstones among them still
/// leave live ones): recall against latency.
pub const EF_SEARCH: usize = 64;
/// Live candidates from the graph re-scored exactly, the best of which answers: more than
/// one, because the graph ranks by 8-bit approximations.
const NEIGHBOURS: usize = 8;
/// `hnsw_rs` caps its layers at 16.
const MAX_LAYERS: usize = 16;
/// Points a background rebuild inserts between checks for cancellation.
const REBUILD_CHUNK: usize = 1024;

/// When the index switches between scan and graph, and when and how a graph is rebuilt. The
/// service uses [`IndexTuning::default`]; tests shrink the sizes to reach the graph cheaply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexTuning {
    pub scan_threshold: usize,
    pub rebuild_fraction: f32,
    /// Graphs of at least this many live vectors rebuild on a background thread.
    pub background_rebuild_from: usize,
    /// Candidates a graph search explores (`ef`): recall against latency.
    pub ef_search: usize,
}

impl Default for IndexTuning {
    fn default() -> Self {
        Self {
            scan_threshold: SCAN_THRESHOLD,
            rebuild_fraction: REBUILD_TOMBSTONE_FRACTION,
            background_rebuild_from: BACKGROUND_REBUILD_FROM,
            ef_search: EF_SEARCH,
        }
    }
}

/// The vector given does not have the namespace's dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {found}-dimensional vector cannot join an index of {expected} dimensions")]
pub struct DimensionMismatch {
    pub expected: usize,
    pub found: usize,
}

/// A live vector and its similarity to a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub id: u64,
    pub similarity: f32,
}

/// Vectors of one dimension, searchable by cosine similarity.
#[derive(Debug)]
pub struct VectorIndex {
    tuning: IndexTuning,
    dimension: usize,
    /// Row `i` of `rows` belongs to `ids[i]`.
    ids: Vec<u64>,
    rows: Vec<f32>,
    position: HashMap<u64, usize>,
    graph: Option<Graph>,
    /// A replacement graph being built in the background.
    rebuild: Option<Rebuild>,
}

impl VectorIndex {
    pub fn new(dimension: usize, tuning: IndexTuning) -> Self {
        Self {
            tuning,
            dimension,
            ids: Vec::new(),
            rows: Vec::new(),
            position: HashMap::new(),
            graph: None,
            rebuild: None,
        }
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether searches go through the graph.
    pub fn uses_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Changes how many candidates later graph searches explore.
    pub fn set_ef_search(&mut self, ef_search: usize) {
        self.tuning.ef_search = ef_search;
    }

    /// Whether a replacement graph is being built in the background.
    pub fn rebuilding(&self) -> bool {
        self.rebuild.is_some()
    }

    /// Removed vectors the graph still holds.
    pub fn tombstones(&self) -> usize {
        self.graph
            .as_ref()
            .map_or(0, |graph| graph.tombstones.len())
    }

    /// Adds `vector` (unit length) under `id`, which must not be in the index.
    pub fn insert(&mut self, id: u64, vector: &[f32]) -> Result<(), DimensionMismatch> {
        self.extend([(id, vector)])
    }

    /// Adds many vectors at once, as [`Self::insert`] would one by one but with the graph
    /// work spread over rayon's threads.
    pub fn extend<'v>(
        &mut self,
        vectors: impl IntoIterator<Item = (u64, &'v [f32])>,
    ) -> Result<(), DimensionMismatch> {
        self.poll_rebuild();
        let first_new = self.len();
        for (id, vector) in vectors {
            if vector.len() != self.dimension {
                return Err(DimensionMismatch {
                    expected: self.dimension,
                    found: vector.len(),
                });
            }
            debug_assert!(!self.position.contains_key(&id), "{id} inserted twice");
            self.position.insert(id, self.ids.len());
            self.ids.push(id);
            self.rows.extend_from_slice(vector);
        }
        if self.graph.is_none() {
            if self.len() >= self.tuning.scan_threshold {
                self.graph = Some(Graph::build(&self.points(0..self.len())));
            }
            return Ok(());
        }
        let points = self.points(first_new..self.len());
        let refs = point_refs(&points);
        for hnsw in self
            .graph
            .iter()
            .map(|g| &g.hnsw)
            .chain(self.rebuild.iter().map(|r| &r.hnsw))
        {
            match refs.as_slice() {
                [one] => hnsw.insert_slice(*one),
                _ => hnsw.parallel_insert_slice(&refs),
            }
        }
        Ok(())
    }

    /// Removes `id`; false when it was not there.
    pub fn remove(&mut self, id: u64) -> bool {
        self.poll_rebuild();
        let Some(row) = self.position.remove(&id) else {
            return false;
        };
        // Swap-remove keeps the rows dense: the last row takes the removed one's place.
        let last = self.ids.len() - 1;
        self.ids.swap_remove(row);
        let (start, end) = (row * self.dimension, last * self.dimension);
        if row != last {
            self.rows.copy_within(end..end + self.dimension, start);
            self.position.insert(self.ids[row], row);
        }
        self.rows.truncate(end);
        let Some(graph) = &mut self.graph else {
            return true;
        };
        graph.tombstones.insert(graph_id(id));
        let crowded = graph.tombstones.len() as f32
            > self.tuning.rebuild_fraction * graph.hnsw.get_nb_point() as f32;
        if let Some(rebuild) = &mut self.rebuild {
            rebuild.tombstones.insert(graph_id(id));
        }
        if self.ids.len() < self.tuning.scan_threshold / 2 {
            self.graph = None;
            self.rebuild = None;
        } else if crowded && self.rebuild.is_none() {
            self.start_rebuild();
        }
        true
    }

    /// The live vector most similar to `query`, if any.
    pub fn nearest(&self, query: &[f32]) -> Option<Scored> {
        if query.len() != self.dimension {
            return None;
        }
        match &self.graph {
            Some(graph) => {
                // Unfiltered on purpose: `hnsw_rs` turns off its early exit when given a filter
                // and walks the whole graph (10 ms at 100,000 points instead of well under 1).
                // The `ef_search` closest come back sorted; tombstones are skipped here.
                let ef = self.tuning.ef_search.max(NEIGHBOURS);
                let best = graph
                    .hnsw
                    .search(&quantize(query), ef, ef)
                    .iter()
                    .filter(|neighbour| !graph.tombstones.contains(&neighbour.d_id))
                    .take(NEIGHBOURS)
                    .filter_map(|neighbour| {
                        let id = u64::try_from(neighbour.d_id).ok()?;
                        let row = *self.position.get(&id)?;
                        Some(Scored {
                            id,
                            similarity: dot(query, self.row(row)),
                        })
                    })
                    .max_by(|a, b| a.similarity.total_cmp(&b.similarity));
                // Every candidate removed (tombstones crowd one region): scan rather than miss.
                best.or_else(|| self.scan(query))
            }
            None => self.scan(query),
        }
    }

    /// Puts a finished background rebuild in the old graph's place. Every insert and removal
    /// does this first; lookups call it through [`super::semantic::SemanticCache`].
    pub fn poll_rebuild(&mut self) {
        if self
            .rebuild
            .as_ref()
            .is_some_and(|rebuild| rebuild.worker.as_ref().is_none_or(JoinHandle::is_finished))
        {
            self.finish_rebuild();
        }
    }

    /// Waits for a background rebuild, if one runs, and puts its graph in place.
    pub fn finish_rebuild(&mut self) {
        let Some(mut rebuild) = self.rebuild.take() else {
            return;
        };
        let built = rebuild
            .worker
            .take()
            .is_none_or(|worker| worker.join().is_ok());
        if built {
            self.graph = Some(Graph {
                hnsw: Arc::clone(&rebuild.hnsw),
                tombstones: std::mem::take(&mut rebuild.tombstones),
            });
        } else {
            // The old graph is still right, only slower; the next removal tries again.
            tracing::error!("rebuilding a semantic cache index panicked; keeping the old graph");
        }
    }

    fn scan(&self, query: &[f32]) -> Option<Scored> {
        (0..self.ids.len())
            .map(|row| Scored {
                id: self.ids[row],
                similarity: dot(query, self.row(row)),
            })
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
    }

    fn row(&self, row: usize) -> &[f32] {
        &self.rows[row * self.dimension..(row + 1) * self.dimension]
    }

    /// Rows `rows`, quantized for the graph, with their graph ids.
    fn points(&self, rows: std::ops::Range<usize>) -> Vec<(Vec<i8>, usize)> {
        rows.map(|row| (quantize(self.row(row)), graph_id(self.ids[row])))
            .collect()
    }

    /// A fresh graph over the live vectors: in place when small, else on a thread of its own
    /// while the current graph keeps answering.
    fn start_rebuild(&mut self) {
        let points = self.points(0..self.len());
        if self.len() < self.tuning.background_rebuild_from {
            self.graph = Some(Graph::build(&points));
            return;
        }
        let hnsw = Arc::new(Graph::empty(points.len()));
        let cancelled = Arc::new(AtomicBool::new(false));
        let (graph, cancel) = (Arc::clone(&hnsw), Arc::clone(&cancelled));
        let spawned = std::thread::Builder::new()
            .name("cache-index-rebuild".to_owned())
            .spawn(move || {
                for chunk in points.chunks(REBUILD_CHUNK) {
                    if cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    graph.parallel_insert_slice(&point_refs(chunk));
                }
            });
        match spawned {
            Ok(worker) => {
                self.rebuild = Some(Rebuild {
                    hnsw,
                    worker: Some(worker),
                    tombstones: HashSet::new(),
                    cancelled,
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "no thread for a background index rebuild; rebuilding in place");
                self.graph = Some(Graph::build(&self.points(0..self.len())));
            }
        }
    }
}

/// Entry ids are sequence numbers: they fit a `usize` on every 64-bit target this runs on.
fn graph_id(id: u64) -> usize {
    usize::try_from(id).unwrap_or(usize::MAX)
}

fn point_refs(points: &[(Vec<i8>, usize)]) -> Vec<(&[i8], usize)> {
    points.iter().map(|(v, id)| (v.as_slice(), *id)).collect()
}

type Hnsw8 = Hnsw<'static, i8, QuantizedDot>;

struct Graph {
    hnsw: Arc<Hnsw8>,
    /// Graph ids of removed vectors, hidden from searches until the next rebuild.
    tombstones: HashSet<usize>,
}

impl Graph {
    fn empty(capacity: usize) -> Hnsw8 {
        Hnsw::new(
            MAX_CONNECTIONS,
            capacity,
            MAX_LAYERS,
            EF_CONSTRUCTION,
            QuantizedDot,
        )
    }

    /// A graph of `points`, inserted in parallel.
    fn build(points: &[(Vec<i8>, usize)]) -> Self {
        let hnsw = Self::empty(points.len());
        hnsw.parallel_insert_slice(&point_refs(points));
        Self {
            hnsw: Arc::new(hnsw),
            tombstones: HashSet::new(),
        }
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("points", &self.hnsw.get_nb_point())
            .field("tombstones", &self.tombstones.len())
            .finish()
    }
}

/// A graph being built on another thread, and the removals it has to learn of.
struct Rebuild {
    hnsw: Arc<Hnsw8>,
    /// `None` once joined.
    worker: Option<JoinHandle<()>>,
    tombstones: HashSet<usize>,
    cancelled: Arc<AtomicBool>,
}

impl Drop for Rebuild {
    /// A rebuild nobody will use (the graph was dropped, or the index was) stops early.
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Rebuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuild")
            .field("points", &self.hnsw.get_nb_point())
            .field("tombstones", &self.tombstones.len())
            .finish()
    }
}

/// Bytes after the components: the vector's scale, an `f32`.
const SCALE_BYTES: usize = 4;

/// `vector` as the graph stores it: each component as an `i8` in units of the vector's largest
/// magnitude over 127, then that unit's four bytes. Rounding moves a dot product of unit
/// vectors by about 1e-3, which only reorders candidates that the exact re-scoring sorts out.
pub fn quantize(vector: &[f32]) -> Vec<i8> {
    let largest = vector.iter().fold(0f32, |m, x| m.max(x.abs()));
    let unit = if largest > 0.0 { largest / 127.0 } else { 1.0 };
    let mut quantized: Vec<i8> = vector
        .iter()
        // In range by construction; `as` saturates anyway.
        .map(|x| (x / unit).round() as i8)
        .collect();
    quantized.extend(unit.to_le_bytes().map(|b| b as i8));
    quantized
}

fn unit_of(quantized: &[i8]) -> (&[i8], f32) {
    let (components, scale) = quantized.split_at(quantized.len().saturating_sub(SCALE_BYTES));
    let mut bytes = [0u8; SCALE_BYTES];
    for (b, s) in bytes.iter_mut().zip(scale) {
        *b = *s as u8;
    }
    (components, f32::from_le_bytes(bytes))
}

/// `1 - dot` of two [`quantize`]d unit vectors, clamped at 0 (rounding can take the dot of
/// two equal vectors past 1; `hnsw_rs`'s own `DistDot` asserts it does not, and a panic here
/// would take the cache down).
#[derive(Debug, Clone, Copy, Default)]
struct QuantizedDot;

impl Distance<i8> for QuantizedDot {
    fn eval(&self, a: &[i8], b: &[i8]) -> f32 {
        let ((a, unit_a), (b, unit_b)) = (unit_of(a), unit_of(b));
        (1.0 - dot_i8(a, b) as f32 * unit_a * unit_b).max(0.0)
    }
}

/// Integer sums may be reordered freely, so this loop vectorises; the AVX2 and AVX-512 versions
/// (picked at run time) are about 5x faster than the baseline x86-64 one at 384 dimensions, and
/// this is most of a graph search's time.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

    use super::*;
    use crate::vector::l2_normalize;

    const DIM: usize = 32;

    fn random_unit(rng: &mut StdRng) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
        l2_normalize(&mut v);
        v
    }

    fn small_graph() -> IndexTuning {
        IndexTuning {
            scan_threshold: 16,
            rebuild_fraction: 0.25,
            ..IndexTuning::default()
        }
    }

    /// The exact answer, for comparison.
    fn brute_force(vectors: &HashMap<u64, Vec<f32>>, query: &[f32]) -> Option<u64> {
        vectors
            .iter()
            .max_by(|a, b| dot(query, a.1).total_cmp(&dot(query, b.1)))
            .map(|(id, _)| *id)
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
        let q = quantize(&[0.6, 0.8]);
        assert!(QuantizedDot.eval(&q, &q) < 5e-3);
        let (a, b) = (quantize(&[0.6, 0.8]), quantize(&[0.8, -0.6]));
        assert!((QuantizedDot.eval(&a, &b) - 1.0).abs() < 1e-2);
        assert_eq!(QuantizedDot.eval(&quantize(&[0.0, 0.0]), &a), 1.0);
    }

    #[test]
    fn the_scan_finds_the_most_similar_vector_and_forgets_removed_ones() {
        let mut index = VectorIndex::new(2, IndexTuning::default());
        assert_eq!(index.nearest(&[1.0, 0.0]), None);
        index.insert(1, &[1.0, 0.0]).unwrap();
        index.insert(2, &[0.0, 1.0]).unwrap();
        index.insert(3, &[0.6, 0.8]).unwrap();
        let best = index.nearest(&[0.8, 0.6]).unwrap();
        assert_eq!(best.id, 3);
        assert!((best.similarity - 0.96).abs() < 1e-6);
        assert!(index.remove(3));
        assert!(!index.remove(3));
        assert_eq!(index.nearest(&[0.8, 0.6]).unwrap().id, 1);
        assert_eq!(index.nearest(&[0.0, 1.0]).unwrap().id, 2);
        assert!(!index.uses_graph());
        assert_eq!(
            index.insert(4, &[1.0]),
            Err(DimensionMismatch {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn the_graph_takes_over_at_the_threshold_and_agrees_with_a_scan() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut index = VectorIndex::new(DIM, small_graph());
        let mut vectors = HashMap::new();
        for id in 0..200 {
            let v = random_unit(&mut rng);
            index.insert(id, &v).unwrap();
            vectors.insert(id, v);
            assert_eq!(index.uses_graph(), index.len() >= 16);
        }
        for (id, v) in &vectors {
            // Each stored vector is its own nearest neighbour, with similarity 1.
            let best = index.nearest(v).unwrap();
            assert_eq!(best.id, *id);
            assert!((best.similarity - 1.0).abs() < 1e-5);
        }
        let mut agree = 0;
        for _ in 0..50 {
            let query = random_unit(&mut rng);
            if index.nearest(&query).map(|n| n.id) == brute_force(&vectors, &query) {
                agree += 1;
            }
        }
        assert!(agree >= 48, "HNSW recall@1 {agree}/50");
    }

    #[test]
    fn tombstones_never_come_back_and_trigger_a_rebuild() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut index = VectorIndex::new(DIM, small_graph());
        let mut vectors = HashMap::new();
        for id in 0..100 {
            let v = random_unit(&mut rng);
            index.insert(id, &v).unwrap();
            vectors.insert(id, v);
        }
        let mut rebuilt = false;
        for id in 0..60 {
            let tombstones_before = index.tombstones();
            assert!(index.remove(id));
            let removed = vectors.remove(&id).unwrap();
            if index.uses_graph() && index.tombstones() < tombstones_before {
                rebuilt = true;
            }
            // The removed vector itself is never found again, even as its own query.
            assert_ne!(index.nearest(&removed).unwrap().id, id);
            assert!(index.tombstones() as f32 <= 0.25 * 100.0);
            for (live, v) in &vectors {
                assert_eq!(index.nearest(v).unwrap().id, *live);
            }
        }
        assert!(rebuilt, "a rebuild cleared the tombstones");
        assert_eq!(index.len(), 40);
        assert!(index.uses_graph());
        // Down to half the threshold: back to the exact scan.
        for id in 60..93 {
            index.remove(id);
            vectors.remove(&id);
        }
        assert!(!index.uses_graph());
        assert_eq!(index.tombstones(), 0);
        for (live, v) in &vectors {
            assert_eq!(index.nearest(v).unwrap().id, *live);
        }
    }

    #[test]
    fn a_background_rebuild_keeps_answering_and_learns_what_changed_meanwhile() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut index = VectorIndex::new(
            DIM,
            IndexTuning {
                background_rebuild_from: 0,
                ..small_graph()
            },
        );
        let mut vectors = HashMap::new();
        for id in 0..400 {
            let v = random_unit(&mut rng);
            index.insert(id, &v).unwrap();
            vectors.insert(id, v);
        }
        let mut id = 0;
        while !index.rebuilding() {
            assert!(index.remove(id));
            vectors.remove(&id);
            id += 1;
        }
        // While the new graph is built: removals and inserts, and every search right.
        for step in 0..20 {
            assert!(index.remove(id));
            let removed = vectors.remove(&id).unwrap();
            id += 1;
            let fresh = 1_000 + step;
            let v = random_unit(&mut rng);
            index.insert(fresh, &v).unwrap();
            vectors.insert(fresh, v);
            assert_ne!(index.nearest(&removed).unwrap().id, id - 1);
        }
        index.finish_rebuild();
        assert!(!index.rebuilding());
        assert_eq!(index.tombstones(), 20);
        for (live, v) in &vectors {
            assert_eq!(index.nearest(v).unwrap().id, *live);
        }
    }
}
