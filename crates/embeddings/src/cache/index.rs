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
//! The index keeps its own flat copy of the vectors: the scan reads it, a rebuild starts from
//! it, and it gives every candidate's similarity exactly rather than the graph's float distance.

use std::collections::{HashMap, HashSet};

use hnsw_rs::prelude::{Distance, Hnsw};

pub use crate::vector::dot;

/// Below this many vectors a namespace is scanned; from it up, searched through HNSW.
/// At 384 dimensions a 512-vector scan costs about as much as a graph search.
pub const SCAN_THRESHOLD: usize = 512;

/// A graph whose tombstones exceed this fraction of its points is rebuilt.
pub const REBUILD_TOMBSTONE_FRACTION: f32 = 0.25;

/// HNSW `M`: links per point and layer (16 is the usual choice for a few hundred dimensions).
const MAX_CONNECTIONS: usize = 16;
/// Candidates explored while inserting: build quality against insert cost.
const EF_CONSTRUCTION: usize = 100;
/// Candidates explored while searching (and returned, so that tombstones among them still
/// leave live ones): recall against latency.
const EF_SEARCH: usize = 64;
/// Live neighbours from the graph re-scored exactly, the best of which answers.
const NEIGHBOURS: usize = 4;
/// `hnsw_rs` caps its layers at 16.
const MAX_LAYERS: usize = 16;

/// When the index switches between scan and graph, and when a graph is rebuilt. The service
/// uses [`IndexTuning::default`]; tests shrink the threshold to reach the graph cheaply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexTuning {
    pub scan_threshold: usize,
    pub rebuild_fraction: f32,
}

impl Default for IndexTuning {
    fn default() -> Self {
        Self {
            scan_threshold: SCAN_THRESHOLD,
            rebuild_fraction: REBUILD_TOMBSTONE_FRACTION,
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

    /// Removed vectors the graph still holds.
    pub fn tombstones(&self) -> usize {
        self.graph
            .as_ref()
            .map_or(0, |graph| graph.tombstones.len())
    }

    /// Adds `vector` (unit length) under `id`, which must not be in the index.
    pub fn insert(&mut self, id: u64, vector: &[f32]) -> Result<(), DimensionMismatch> {
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
        match &self.graph {
            Some(graph) => graph.hnsw.insert_slice((vector, graph_id(id))),
            None if self.len() >= self.tuning.scan_threshold => self.build_graph(),
            None => {}
        }
        Ok(())
    }

    /// Adds many vectors at once, as [`Self::insert`] would one by one but with the graph
    /// work spread over rayon's threads.
    pub fn extend<'v>(
        &mut self,
        vectors: impl IntoIterator<Item = (u64, &'v [f32])>,
    ) -> Result<(), DimensionMismatch> {
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
        match &self.graph {
            Some(graph) => {
                let points: Vec<(&[f32], usize)> = (first_new..self.len())
                    .map(|row| (self.row(row), graph_id(self.ids[row])))
                    .collect();
                graph.hnsw.parallel_insert_slice(&points);
            }
            None if self.len() >= self.tuning.scan_threshold => self.build_graph(),
            None => {}
        }
        Ok(())
    }

    /// Removes `id`; false when it was not there.
    pub fn remove(&mut self, id: u64) -> bool {
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
        if let Some(graph) = &mut self.graph {
            graph.tombstones.insert(graph_id(id));
            if self.ids.len() < self.tuning.scan_threshold / 2 {
                self.graph = None;
            } else if graph.tombstones.len() as f32
                > self.tuning.rebuild_fraction * graph.hnsw.get_nb_point() as f32
            {
                self.build_graph();
            }
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
                // The `EF_SEARCH` closest come back sorted; tombstones are skipped here.
                let best = graph
                    .hnsw
                    .search(query, EF_SEARCH, EF_SEARCH)
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

    /// A fresh graph over the live vectors, inserted in parallel.
    fn build_graph(&mut self) {
        let hnsw = Hnsw::new(
            MAX_CONNECTIONS,
            self.len(),
            MAX_LAYERS,
            EF_CONSTRUCTION,
            UnitDot,
        );
        let points: Vec<(&[f32], usize)> = self
            .ids
            .iter()
            .enumerate()
            .map(|(row, id)| (self.row(row), graph_id(*id)))
            .collect();
        hnsw.parallel_insert_slice(&points);
        self.graph = Some(Graph {
            hnsw,
            tombstones: HashSet::new(),
        });
    }
}

/// Entry ids are sequence numbers: they fit a `usize` on every 64-bit target this runs on.
fn graph_id(id: u64) -> usize {
    usize::try_from(id).unwrap_or(usize::MAX)
}

struct Graph {
    hnsw: Hnsw<'static, f32, UnitDot>,
    /// Graph ids of removed vectors, hidden from searches until the next rebuild.
    tombstones: HashSet<usize>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("points", &self.hnsw.get_nb_point())
            .field("tombstones", &self.tombstones.len())
            .finish()
    }
}

/// `1 - dot` for unit vectors, clamped at 0. `hnsw_rs`'s own `DistDot` asserts the dot is at
/// most 1, which rounding breaks for two equal vectors; a panic here would take the cache down.
#[derive(Debug, Clone, Copy, Default)]
struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
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
        assert_eq!(UnitDot.eval(&[0.6, 0.8], &[0.6, 0.8]), 0.0);
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
}
