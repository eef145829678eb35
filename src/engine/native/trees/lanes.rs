//! Tree lanes: QuickScorer turned tree-major, one byte lane per branch node, for
//! ensembles whose trees have at most 32 leaves and whose features are cut at most 254
//! distinct ways each (LightGBM bins a feature into ≤ 255 bins, so every such model fits).
//!
//! The feature-major bit vectors ([`super::BitVectors`]) clear one tree's leaves per node a
//! row sends to its large side: about half of all branch nodes, each a read-modify-write
//! at a scattered tree index (measured on the real AMZN day: 37 % of the evaluator's time,
//! the binary searches over every node's threshold 22 %, the weight sums through memory
//! 12 %). Here a row costs instead:
//! 1. per feature, one binary search over its distinct **cut points** — `(threshold, a tie
//!    goes large)` pairs, ascending, ties-large first — giving `q[f]`, how many of them the
//!    value passes (a prefix, as in QuickScorer); every node's test becomes `q[f] > cut`;
//! 2. per tree, its ≤ 16 (or ≤ 32) nodes' tests at once in one SIMD register: `q` looked up by
//!    each lane's feature (`pshufb` on 16-byte tables of `q`), compared with the lane's
//!    `cut + 1`, the lanes that go large as one bit each (`movemask`);
//! 3. per tree, its exit leaf: the lowest leaf that no large node clears — with the tree
//!    transposed leaf-major (`clears[l]`: the nodes whose small side holds leaf `l`), the
//!    lowest `l` with `large & clears[l] == 0`, again one compare over all leaves at once.
//!
//! No scattered writes and no data-dependent branch; the work is fixed per tree. AVX2 is
//! detected at run time; the portable path computes the same bits lane by lane (the
//! unit tests hold the two equal). The node semantics (ties, NaN thresholds, ±0) are the
//! bit vectors', so the gate (tolerance 0) holds this path to ONNX Runtime as it did them.

use super::{splits, stable, Exact};

/// Most features the `q` tables hold (four 16-byte `pshufb` tables).
const MAX_FEATURES: usize = 64;
/// Most cut points per feature: `q` ≤ 254, so a lane keyed 255 never goes large.
const MAX_CUTS: usize = 254;
/// A lane's key that no `q` reaches (padding lanes, nodes no non-NaN row sends large).
const NEVER: u8 = 255;

/// The layout: trees of ≤ 16 leaves take 16 lanes (two trees per 32-byte group, leaf
/// masks `u16`), of ≤ 32 leaves 32 lanes (one tree per group, masks `u32`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Width {
    W16,
    W32,
}

impl Width {
    /// Lanes (nodes) per tree, and leaves at most.
    fn lanes(self) -> usize {
        match self {
            Width::W16 => 16,
            Width::W32 => 32,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Lanes {
    width: Width,
    trees: usize,
    features: usize,
    /// `q` tables in use: ⌈features / 16⌉ ≤ 4.
    tables: usize,
    /// Feature f's cut points, ascending, ties large first at one threshold, from
    /// `block_thr[block_start[f]]`, in blocks of 8 (the AVX2 count reads whole blocks):
    /// padded with +∞ to whole blocks, plus one block of +∞ (so a value above every cut point
    /// finds a block; +∞ is below no value, so the padding is passed by none); whether a tie
    /// goes large beside them.
    block_start: Vec<usize>,
    block_thr: Vec<f32>,
    block_tie_large: Vec<bool>,
    /// Per feature, each of its blocks' last (largest) threshold, padded with +∞ to whole
    /// 8s, from `summary_start[f]`: the blocks wholly below a value are counted first.
    summary_start: Vec<usize>,
    summary: Vec<f32>,
    /// Per lane (`tree * lanes + node`): its feature (portable path) and key (`cut + 1`;
    /// 0: every non-NaN row goes large; [`NEVER`]: none does, and padding).
    feature: Vec<u8>,
    key: Vec<u8>,
    /// `ctrl[(group * tables + k) * 32 + byte]`: the lane's feature within `q` table k, or
    /// 0x80 (`pshufb` writes 0) when its feature is in another table. A group is 32 lanes.
    ctrl: Vec<u8>,
    /// Leaf-major masks: `clears16[tree * 16 + l]` (or `clears32[tree * 32 + l]`) has bit j
    /// set when node lane j clears leaf l (l lies on j's small side); padding leaves have
    /// every bit set, so they never come before a real leaf.
    clears16: Vec<u16>,
    clears32: Vec<u32>,
    /// Scratch: the current row's `q`, zero past `features`.
    q: [u8; MAX_FEATURES],
    /// Scratch: each tree's exit leaf, as its bit (in-order leaf, small side first).
    pub(super) exit: Vec<u8>,
    /// Per tree: the global node index of its leaves, lowest bit first (`leaf_base[t] + bit`).
    pub(super) leaf_base: Vec<usize>,
    pub(super) leaves: Vec<u32>,
    /// AVX2 found at load (and not turned off for a test).
    avx2: bool,
}

/// A branch as the lanes see it.
struct Branch {
    feature: u32,
    /// `(threshold, a tie goes large)`, or the fixed side every non-NaN row takes.
    test: Result<(f32, bool), bool>,
    /// The leaves of its small side, `a..b` (bits of its tree).
    small: (usize, usize),
}

impl Lanes {
    /// The lanes for `exact`'s trees, or `None` when a tree has more than 32 leaves, there
    /// are more than 64 features or a feature has more than 254 cut points. `exact` holds
    /// no `==`/`!=` node and no denormal threshold (checked by the caller).
    pub(super) fn build(exact: &[Exact], roots: &[u32], features: usize) -> Option<Lanes> {
        if features == 0 || features > MAX_FEATURES {
            return None;
        }
        // Per tree: its leaves in order (small side first) and its branches.
        let mut trees: Vec<Vec<Branch>> = Vec::with_capacity(roots.len());
        let (mut leaf_base, mut leaves) = (Vec::with_capacity(roots.len()), Vec::new());
        let mut most_leaves = 0;
        for &root in roots {
            let (tree_leaves, splits) = splits(exact, root, 32)?;
            leaf_base.push(leaves.len());
            most_leaves = most_leaves.max(tree_leaves.len());
            leaves.extend(tree_leaves);
            let branches = splits.iter().map(|s| {
                let e = &exact[s.node as usize];
                // A NaN threshold sends every non-NaN row to the false child: the large side
                // when the true child is the small one.
                let test = if e.thr.is_nan() { Err(s.yes_small) } else { Ok((stable(e.thr), s.tie_large)) };
                Branch { feature: e.feature, test, small: s.small }
            });
            trees.push(branches.collect());
        }
        let width = if most_leaves <= 16 { Width::W16 } else { Width::W32 };
        let lanes = width.lanes();
        // Cut points per feature.
        let mut cuts: Vec<Vec<(f32, bool)>> = vec![Vec::new(); features];
        for b in trees.iter().flatten() {
            if let Ok(cut) = b.test {
                cuts[b.feature as usize].push(cut);
            }
        }
        for c in &mut cuts {
            c.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
            c.dedup_by(|a, b| a.0.to_bits() == b.0.to_bits() && a.1 == b.1);
            if c.len() > MAX_CUTS {
                return None;
            }
        }
        let tables = features.div_ceil(16);
        let n = trees.len() * lanes;
        let groups = n.div_ceil(32);
        let (mut feature, mut key) = (vec![0u8; groups * 32], vec![NEVER; groups * 32]);
        let mut ctrl = vec![0x80u8; groups * tables * 32];
        let (mut clears16, mut clears32) = (Vec::new(), Vec::new());
        for (t, branches) in trees.iter().enumerate() {
            let mut clears = vec![0u32; lanes];
            for (j, b) in branches.iter().enumerate() {
                let lane = t * lanes + j;
                let f = b.feature as usize;
                feature[lane] = f as u8;
                key[lane] = match b.test {
                    Ok(cut) => {
                        let at =
                            cuts[f].iter().position(|c| c.0.to_bits() == cut.0.to_bits() && c.1 == cut.1);
                        at.expect("every cut was collected") as u8 + 1
                    }
                    Err(true) => 0,
                    Err(false) => NEVER,
                };
                let (g, byte) = (lane / 32, lane % 32);
                ctrl[(g * tables + f / 16) * 32 + byte] = (f % 16) as u8;
                for c in &mut clears[b.small.0..b.small.1] {
                    *c |= 1 << j;
                }
            }
            // Padding leaves never come first: every node "clears" them.
            let real = branches.len() + 1;
            for c in &mut clears[real..] {
                *c = u32::MAX;
            }
            match width {
                Width::W16 => clears16.extend(clears.iter().map(|&c| c as u16)),
                Width::W32 => clears32.extend(clears),
            }
        }
        let (mut block_start, mut block_thr, mut block_tie_large) = (vec![0], Vec::new(), Vec::new());
        let (mut summary_start, mut summary) = (vec![0], Vec::new());
        for c in &cuts {
            let blocks = c.len().div_ceil(8) + 1;
            let at = block_thr.len();
            block_thr.extend(c.iter().map(|c| c.0));
            block_tie_large.extend(c.iter().map(|c| c.1));
            block_thr.resize(at + blocks * 8, f32::INFINITY);
            block_tie_large.resize(at + blocks * 8, false);
            block_start.push(block_thr.len());
            let at_summary = summary.len();
            summary.extend((0..blocks).map(|b| block_thr[at + b * 8 + 7]));
            summary.resize(at_summary + blocks.div_ceil(8) * 8, f32::INFINITY);
            summary_start.push(summary.len());
        }
        Some(Lanes {
            width,
            trees: trees.len(),
            features,
            tables,
            block_start,
            block_thr,
            block_tie_large,
            summary_start,
            summary,
            feature,
            key,
            ctrl,
            clears16,
            clears32,
            q: [0; MAX_FEATURES],
            exit: vec![0; trees.len()],
            leaf_base,
            leaves,
            avx2: avx2_detected(),
        })
    }

    /// "tree lanes x16 (avx2)".
    pub(super) fn describe(&self) -> String {
        format!("tree lanes x{} ({})", self.width.lanes(), if self.avx2 { "avx2" } else { "portable" })
    }

    /// Tests only: take the portable path even where AVX2 exists.
    #[cfg(test)]
    pub(super) fn set_portable(&mut self) {
        self.avx2 = false;
    }

    /// Each tree's exit leaf for row `x` (no NaN) into `self.exit`, as a bit of its tree.
    /// No allocation.
    #[inline]
    pub(super) fn exits(&mut self, x: &[f32]) {
        debug_assert_eq!(x.len(), self.features);
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is true only when the CPU reported AVX2 at load.
            unsafe {
                self.cuts_passed_avx2(x);
                self.exits_avx2();
            }
            return;
        }
        for (f, &v) in x.iter().enumerate() {
            let (s, e) = (self.block_start[f], self.block_start[f + 1]);
            let thr = &self.block_thr[s..e];
            // The cut points v passes are a prefix: `thr < v`, then at `thr == v` the one
            // whose tie goes large (ties-large sort first; cut points are distinct). The +∞
            // padding is passed by no value, and leaves a cut point after the last one passed.
            let mut n = thr.partition_point(|&t| t < v);
            if thr[n] == v && self.block_tie_large[s + n] {
                n += 1;
            }
            self.q[f] = n as u8;
        }
        self.exits_portable();
    }

    /// `q` for row `x` by counting, not searching: per feature, how many of its blocks lie
    /// wholly below the value (one compare of 8 block maxima at a time), then how many cut
    /// points of the next block do; no chain of dependent loads as in a binary search.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn cuts_passed_avx2(&mut self, x: &[f32]) {
        use std::arch::x86_64::*;
        for (f, &v) in x.iter().enumerate() {
            let vv = _mm256_set1_ps(v);
            let mut below = 0;
            let mut at = self.summary_start[f];
            while at < self.summary_start[f + 1] {
                // SAFETY: summary_start[f + 1] - summary_start[f] is a multiple of 8 (padded).
                let maxima = unsafe { _mm256_loadu_ps(self.summary.as_ptr().add(at)) };
                below += (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(maxima, vv)) as u32).count_ones()
                    as usize;
                at += 8;
            }
            // The feature's last block is all +∞, never below a value: block `below` exists.
            let block = self.block_start[f] + below * 8;
            debug_assert!(block + 8 <= self.block_start[f + 1]);
            // SAFETY: block + 8 <= block_start[f + 1] <= block_thr.len() (whole blocks).
            let thr = unsafe { _mm256_loadu_ps(self.block_thr.as_ptr().add(block)) };
            let within =
                (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(thr, vv)) as u32).count_ones() as usize;
            let n = block + within;
            // A value on a cut point whose tie goes large passes it too (cut points are
            // distinct, ties-large first: only the first cut point not below can be it).
            let tie = self.block_thr[n] == v && self.block_tie_large[n];
            self.q[f] = (n - self.block_start[f] + usize::from(tie)) as u8;
        }
    }

    /// The lane-by-lane form of [`exits_avx2`](Self::exits_avx2).
    fn exits_portable(&mut self) {
        let lanes = self.width.lanes();
        for t in 0..self.trees {
            let mut large = 0u32;
            for j in 0..lanes {
                let lane = t * lanes + j;
                if self.q[self.feature[lane] as usize] >= self.key[lane] {
                    large |= 1 << j;
                }
            }
            let exit = (0..lanes).find(|&l| match self.width {
                Width::W16 => large as u16 & self.clears16[t * 16 + l] == 0,
                Width::W32 => large & self.clears32[t * 32 + l] == 0,
            });
            self.exit[t] = exit.expect("the exit leaf is never cleared") as u8;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn exits_avx2(&mut self) {
        use std::arch::x86_64::*;
        let zero = _mm256_setzero_si256();
        // Each 16-byte table of q in both 128-bit halves (pshufb looks up within a half).
        let mut table = [zero; MAX_FEATURES / 16];
        for (k, t) in table.iter_mut().enumerate().take(self.tables) {
            // SAFETY: `q` holds 64 bytes, k < 4: 16 readable bytes at k * 16.
            *t = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(self.q.as_ptr().add(k * 16).cast()) });
        }
        let groups = self.key.len() / 32;
        debug_assert_eq!(self.ctrl.len(), groups * self.tables * 32);
        for g in 0..groups {
            let mut qn = zero;
            for (k, t) in table.iter().enumerate().take(self.tables) {
                // SAFETY: ctrl holds groups * tables * 32 bytes (built so); this reads 32 of them.
                let c =
                    unsafe { _mm256_loadu_si256(self.ctrl.as_ptr().add((g * self.tables + k) * 32).cast()) };
                qn = _mm256_or_si256(qn, _mm256_shuffle_epi8(*t, c));
            }
            // SAFETY: key holds groups * 32 bytes; this reads group g's 32.
            let key = unsafe { _mm256_loadu_si256(self.key.as_ptr().add(g * 32).cast()) };
            // Lane goes large: q >= key (unsigned), i.e. max(q, key) == q.
            let large = _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_max_epu8(qn, key), qn)) as u32;
            match self.width {
                Width::W16 => {
                    for half in 0..2 {
                        let t = g * 2 + half;
                        if t >= self.trees {
                            break;
                        }
                        let word = _mm256_set1_epi16((large >> (16 * half)) as u16 as i16);
                        // SAFETY: clears16 holds trees * 16 masks; t < trees.
                        let clears = unsafe { _mm256_loadu_si256(self.clears16.as_ptr().add(t * 16).cast()) };
                        let kept = _mm256_cmpeq_epi16(_mm256_and_si256(word, clears), zero);
                        // Two mask bits per 16-bit leaf: the lowest kept leaf is tzcnt / 2.
                        let bits = _mm256_movemask_epi8(kept) as u32;
                        debug_assert!(bits != 0, "the exit leaf is never cleared");
                        self.exit[t] = (bits.trailing_zeros() / 2) as u8;
                    }
                }
                Width::W32 => {
                    let word = _mm256_set1_epi32(large as i32);
                    let mut bits = 0u32;
                    for part in 0..4 {
                        // SAFETY: clears32 holds trees * 32 masks; g < trees, part < 4: 8 of them.
                        let clears = unsafe {
                            _mm256_loadu_si256(self.clears32.as_ptr().add(g * 32 + part * 8).cast())
                        };
                        let kept = _mm256_cmpeq_epi32(_mm256_and_si256(word, clears), zero);
                        bits |= (_mm256_movemask_ps(_mm256_castsi256_ps(kept)) as u32) << (8 * part);
                    }
                    debug_assert!(bits != 0, "the exit leaf is never cleared");
                    self.exit[g] = bits.trailing_zeros() as u8;
                }
            }
        }
    }
}

fn avx2_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::env::var_os("TICKINFER_TREES_PORTABLE").is_none()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Quick, Trees};
    use crate::engine::native::NativeModel;

    /// Every tree fixture (ties both ways, NaN thresholds, regressors, two-class, wide trees)
    /// and the two benchmarked ensembles.
    const MODELS: [&str; 13] = [
        "models/lobster_stateful.toml",
        "benches/models/lgbm_100x31.toml",
        "tests/fixtures/models/lgbm_direction.toml",
        "tests/fixtures/models/tree_modes.toml",
        "tests/fixtures/models/tree_regressor.toml",
        "tests/fixtures/models/tree_wide.toml",
        "tests/fixtures/models/trust_binary.toml",
        "tests/fixtures/models/trust_binary_logistic.toml",
        "tests/fixtures/models/trust_first_weight.toml",
        "tests/fixtures/models/trust_gte_classifier.toml",
        "tests/fixtures/models/trust_lt_regressor.toml",
        "tests/fixtures/models/trust_nan_threshold.toml",
        "tests/fixtures/models/trust_softmax_zero.toml",
    ];

    fn trees(toml: &str) -> Option<Trees> {
        let manifest = crate::manifest::Manifest::load(&crate::source_root().join(toml)).expect(toml);
        match NativeModel::from_manifest(&manifest, &[]) {
            Ok(NativeModel::Trees(t)) => Some(t),
            _ => None,
        }
    }

    /// The gate's covering rows without NaN (those take the node walk), and rows mixing
    /// values on and beside every feature's thresholds.
    fn rows(t: &Trees) -> Vec<Vec<f32>> {
        let f = t.features;
        t.covering_rows()
            .chunks_exact(f)
            .filter(|r| !r.iter().any(|v| v.is_nan()))
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// The lanes (AVX2 where the CPU has it, and the portable path) reach the leaf the
    /// node-by-node walk reaches, tree by tree, and the whole output — summed per output
    /// or through the leaves — is bit for bit the walk's.
    #[test]
    fn lanes_reach_the_walks_leaves_and_outputs() {
        let mut on_lanes = Vec::new();
        for toml in MODELS {
            let Some(mut t) = trees(toml) else { continue };
            let Ok(Quick::Lanes(lanes)) = &t.quick else { continue };
            on_lanes.push(toml);
            let mut portable = lanes.clone();
            portable.set_portable();
            let mut simd = lanes.clone();
            let mut walk = t.clone();
            walk.quick = Err("the walk, for the test");
            let (mut a, mut b) = (vec![0f32; t.outputs], vec![0f32; t.outputs]);
            let rows = rows(&t);
            assert!(rows.len() > 100, "{toml}: {} rows", rows.len());
            for x in &rows {
                walk.walk_exact(x);
                for l in [&mut simd, &mut portable] {
                    l.exits(x);
                    let leaves: Vec<u32> = l
                        .exit
                        .iter()
                        .zip(&l.leaf_base)
                        .map(|(&bit, &base)| l.leaves[base + bit as usize])
                        .collect();
                    assert_eq!(leaves, walk.leaf_of, "{toml} ({}): row {x:?}", l.describe());
                }
                t.run(x, &mut a);
                walk.run(x, &mut b);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{toml}: outputs {a:?} vs the walk's {b:?} on {x:?}");
            }
        }
        // The two benchmarked ensembles and the fixtures with ties both ways, NaN thresholds,
        // a regressor and two classes (`tree_modes` has `==` nodes: the walk serves it).
        for must in [MODELS[0], MODELS[1], MODELS[4], MODELS[6], MODELS[9], MODELS[10], MODELS[11]] {
            assert!(on_lanes.contains(&must), "{must} is not served by the lanes: {on_lanes:?}");
        }
    }

    /// Sixteen- and thirty-two-lane layouts both occur (15- and 31-leaf trees), and sums per
    /// output are taken for the LightGBM models.
    #[test]
    fn layouts_and_sums_are_chosen_by_shape() {
        let t = trees("models/lobster_stateful.toml").expect("trees");
        assert!(t.describe().contains("tree lanes x16"), "{}", t.describe());
        assert!(t.grouped.as_ref().is_some_and(|g| g.rounds == Some(100)));
        let t = trees("benches/models/lgbm_100x31.toml").expect("trees");
        assert!(t.describe().contains("tree lanes x32"), "{}", t.describe());
        assert!(t.grouped.is_some());
    }
}
