//! Tree ensembles evaluated natively, generated at load from the ONNX-ML graph:
//! `TreeEnsembleClassifier` (post-transform NONE, LOGISTIC, SOFTMAX, SOFTMAX_ZERO) and
//! `TreeEnsembleRegressor` (aggregate SUM or AVERAGE), followed by any `Identity` and
//! `Mul` by a scalar initializer — what onnxmltools writes for LightGBM and XGBoost,
//! and skl2onnx for scikit-learn's forests and boosting.
//!
//! ONNX Runtime walks one tree at a time with a data-dependent branch per node: on
//! unpredictable inputs about half of them mispredict. This evaluator uses
//! QuickScorer (Lucchese et al., SIGIR 2015) instead: each tree keeps a bit per leaf
//! (≤ 64 leaves); every node whose test sends the row to its "large" side clears the
//! leaves of its "small" side, and the tree's exit leaf is the lowest bit left. Those
//! nodes are found per feature, not per tree: each feature's nodes are sorted by
//! threshold, so the ones a value `v` sends large are a prefix of the list — found by
//! one binary search per feature, then cleared in a loop with no data-dependent branch.
//!
//! Semantics are ONNX Runtime's (`tree_ensemble_common.h`, `tree_ensemble_aggregator.h`),
//! operation for operation, so the scores are bit-identical and the load-time gate holds
//! this evaluator to that (`engine::gate`, tolerance 0):
//! - Comparisons are the hardware's on the calling thread, as ONNX Runtime's are: with
//!   denormals as zero (`engine::fpenv`) a denormal input compares as 0 on both. The bit
//!   vectors therefore never compare against a made-up threshold (`x < t` is not turned
//!   into `x <= next_down(t)`, which is a denormal for `t = 0`): each node keeps its own
//!   threshold and whether `v == t` belongs to its large side (`<` and `>=` nodes), and
//!   the binary search takes ties in that order. A model with a denormal threshold is
//!   walked node by node instead.
//! - A node whose threshold is NaN sends every non-NaN row to its false child (all six
//!   comparisons with NaN are false but `!=`, which is true).
//! - A row holding a NaN takes the node-by-node walk (each node's own comparison and
//!   `missing_value_tracks_true`); so do trees of more than 64 leaves and `==`/`!=` nodes.
//! - Each tree starts at the first node listed for it (ONNX Runtime's rule); a model whose
//!   trees are not listed root first, one after another, is refused.
//! - Scores: summed in tree order, each leaf's weights in the order given; a one-target
//!   regressor adds only each leaf's first weight and ignores the post-transform; AVERAGE
//!   divides by the tree count; a two-class classifier derives its two scores per row from
//!   whether class 1 was weighed by a leaf it reached ([`Aggregate::Binary`]).

use std::collections::HashMap;

mod lanes;

use super::graph::{logistic, text, Graph, PostTransform};
use super::onnx_pb::{GraphProto, NodeProto};
use crate::manifest::Manifest;

const ML: &str = "ai.onnx.ml";

/// Rows of the load-time gate that put every feature on or beside a random one of its
/// thresholds at once.
const COMBINED_ROWS: usize = 512;

/// Deepest tree accepted (a bound on a hostile graph; LightGBM's 31-leaf trees reach ≈ 15).
const MAX_DEPTH: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

/// A node as ONNX states it.
#[derive(Clone, Copy, Debug)]
struct Exact {
    mode: Mode,
    missing_true: bool,
    thr: f32,
    feature: u32,
    yes: u32,
    no: u32,
}

impl Exact {
    /// Whether row value `v` takes the true branch: ONNX Runtime's test, compared by the
    /// hardware (so with the thread's denormal mode, as ONNX Runtime compares).
    #[inline]
    fn goes_yes(&self, v: f32) -> bool {
        let t = self.thr;
        let yes = match self.mode {
            Mode::Leq => v <= t,
            Mode::Lt => v < t,
            Mode::Gte => v >= t,
            Mode::Gt => v > t,
            Mode::Eq => v == t,
            Mode::Neq => v != t,
            Mode::Leaf => unreachable!("branches only"),
        };
        yes || (self.missing_true && v.is_nan())
    }
}

/// How the exit leaves' weights become the output row: ONNX Runtime's aggregators.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Aggregate {
    /// A one-target regressor (ONNX Runtime's one-output path): each exit leaf's first
    /// weight summed in tree order, divided by the tree count for AVERAGE, plus the base
    /// value; the post-transform is not applied (only PROBIT would be, and it is refused).
    One { average: bool, origin: f32 },
    /// A regressor of several targets: sums (÷ trees for AVERAGE), + base values when one
    /// is given per target, then the post-transform.
    Targets { average: bool },
    /// A classifier of three or more classes: sums + base values, then the post-transform.
    Classes,
    /// A classifier of two classes whose leaves weigh both, per row: when a reached leaf
    /// weighed class 1, `[s0, s1]`, or with two base values `[-(b1 + s0), b1 + s0]` (ONNX
    /// Runtime ignores `s1` there); when none did, `[s0 + b0, 0]` with two base values (the
    /// unweighed class reads 0, its base value dropped), else `[-s0, s0]` (LOGISTIC:
    /// `[σ(-s0), σ(s0)]`, no other transform). The evaluator reproduces what serves, not what
    /// one might expect.
    Binary,
}

/// A tree's leaf bits: `u32` when every tree has ≤ 32 leaves (LightGBM's default 31),
/// else `u64`.
trait Mask: Copy + std::fmt::Debug + std::ops::BitAndAssign + Eq {
    const BITS: usize;
    const ALL: Self;
    /// Bits `a..b` set.
    fn span(a: usize, b: usize) -> Self;
    fn not(self) -> Self;
    fn lowest(self) -> usize;
}

macro_rules! mask {
    ($t:ty) => {
        impl Mask for $t {
            const BITS: usize = <$t>::BITS as usize;
            const ALL: $t = <$t>::MAX;
            fn span(a: usize, b: usize) -> $t {
                let n = b - a;
                if n == <Self as Mask>::BITS {
                    <$t>::MAX
                } else {
                    ((1 << n) - 1) << a
                }
            }
            fn not(self) -> $t {
                !self
            }
            fn lowest(self) -> usize {
                self.trailing_zeros() as usize
            }
        }
    };
}
mask!(u32);
mask!(u64);

/// QuickScorer's tables: per feature, the branch nodes in ascending threshold order,
/// each with its tree and the mask that clears the leaves of its small side.
#[derive(Clone, Debug)]
struct BitVectors<M> {
    /// `thr[starts[f]..starts[f + 1]]`: feature f's thresholds, ascending (−0.0 stored as
    /// +0.0: they compare equal); within a threshold, the nodes whose large side includes
    /// the threshold itself (`<`, `>=`) first.
    starts: Vec<usize>,
    thr: Vec<f32>,
    /// Beside each threshold: `v == thr` sends the row to the node's large side.
    tie_large: Vec<bool>,
    /// `(tree, mask)` beside each threshold: one stream of 8 (u32) or 16 bytes per node.
    clear: Vec<(u32, M)>,
    /// Per tree: all leaves, less those behind a side no non-NaN row takes (NaN thresholds).
    init: Vec<M>,
    /// Scratch: the current row's bits per tree.
    bits: Vec<M>,
    /// Per tree: the global node index of its leaves, lowest bit first (`leaf_base[t] + bit`).
    leaf_base: Vec<usize>,
    leaves: Vec<u32>,
}

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Quick {
    /// Tree-major, a byte lane per node ([`lanes::Lanes`]): trees of ≤ 32 leaves, ≤ 64
    /// features, ≤ 254 cut points per feature.
    Lanes(lanes::Lanes),
    Narrow(BitVectors<u32>),
    Wide(BitVectors<u64>),
}

/// The exit leaves' weights summed per output in registers, when every leaf holds one
/// weight and each tree weighs one output (LightGBM, XGBoost): per output, its trees'
/// weights added in tree order — ONNX Runtime's order of additions for that output —
/// with no pass through memory per tree.
#[derive(Clone, Debug)]
struct Grouped {
    /// `order[starts[o]..starts[o + 1]]`: the trees that weigh output o, in tree order, as
    /// (tree, where its leaves' weights start in `weight`).
    starts: Vec<usize>,
    order: Vec<(u32, u32)>,
    /// Each tree's leaves' weights by exit bit, from its `base` in `order`.
    weight: Vec<f32>,
    /// Every output weighed by this many trees (LightGBM's rounds of a multi-class model):
    /// the outputs' sums are then interleaved, each still in its own tree order.
    rounds: Option<usize>,
}

impl Grouped {
    /// The sums per output into `out`, and `has`, from each tree's exit bit.
    #[inline]
    fn sum(&self, exit: &[u8], out: &mut [f32], has: &mut [bool]) {
        for (o, h) in has.iter_mut().enumerate() {
            *h = self.starts[o] < self.starts[o + 1];
        }
        match (out.len(), self.rounds) {
            (2, Some(n)) => self.interleaved::<2>(n, exit, out),
            (3, Some(n)) => self.interleaved::<3>(n, exit, out),
            (4, Some(n)) => self.interleaved::<4>(n, exit, out),
            _ => {
                for (o, out) in out.iter_mut().enumerate() {
                    let mut s = 0f32;
                    for &(t, base) in &self.order[self.starts[o]..self.starts[o + 1]] {
                        s += self.weight[base as usize + exit[t as usize] as usize];
                    }
                    *out = s;
                }
            }
        }
    }

    /// N outputs of `n` trees each: N independent chains of additions in registers (one
    /// output's chain after another would wait on each addition's latency in turn).
    #[inline]
    fn interleaved<const N: usize>(&self, n: usize, exit: &[u8], out: &mut [f32]) {
        let mut acc = [0f32; N];
        for i in 0..n {
            for (o, acc) in acc.iter_mut().enumerate() {
                let (t, base) = self.order[o * n + i];
                *acc += self.weight[base as usize + exit[t as usize] as usize];
            }
        }
        out.copy_from_slice(&acc);
    }
}

#[derive(Clone, Debug)]
pub struct Trees {
    exact: Vec<Exact>,
    /// Global index of each tree's root (its first node listed), in the model's tree order.
    roots: Vec<u32>,
    /// The lanes or the bit vectors, when every tree has ≤ 64 leaves, no node compares by
    /// `==`/`!=` and no threshold is a denormal; else why not (for `describe`).
    quick: Result<Quick, &'static str>,
    /// With [`Quick::Lanes`], the sums per output when the leaves allow them.
    grouped: Option<Grouped>,
    /// Per node: range into `weights` (empty for branches).
    leaf_range: Vec<(u32, u32)>,
    /// `(output index, weight)` pairs, leaves' in the model's order.
    weights: Vec<(u32, f32)>,
    /// Scratch: per output, whether a reached leaf weighed it (ONNX Runtime's `has_score`).
    has: Vec<bool>,
    aggregate: Aggregate,
    base: Vec<f32>,
    post: PostTransform,
    /// Trailing `Mul`s by a scalar, in graph order (onnxmltools multiplies by 1).
    scales: Vec<f32>,
    features: usize,
    outputs: usize,
    /// Scratch: the leaf each tree reached for the current row.
    leaf_of: Vec<u32>,
    what: &'static str,
    max_depth: usize,
}

fn ints<'a>(n: &'a NodeProto, name: &str) -> &'a [i64] {
    n.attr(name).map_or(&[], |a| a.ints.as_slice())
}

fn floats<'a>(n: &'a NodeProto, name: &str) -> &'a [f32] {
    n.attr(name).map_or(&[], |a| a.floats.as_slice())
}

impl Trees {
    /// Recognise the graph; `Err` says why it is not a tree ensemble this evaluator runs.
    pub fn from_graph(g: &GraphProto, manifest: &Manifest) -> Result<Trees, String> {
        let graph = Graph::new(g);
        let out = manifest.output.name();
        // The tail: Identity and Mul by a scalar initializer, back to the ensemble.
        let mut at = out;
        let mut scales = Vec::new();
        // Bounded: a graph whose `Identity` feeds itself would otherwise be walked for ever.
        let mut steps = 0;
        let top = loop {
            steps += 1;
            if steps > g.node.len() + 1 {
                return Err("the tail before the ensemble loops (a cycle)".into());
            }
            let n = graph.producer(at).ok_or_else(|| format!("no node makes `{at}`"))?;
            match (n.op_type.as_str(), n.domain.as_str()) {
                ("Identity", "") => at = n.input.first().ok_or("an Identity without an input")?,
                ("Mul", "") if n.input.len() == 2 => {
                    let data = graph.data_inputs(n);
                    let [data] = data.as_slice() else { return Err("a Mul of two values".into()) };
                    let k = n.input.iter().find(|i| i.as_str() != *data).expect("two inputs");
                    let k = graph.init(k, "the Mul's factor")?.floats()?;
                    let [k] = k.as_slice() else { return Err("a Mul by a non-scalar".into()) };
                    scales.push(*k);
                    at = data;
                }
                ("TreeEnsembleClassifier" | "TreeEnsembleRegressor", ML) => break n,
                (op, _) => return Err(format!("the output is made by `{op}`, not a tree ensemble")),
            }
        };
        scales.reverse();
        if top.input.first().map(String::as_str) != Some(manifest.input_name.as_str()) {
            return Err(format!(
                "the {} does not read the input `{}` directly",
                top.op_type, manifest.input_name
            ));
        }
        let classifier = top.op_type == "TreeEnsembleClassifier";
        // The classifier's scores are its second output; the regressor's, its only one.
        if top.output.get(usize::from(classifier)).map(String::as_str) != Some(at) {
            return Err("the manifest's output is not the ensemble's scores".into());
        }
        if top.attr("nodes_values_as_tensor").is_some() || top.attr("base_values_as_tensor").is_some() {
            return Err("double-precision thresholds (`*_as_tensor`)".into());
        }
        let outputs = manifest.output.width();
        let prefix = if classifier { "class" } else { "target" };
        let (w_trees, w_nodes, w_ids, w_vals) = (
            ints(top, &format!("{prefix}_treeids")),
            ints(top, &format!("{prefix}_nodeids")),
            ints(top, &format!("{prefix}_ids")),
            floats(top, &format!("{prefix}_weights")),
        );
        if [w_trees.len(), w_nodes.len(), w_ids.len()].iter().any(|&l| l != w_vals.len()) {
            return Err(format!("{prefix}_* attributes of different lengths"));
        }
        if let Some(&bad) = w_ids.iter().find(|&&c| c < 0 || c as usize >= outputs) {
            return Err(format!("a leaf weight for output {bad} of {outputs}"));
        }
        let post = PostTransform::of(top)?;
        let aggregate_fn = text(top, "aggregate_function").unwrap_or_else(|| "SUM".into());
        if !matches!(aggregate_fn.as_str(), "SUM" | "AVERAGE") || (classifier && aggregate_fn != "SUM") {
            return Err(format!("aggregate_function {aggregate_fn}"));
        }
        let average = aggregate_fn == "AVERAGE";
        let base = floats(top, "base_values").to_vec();
        if !(base.is_empty() || base.len() == outputs) {
            return Err(format!("{} base values for {outputs} outputs", base.len()));
        }
        let aggregate = if classifier {
            let labels = ints(top, "classlabels_int64s")
                .len()
                .max(top.attr("classlabels_strings").map_or(0, |a| a.strings.len()));
            if labels != outputs || outputs < 2 {
                return Err(format!("{labels} class labels for an output of {outputs}"));
            }
            let mut used: Vec<i64> = w_ids.to_vec();
            used.sort_unstable();
            used.dedup();
            if outputs == 2 && used.len() == 1 {
                return Err(
                    "a binary classifier with one score column (ONNX Runtime derives the other)".into()
                );
            }
            if outputs == 2 {
                Aggregate::Binary
            } else {
                Aggregate::Classes
            }
        } else {
            let n = top.attr("n_targets").map_or(1, |a| a.i);
            if n as usize != outputs {
                return Err(format!("n_targets {n} for an output of {outputs}"));
            }
            if outputs == 1 {
                Aggregate::One { average, origin: base.first().copied().unwrap_or(0.0) }
            } else {
                Aggregate::Targets { average }
            }
        };

        // Nodes: (tree, node id) -> global index, in the model's order.
        let (treeids, nodeids, featureids, modes) = (
            ints(top, "nodes_treeids"),
            ints(top, "nodes_nodeids"),
            ints(top, "nodes_featureids"),
            top.attr("nodes_modes"),
        );
        let modes = modes.map_or(&[][..], |a| a.strings.as_slice());
        let (values, yes, no) =
            (floats(top, "nodes_values"), ints(top, "nodes_truenodeids"), ints(top, "nodes_falsenodeids"));
        let missing = ints(top, "nodes_missing_value_tracks_true");
        let n = treeids.len();
        if n == 0
            || [nodeids.len(), featureids.len(), modes.len(), values.len(), yes.len(), no.len()]
                .iter()
                .any(|&l| l != n)
            || !(missing.is_empty() || missing.len() == n)
        {
            return Err("nodes_* attributes missing or of different lengths".into());
        }
        let features = manifest.features.len();
        let mut index: HashMap<(i64, i64), u32> = HashMap::with_capacity(n);
        // ONNX Runtime starts a tree at each node whose tree id differs from the previous node's.
        let mut roots: Vec<u32> = Vec::new();
        let mut tree_seen: HashMap<i64, ()> = HashMap::new();
        for i in 0..n {
            if index.insert((treeids[i], nodeids[i]), i as u32).is_some() {
                return Err(format!("node {} of tree {} appears twice", nodeids[i], treeids[i]));
            }
            if i == 0 || treeids[i] != treeids[i - 1] {
                if tree_seen.insert(treeids[i], ()).is_some() {
                    return Err(format!(
                        "the nodes of tree {} are not listed together (ONNX Runtime would start a second tree \
                         in the middle of it)",
                        treeids[i]
                    ));
                }
                roots.push(i as u32);
            }
        }
        let mut exact = Vec::with_capacity(n);
        for i in 0..n {
            let mode = match modes[i].as_slice() {
                b"BRANCH_LEQ" => Mode::Leq,
                b"BRANCH_LT" => Mode::Lt,
                b"BRANCH_GTE" => Mode::Gte,
                b"BRANCH_GT" => Mode::Gt,
                b"BRANCH_EQ" => Mode::Eq,
                b"BRANCH_NEQ" => Mode::Neq,
                b"LEAF" => Mode::Leaf,
                m => return Err(format!("node mode {}", String::from_utf8_lossy(m))),
            };
            let child = |id: i64| {
                index.get(&(treeids[i], id)).copied().ok_or_else(|| {
                    format!("node {} of tree {} points to a missing node {id}", nodeids[i], treeids[i])
                })
            };
            let (y, f) =
                if mode == Mode::Leaf { (i as u32, i as u32) } else { (child(yes[i])?, child(no[i])?) };
            let feature = if mode == Mode::Leaf { 0 } else { featureids[i] };
            if feature < 0 || feature as usize >= features {
                return Err(format!("a node reads feature {feature} of {features}"));
            }
            exact.push(Exact {
                mode,
                missing_true: missing.get(i).is_some_and(|&m| m != 0),
                thr: values[i],
                feature: feature as u32,
                yes: y,
                no: f,
            });
        }
        // Each tree's first node listed must be its root: the node no other node points to.
        let mut pointed = vec![false; n];
        for e in exact.iter().filter(|e| e.mode != Mode::Leaf) {
            pointed[e.yes as usize] = true;
            pointed[e.no as usize] = true;
        }
        for &r in &roots {
            if pointed[r as usize] {
                return Err(format!(
                    "tree {} is not listed root first (ONNX Runtime starts each tree at its first node listed)",
                    treeids[r as usize]
                ));
            }
        }
        // Depths (an iterative walk; a node reached twice is a cycle or a shared subtree).
        let mut depths = Vec::with_capacity(roots.len());
        let mut seen = vec![false; n];
        for &r in &roots {
            let mut deepest = 0;
            let mut stack = vec![(r, 0usize)];
            while let Some((i, d)) = stack.pop() {
                if std::mem::replace(&mut seen[i as usize], true) {
                    return Err("a node reached twice (a cycle or a shared subtree)".into());
                }
                if d > MAX_DEPTH {
                    return Err(format!("a tree deeper than {MAX_DEPTH}"));
                }
                let e = exact[i as usize];
                if e.mode == Mode::Leaf {
                    deepest = deepest.max(d);
                } else {
                    stack.push((e.yes, d + 1));
                    stack.push((e.no, d + 1));
                }
            }
            depths.push(deepest);
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(format!(
                "node {} of tree {} hangs from no root (more than one root in a tree)",
                nodeids[i], treeids[i]
            ));
        }
        let quick = quick_path(&exact, &roots, features);
        // Leaf weights, grouped by leaf in the model's order (ONNX Runtime sorts them by
        // (tree, node), keeping their order within a leaf). A leaf without one is refused by
        // ONNX Runtime itself; weights on branch nodes it ignores (we refuse them).
        let mut per_leaf: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
        for k in 0..w_vals.len() {
            let leaf = *index.get(&(w_trees[k], w_nodes[k])).ok_or_else(|| {
                format!("a weight for a missing node {} of tree {}", w_nodes[k], w_trees[k])
            })?;
            if exact[leaf as usize].mode != Mode::Leaf {
                return Err(format!("a weight on branch node {} of tree {}", w_nodes[k], w_trees[k]));
            }
            per_leaf[leaf as usize].push((w_ids[k] as u32, w_vals[k]));
        }
        if let Some(i) = (0..n).find(|&i| exact[i].mode == Mode::Leaf && per_leaf[i].is_empty()) {
            return Err(format!("leaf {} of tree {} has no weight", nodeids[i], treeids[i]));
        }
        let mut weights = Vec::with_capacity(w_vals.len());
        let leaf_range: Vec<(u32, u32)> = per_leaf
            .into_iter()
            .map(|ws| {
                let start = weights.len() as u32;
                weights.extend(ws);
                (start, weights.len() as u32)
            })
            .collect();
        let grouped = match &quick {
            Ok(Quick::Lanes(l)) => grouped(l, &leaf_range, &weights, outputs),
            _ => None,
        };
        Ok(Trees {
            grouped,
            exact,
            leaf_of: vec![0; roots.len()],
            max_depth: depths.iter().copied().max().unwrap_or(0),
            roots,
            quick,
            leaf_range,
            weights,
            has: vec![false; outputs],
            aggregate,
            base,
            post,
            scales,
            features,
            outputs,
            what: if classifier { "TreeEnsembleClassifier" } else { "TreeEnsembleRegressor" },
        })
    }

    /// "TreeEnsembleClassifier 300 trees (9000 nodes, depth <= 14, bit vectors u32) x16 -> 3 -> SOFTMAX".
    pub fn describe(&self) -> String {
        format!(
            "{} {} trees ({} nodes, depth <= {}, {}) x{} -> {}{}{}",
            self.what,
            self.roots.len(),
            self.exact.len(),
            self.max_depth,
            match &self.quick {
                Ok(Quick::Lanes(l)) => l.describe(),
                Ok(Quick::Narrow(_)) => "bit vectors u32".into(),
                Ok(Quick::Wide(_)) => "bit vectors u64".into(),
                Err(why) => why.to_string(),
            },
            self.features,
            self.outputs,
            if matches!(self.aggregate, Aggregate::One { .. }) { "" } else { self.post.suffix() },
            if matches!(
                self.aggregate,
                Aggregate::One { average: true, .. } | Aggregate::Targets { average: true }
            ) {
                " (average)"
            } else {
                ""
            },
        )
    }

    /// One row. No allocation.
    #[inline]
    pub fn run(&mut self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.features);
        debug_assert_eq!(out.len(), self.outputs);
        // Whether the sums per output are in `out` (and `has`) already.
        let summed = match &mut self.quick {
            _ if x.iter().any(|v| v.is_nan()) => {
                self.walk_exact(x);
                false
            }
            Ok(Quick::Lanes(l)) => {
                l.exits(x);
                if let Some(g) = &self.grouped {
                    g.sum(&l.exit, out, &mut self.has);
                    true
                } else {
                    for ((leaf, &base), &bit) in self.leaf_of.iter_mut().zip(&l.leaf_base).zip(&l.exit) {
                        *leaf = l.leaves[base + bit as usize];
                    }
                    false
                }
            }
            Ok(Quick::Narrow(q)) => {
                q.exits(x, &mut self.leaf_of);
                false
            }
            Ok(Quick::Wide(q)) => {
                q.exits(x, &mut self.leaf_of);
                false
            }
            Err(_) => {
                self.walk_exact(x);
                false
            }
        };
        if summed {
            self.finish(out);
        } else {
            self.aggregate(out);
        }
        self.scale(out);
    }

    /// The trailing `Mul`s.
    #[inline]
    fn scale(&self, out: &mut [f32]) {
        for &k in &self.scales {
            out.iter_mut().for_each(|o| *o *= k);
        }
    }

    /// The exit leaves' weights into the output row, as ONNX Runtime's aggregator does.
    /// ONNX Runtime keeps a "has score" flag per output beside its sum, and writes an output
    /// no reached leaf weighed (and no base value was assigned to) as 0 — its base value
    /// added or not — before the post-transform; `has` mirrors those flags.
    #[inline]
    fn aggregate(&mut self, out: &mut [f32]) {
        if let Aggregate::One { .. } = self.aggregate {
            let mut s = 0f32;
            for &leaf in &self.leaf_of {
                s += self.weights[self.leaf_range[leaf as usize].0 as usize].1;
            }
            out[0] = s;
            return self.finish(out);
        }
        // Sum the leaves in the model's tree order (ONNX Runtime's order of additions).
        out.fill(0.0);
        let has = &mut self.has[..];
        has.fill(false);
        for &leaf in &self.leaf_of {
            let (s, e) = self.leaf_range[leaf as usize];
            for &(o, w) in &self.weights[s as usize..e as usize] {
                out[o as usize] += w;
                has[o as usize] = true;
            }
        }
        self.finish(out);
    }

    /// From the sums in `out` (and `has`, which outputs a reached leaf weighed) to the
    /// output row: averages, base values, the two-class rules, the post-transform.
    #[inline]
    fn finish(&mut self, out: &mut [f32]) {
        let trees = self.roots.len() as f32;
        let has = &mut self.has[..];
        match self.aggregate {
            Aggregate::One { average, origin } => {
                if average {
                    out[0] /= trees;
                }
                out[0] += origin;
                return;
            }
            Aggregate::Targets { average } if self.base.is_empty() => {
                if average {
                    out.iter_mut().for_each(|o| *o /= trees);
                }
            }
            Aggregate::Targets { average } => {
                for (o, &b) in out.iter_mut().zip(&self.base) {
                    *o = if average { *o / trees + b } else { *o + b };
                }
            }
            Aggregate::Classes => {
                for ((o, &b), h) in out.iter_mut().zip(&self.base).zip(has.iter_mut()) {
                    *o += b;
                    *h = true;
                }
            }
            Aggregate::Binary => match *self.base.as_slice() {
                [_, b1] if has[1] => {
                    out[1] = b1 + out[0];
                    out[0] = -out[1];
                }
                [b0, b1] => {
                    out[0] += b0;
                    out[1] += b1;
                }
                _ if has[1] => {}
                _ => {
                    // One score: ONNX Runtime writes its negation beside it, untransformed
                    // unless LOGISTIC.
                    let s = out[0];
                    if self.post == PostTransform::Logistic {
                        out[0] = logistic(-s);
                        out[1] = logistic(s);
                    } else {
                        out[0] = -s;
                        out[1] = s;
                    }
                    return;
                }
            },
        }
        for (o, &h) in out.iter_mut().zip(has.iter()) {
            if !h {
                *o = 0.0;
            }
        }
        self.post.apply(out);
    }

    /// Node by node with ONNX Runtime's comparisons and missing-value rule.
    fn walk_exact(&mut self, x: &[f32]) {
        for (leaf, &root) in self.leaf_of.iter_mut().zip(&self.roots) {
            let mut i = root;
            loop {
                let e = &self.exact[i as usize];
                if e.mode == Mode::Leaf {
                    break;
                }
                i = if e.goes_yes(x[e.feature as usize]) { e.yes } else { e.no };
            }
            *leaf = i;
        }
    }

    /// Inputs this ensemble reads.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Rows that cover the ensemble, for the load-time gate (`engine::gate`): for every
    /// leaf a row can reach, rows that reach it with each feature it depends on at the
    /// inside edges of its range (and NaN where NaN also leads there); for every
    /// threshold, rows at it and at the values just above and below it; for every output,
    /// a row no reached leaf weighs it in (when leaves allow one); rows with every feature on
    /// or beside a random one of its thresholds; then zeros of both signs, the smallest
    /// normals, a denormal, huge finite values, infinities and NaN. Values are never denormal unless meant as one: with denormals as zero they
    /// compare as 0. Row-major, `features()` values a row.
    pub fn covering_rows(&self) -> Vec<f32> {
        let f = self.features;
        let mut rows: Vec<f32> = Vec::new();
        let paths = self.leaf_paths();
        for path in &paths {
            if !path.reachable() {
                continue;
            }
            for edge in [Edge::High, Edge::Low, Edge::Nan] {
                let mut row = vec![0f32; f];
                let mut any_nan = false;
                for &(feature, range) in &path.ranges {
                    row[feature as usize] = match edge {
                        Edge::Nan if range.nan => {
                            any_nan = true;
                            f32::NAN
                        }
                        Edge::Low => range.witness_low().unwrap_or(f32::NAN),
                        _ => range.witness_high().unwrap_or(f32::NAN),
                    };
                }
                if edge != Edge::Nan || any_nan {
                    rows.extend(row);
                }
            }
        }
        rows.extend(self.absence_rows(&paths));
        let mut thresholds: Vec<(u32, f32)> = self
            .exact
            .iter()
            .filter(|e| e.mode != Mode::Leaf && !e.thr.is_nan())
            .map(|e| (e.feature, stable(e.thr)))
            .collect();
        thresholds.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        thresholds.dedup();
        // Per feature, the values that sit on or beside one of its thresholds (and 0).
        let mut values: Vec<Vec<f32>> = vec![vec![0.0]; f];
        for (feature, t) in thresholds {
            for v in [t, up(t), down(t)] {
                let mut row = vec![0f32; f];
                row[feature as usize] = v;
                rows.extend(row);
                values[feature as usize].push(v);
            }
        }
        // Combinations: every feature on or beside a random one of its thresholds at once, so
        // that the trees reach their leaves in mixes no single leaf's row makes.
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..COMBINED_ROWS {
            for vs in &values {
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                rows.push(vs[(rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % vs.len()]);
            }
        }
        let denormal = f32::from_bits(1 << 20);
        for v in [
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            denormal,
            -denormal,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ] {
            rows.extend(std::iter::repeat_n(v, f));
        }
        rows
    }

    /// What `rows` (row-major, as [`covering_rows`](Self::covering_rows)) exercised, walked
    /// node by node on this thread: branch nodes taken both ways, leaves reached, against
    /// what any row can reach (from each leaf's path constraints).
    pub fn coverage(&self, rows: &[f32]) -> Coverage {
        let n = self.exact.len();
        let (mut yes, mut no, mut reached) = (vec![false; n], vec![false; n], vec![false; n]);
        for x in rows.chunks_exact(self.features) {
            for &root in &self.roots {
                let mut i = root as usize;
                while self.exact[i].mode != Mode::Leaf {
                    let e = &self.exact[i];
                    if e.goes_yes(x[e.feature as usize]) {
                        yes[i] = true;
                        i = e.yes as usize;
                    } else {
                        no[i] = true;
                        i = e.no as usize;
                    }
                }
                reached[i] = true;
            }
        }
        // A leaf is reachable when its path's constraints can all hold; a branch side when a
        // reachable leaf hangs below it.
        let mut reachable = vec![false; n];
        for path in self.leaf_paths() {
            reachable[path.leaf as usize] = path.reachable();
        }
        let mut below = vec![false; n];
        for &root in &self.roots {
            self.mark_reachable(root as usize, &reachable, &mut below);
        }
        let mut c = Coverage::default();
        for (i, e) in self.exact.iter().enumerate() {
            if e.mode == Mode::Leaf {
                c.leaves += 1;
                if reachable[i] {
                    c.leaves_reachable += 1;
                    c.leaves_reached += usize::from(reached[i]);
                }
            } else {
                c.branches += 1;
                if below[e.yes as usize] && below[e.no as usize] {
                    c.branches_two_sided += 1;
                    c.branches_both += usize::from(yes[i] && no[i]);
                }
            }
        }
        c
    }

    /// Whether a reachable leaf hangs below node `i` (into `below`, post-order, no recursion).
    fn mark_reachable(&self, root: usize, reachable: &[bool], below: &mut [bool]) {
        let mut stack = vec![(root, false)];
        while let Some((i, expanded)) = stack.pop() {
            let e = &self.exact[i];
            if e.mode == Mode::Leaf {
                below[i] = reachable[i];
            } else if expanded {
                below[i] = below[e.yes as usize] || below[e.no as usize];
            } else {
                stack.push((i, true));
                stack.push((e.yes as usize, false));
                stack.push((e.no as usize, false));
            }
        }
    }

    /// For each output, a row in which no reached leaf weighs it, when reachable leaves allow
    /// one (found tree by tree, greedily): how ONNX Runtime scores an output nothing weighed
    /// (read as 0, its base value dropped; a binary classifier's one-score rule) only shows
    /// in such rows.
    fn absence_rows(&self, paths: &[Path]) -> Vec<f32> {
        let mut rows = Vec::new();
        for output in 0..self.outputs as u32 {
            let mut acc: Vec<Option<Range>> = vec![None; self.features];
            let mut found = true;
            for tree in 0..self.roots.len() {
                let fits = paths.iter().filter(|p| p.tree == tree && p.reachable()).find_map(|p| {
                    let (s, e) = self.leaf_range[p.leaf as usize];
                    if self.weights[s as usize..e as usize].iter().any(|&(o, _)| o == output) {
                        return None;
                    }
                    let mut next = acc.clone();
                    for &(feature, range) in &p.ranges {
                        let r = match next[feature as usize] {
                            Some(a) => a.intersect(&range),
                            None => range,
                        };
                        if !(r.nan || r.witness_high().is_some()) {
                            return None;
                        }
                        next[feature as usize] = Some(r);
                    }
                    Some(next)
                });
                match fits {
                    Some(next) => acc = next,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            if found {
                rows.extend(acc.iter().map(|r| r.map_or(0.0, |r| r.witness_high().unwrap_or(f32::NAN))));
            }
        }
        rows
    }

    /// Every leaf with the constraints its path puts on the features it reads, tree by tree.
    fn leaf_paths(&self) -> Vec<Path> {
        let mut paths = Vec::new();
        for (tree, &root) in self.roots.iter().enumerate() {
            let mut stack = vec![Path { tree, leaf: root, ranges: Vec::new() }];
            while let Some(p) = stack.pop() {
                let e = self.exact[p.leaf as usize];
                if e.mode == Mode::Leaf {
                    paths.push(p);
                    continue;
                }
                for (side_yes, child) in [(true, e.yes), (false, e.no)] {
                    let mut q = Path { tree: p.tree, leaf: child, ranges: p.ranges.clone() };
                    let at = match q.ranges.iter().position(|r| r.0 == e.feature) {
                        Some(at) => at,
                        None => {
                            q.ranges.push((e.feature, Range::ANY));
                            q.ranges.len() - 1
                        }
                    };
                    q.ranges[at].1.narrow(&e, side_yes);
                    stack.push(q);
                }
            }
        }
        paths
    }
}

/// What the gate's rows exercised of a tree ensemble.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Coverage {
    pub branches: usize,
    /// Branch nodes with a reachable leaf on each side, and of those, the ones taken both ways.
    pub branches_two_sided: usize,
    pub branches_both: usize,
    pub leaves: usize,
    pub leaves_reachable: usize,
    pub leaves_reached: usize,
}

impl Coverage {
    /// Every reachable leaf reached and every branch with two reachable sides taken both ways.
    pub fn full(&self) -> bool {
        self.branches_both == self.branches_two_sided && self.leaves_reached == self.leaves_reachable
    }
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "branch nodes both sides {}/{}, leaves {}/{}",
            self.branches_both, self.branches_two_sided, self.leaves_reached, self.leaves_reachable
        )?;
        if self.leaves_reachable < self.leaves || self.branches_two_sided < self.branches {
            write!(
                f,
                " (of {} leaves and {} branch nodes: the others no row can reach)",
                self.leaves, self.branches
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Edge {
    High,
    Low,
    Nan,
}

/// A leaf and the range of each feature its path tests.
struct Path {
    tree: usize,
    leaf: u32,
    ranges: Vec<(u32, Range)>,
}

impl Path {
    fn reachable(&self) -> bool {
        self.ranges.iter().all(|(_, r)| r.nan || r.witness_high().is_some())
    }
}

/// The values of one feature that follow a path: an interval of non-NaN values less some
/// points (or one point), and whether NaN follows it too. Bounds are compared as the
/// thresholds are with denormals as zero (a denormal threshold is 0, −0.0 is 0.0).
#[derive(Clone, Copy, Debug)]
struct Range {
    lo: f32,
    lo_open: bool,
    hi: f32,
    hi_open: bool,
    /// `==` nodes passed on their true side: the one value allowed.
    point: Option<f32>,
    /// `==` false sides and `!=` true sides: values excluded (a few at most per path).
    excluded: [f32; 4],
    n_excluded: usize,
    /// Too many exclusions to track: treat the range as unreachable (counted as such).
    overflow: bool,
    nan: bool,
}

impl Range {
    const ANY: Range = Range {
        lo: f32::NEG_INFINITY,
        lo_open: false,
        hi: f32::INFINITY,
        hi_open: false,
        point: None,
        excluded: [0.0; 4],
        n_excluded: 0,
        overflow: false,
        nan: true,
    };

    /// Keep only the values that take node `e`'s `yes` (or `no`) side.
    fn narrow(&mut self, e: &Exact, yes: bool) {
        let nan_goes_yes = e.missing_true || e.mode == Mode::Neq;
        self.nan &= nan_goes_yes == yes;
        if e.thr.is_nan() {
            // Non-NaN values all go `no` (all comparisons with NaN false) but for `!=` (true).
            if (e.mode == Mode::Neq) != yes {
                self.lo = f32::INFINITY;
                self.lo_open = true;
            }
            return;
        }
        let t = stable(e.thr);
        match (e.mode, yes) {
            (Mode::Leq, true) | (Mode::Gt, false) => self.below(t, false),
            (Mode::Lt, true) | (Mode::Gte, false) => self.below(t, true),
            (Mode::Gte, true) | (Mode::Lt, false) => self.above(t, false),
            (Mode::Gt, true) | (Mode::Leq, false) => self.above(t, true),
            (Mode::Eq, true) | (Mode::Neq, false) => {
                if self.point.is_some_and(|p| p != t) {
                    self.lo = f32::INFINITY;
                    self.lo_open = true;
                }
                self.point = Some(t);
            }
            (Mode::Eq, false) | (Mode::Neq, true) => {
                if self.n_excluded == self.excluded.len() {
                    self.overflow = true;
                } else {
                    self.excluded[self.n_excluded] = t;
                    self.n_excluded += 1;
                }
            }
            (Mode::Leaf, _) => unreachable!("branches only"),
        }
    }

    /// The values both ranges admit.
    fn intersect(&self, other: &Range) -> Range {
        let mut r = *self;
        r.nan &= other.nan;
        if other.hi_open {
            r.below(other.hi, true);
        } else if other.hi != f32::INFINITY {
            r.below(other.hi, false);
        }
        if other.lo_open {
            r.above(other.lo, true);
        } else if other.lo != f32::NEG_INFINITY {
            r.above(other.lo, false);
        }
        if let Some(p) = other.point {
            if r.point.is_some_and(|q| q != p) {
                r.lo = f32::INFINITY;
                r.lo_open = true;
            }
            r.point = Some(p);
        }
        for &x in &other.excluded[..other.n_excluded] {
            if r.n_excluded == r.excluded.len() {
                r.overflow = true;
            } else {
                r.excluded[r.n_excluded] = x;
                r.n_excluded += 1;
            }
        }
        r.overflow |= other.overflow;
        r
    }

    fn below(&mut self, t: f32, open: bool) {
        if t < self.hi || (t == self.hi && open) {
            self.hi = t;
            self.hi_open = open;
        }
    }

    fn above(&mut self, t: f32, open: bool) {
        if t > self.lo || (t == self.lo && open) {
            self.lo = t;
            self.lo_open = open;
        }
    }

    fn admits(&self, v: f32) -> bool {
        let lo_ok = if self.lo_open { v > self.lo } else { v >= self.lo };
        let hi_ok = if self.hi_open { v < self.hi } else { v <= self.hi };
        lo_ok
            && hi_ok
            && !self.overflow
            && self.point.is_none_or(|p| p == v)
            && !self.excluded[..self.n_excluded].contains(&v)
    }

    /// The highest non-NaN value the range admits, stepping down past exclusions; `None`
    /// when it admits none.
    fn witness_high(&self) -> Option<f32> {
        if let Some(p) = self.point {
            return self.admits(p).then_some(p);
        }
        let mut v = if self.hi_open { down(self.hi) } else { self.hi };
        if v == f32::INFINITY && !self.admits(v) {
            v = f32::MAX;
        }
        for _ in 0..=self.excluded.len() {
            if self.admits(v) {
                return Some(v);
            }
            if v.is_nan() || v < self.lo {
                return None;
            }
            v = down(v);
        }
        None
    }

    /// The lowest non-NaN value the range admits (see [`witness_high`](Self::witness_high)).
    fn witness_low(&self) -> Option<f32> {
        if let Some(p) = self.point {
            return self.admits(p).then_some(p);
        }
        let mut v = if self.lo_open { up(self.lo) } else { self.lo };
        for _ in 0..=self.excluded.len() {
            if self.admits(v) {
                return Some(v);
            }
            if v.is_nan() || v > self.hi {
                return None;
            }
            v = up(v);
        }
        None
    }
}

/// A threshold as the hardware compares it with denormals as zero: denormals and −0.0 are 0.0.
fn stable(t: f32) -> f32 {
    if t.is_subnormal() || t == 0.0 {
        0.0
    } else {
        t
    }
}

/// The next value above `v` that compares as itself with denormals as zero (no denormals):
/// `-MIN_POSITIVE → 0 → MIN_POSITIVE`; `MAX → ∞`; NaN for `∞`.
fn up(v: f32) -> f32 {
    if v.is_nan() || v == f32::INFINITY {
        f32::NAN
    } else if v == 0.0 {
        f32::MIN_POSITIVE
    } else if v == -f32::MIN_POSITIVE {
        0.0
    } else if v > 0.0 {
        f32::from_bits(v.to_bits() + 1)
    } else {
        f32::from_bits(v.to_bits() - 1)
    }
}

/// The next value below `v` with denormals skipped (see [`up`]).
fn down(v: f32) -> f32 {
    -up(-v)
}

/// QuickScorer's tables for `exact`'s trees, or why there are none: a tree has more than
/// 64 leaves, a node compares by `==`/`!=`, or a threshold is a denormal (it compares as 0
/// with denormals as zero and as itself without; the node walk compares as ONNX Runtime does
/// on the same thread either way).
fn quick_path(exact: &[Exact], roots: &[u32], features: usize) -> Result<Quick, &'static str> {
    if exact.iter().any(|e| matches!(e.mode, Mode::Eq | Mode::Neq)) {
        return Err("node walk: ==/!= nodes");
    }
    if exact.iter().any(|e| e.mode != Mode::Leaf && e.thr.is_subnormal()) {
        return Err("node walk: a denormal threshold");
    }
    lanes::Lanes::build(exact, roots, features)
        .map(Quick::Lanes)
        .or_else(|| bit_vectors::<u32>(exact, roots, features).map(Quick::Narrow))
        .or_else(|| bit_vectors::<u64>(exact, roots, features).map(Quick::Wide))
        .ok_or("node walk: a tree of more than 64 leaves")
}

/// [`Grouped`] sums for `lanes`' trees, when every leaf holds one weight and all of a
/// tree's leaves weigh the same output.
fn grouped(
    lanes: &lanes::Lanes,
    leaf_range: &[(u32, u32)],
    weights: &[(u32, f32)],
    outputs: usize,
) -> Option<Grouped> {
    let trees = lanes.leaf_base.len();
    let mut per_output: Vec<Vec<(u32, u32)>> = vec![Vec::new(); outputs];
    let mut weight = Vec::with_capacity(lanes.leaves.len());
    for t in 0..trees {
        let end = lanes.leaf_base.get(t + 1).copied().unwrap_or(lanes.leaves.len());
        let mut output = None;
        let base = weight.len() as u32;
        for &leaf in &lanes.leaves[lanes.leaf_base[t]..end] {
            let (s, e) = leaf_range[leaf as usize];
            let [(o, w)] = weights[s as usize..e as usize] else { return None };
            if *output.get_or_insert(o) != o {
                return None;
            }
            weight.push(w);
        }
        per_output[output? as usize].push((t as u32, base));
    }
    let rounds = per_output.iter().all(|ts| ts.len() == per_output[0].len()).then(|| per_output[0].len());
    let starts = std::iter::once(0)
        .chain(per_output.iter().scan(0, |at, ts| {
            *at += ts.len();
            Some(*at)
        }))
        .collect();
    Some(Grouped { starts, order: per_output.concat(), weight, rounds })
}

/// A branch of one tree as the leaf-bit layouts (the bit vectors, the lanes) see it: its
/// two sides, and the tree's leaves on each (bits `a..b`: the tree's leaves in order, the
/// small side first).
struct Split {
    node: u32,
    /// `v == thr` goes to the large side (`<` and `>=` nodes).
    tie_large: bool,
    /// The true child is the small side (`<=` and `<` nodes).
    yes_small: bool,
    small: (usize, usize),
    large: (usize, usize),
}

/// One tree's leaves in order, the small side first (their global node indices), and its
/// branches in post-order; `None` when it has more than `max_leaves` leaves. The tree holds
/// no `==`/`!=` node (the caller's check).
fn splits(exact: &[Exact], root: u32, max_leaves: usize) -> Option<(Vec<u32>, Vec<Split>)> {
    let (mut leaves, mut splits) = (Vec::new(), Vec::new());
    // Post-order by an explicit stack of (node, children already pushed).
    let mut stack = vec![(root, false)];
    let mut spans: Vec<(usize, usize)> = Vec::new(); // leaf bits a..b of each finished subtree
    while let Some((i, expanded)) = stack.pop() {
        let e = &exact[i as usize];
        if e.mode == Mode::Leaf {
            let bit = leaves.len();
            if bit >= max_leaves {
                return None;
            }
            leaves.push(i);
            spans.push((bit, bit + 1));
            continue;
        }
        // (tie goes large, small-side child, large-side child).
        let (tie_large, small, large) = match e.mode {
            Mode::Leq => (false, e.yes, e.no),
            Mode::Lt => (true, e.yes, e.no),
            Mode::Gte => (true, e.no, e.yes),
            Mode::Gt => (false, e.no, e.yes),
            Mode::Leaf | Mode::Eq | Mode::Neq => unreachable!("branches only"),
        };
        if !expanded {
            stack.push((i, true));
            stack.push((large, false));
            stack.push((small, false));
            continue;
        }
        // Both subtrees done: the large side's span on top, the small side's under it.
        let (large_span, small_span) = (spans.pop().expect("large side"), spans.pop().expect("small side"));
        spans.push((small_span.0, large_span.1));
        splits.push(Split {
            node: i,
            tie_large,
            yes_small: e.yes == small,
            small: small_span,
            large: large_span,
        });
    }
    Some((leaves, splits))
}

/// The bit vectors of `exact`'s trees in `M`, or `None` when a tree has more leaves than `M` has bits.
fn bit_vectors<M: Mask>(exact: &[Exact], roots: &[u32], features: usize) -> Option<BitVectors<M>> {
    let mut init = vec![M::ALL; roots.len()];
    let (mut leaf_base, mut leaves) = (Vec::with_capacity(roots.len()), Vec::new());
    // (feature, thr, tie goes large, tree, mask) of every branch.
    let mut entries: Vec<(u32, f32, bool, u32, M)> = Vec::new();
    for (t, &root) in roots.iter().enumerate() {
        // Leaves in order, the small side first; each branch's mask clears its small side's leaves.
        let (tree_leaves, splits) = splits(exact, root, M::BITS)?;
        leaf_base.push(leaves.len());
        leaves.extend(tree_leaves);
        for s in splits {
            let e = &exact[s.node as usize];
            if e.thr.is_nan() {
                // Every non-NaN row goes to the node's false child: clear the true child's side.
                let true_span = if s.yes_small { s.small } else { s.large };
                init[t] &= M::span(true_span.0, true_span.1).not();
            } else {
                let thr = if e.thr == 0.0 { 0.0 } else { e.thr };
                entries.push((e.feature, thr, s.tie_large, t as u32, M::span(s.small.0, s.small.1).not()));
            }
        }
    }
    // Per feature, ascending threshold; at one threshold the nodes a tie sends large first
    // (so the nodes a value sends large are always a prefix); then tree order.
    entries.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(b.2.cmp(&a.2)).then(a.3.cmp(&b.3)));
    let starts = (0..=features as u32).map(|f| entries.partition_point(|e| e.0 < f)).collect();
    Some(BitVectors {
        starts,
        thr: entries.iter().map(|e| e.1).collect(),
        tie_large: entries.iter().map(|e| e.2).collect(),
        clear: entries.iter().map(|e| (e.3, e.4)).collect(),
        bits: init.clone(),
        init,
        leaf_base,
        leaves,
    })
}

impl<M: Mask> BitVectors<M> {
    /// Each tree's exit leaf for row `x` (no NaN) into `leaf_of`. No allocation.
    #[inline]
    fn exits(&mut self, x: &[f32], leaf_of: &mut [u32]) {
        self.bits.copy_from_slice(&self.init);
        for (f, &v) in x.iter().enumerate() {
            let (s, e) = (self.starts[f], self.starts[f + 1]);
            // The nodes that send v to their large side (`thr < v`, or `thr == v` for `<`/`>=`
            // nodes, which sort first among equal thresholds) are a prefix: found by binary
            // search, then cleared in a loop with no data-dependent branch.
            let thr = &self.thr[s..e];
            let mut n = thr.partition_point(|&t| t < v);
            while n < thr.len() && thr[n] == v && self.tie_large[s + n] {
                n += 1;
            }
            let bits = &mut self.bits[..];
            for &(t, m) in &self.clear[s..s + n] {
                debug_assert!((t as usize) < bits.len());
                // SAFETY: every `t` is a tree index (< trees = bits.len()), fixed at build.
                unsafe { *bits.get_unchecked_mut(t as usize) &= m };
            }
        }
        for ((leaf, &b), &base) in leaf_of.iter_mut().zip(&self.bits).zip(&self.leaf_base) {
            // The exit leaf is never cleared, so some bit is set.
            debug_assert!(b != M::ALL.not());
            *leaf = self.leaves[base + b.lowest()];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{down, stable, up};

    /// The feature-major bit vectors (what serves trees the lanes cannot take: more than
    /// 64 features or 254 cut points a feature) reach the walk's leaves.
    #[test]
    fn bit_vectors_reach_the_walks_leaves() {
        use super::{bit_vectors, Trees};
        use crate::engine::native::NativeModel;
        for toml in [
            "models/lobster_stateful.toml",
            "tests/fixtures/models/trust_lt_regressor.toml",
            "tests/fixtures/models/trust_gte_classifier.toml",
            "tests/fixtures/models/trust_nan_threshold.toml",
        ] {
            let manifest = crate::manifest::Manifest::load(&crate::source_root().join(toml)).expect(toml);
            let Ok(NativeModel::Trees(mut walk)) = NativeModel::from_manifest(&manifest, &[]) else {
                panic!("{toml}")
            };
            let mut q = bit_vectors::<u32>(&walk.exact, &walk.roots, walk.features).expect("≤ 32 leaves");
            let mut leaves = vec![0; walk.roots.len()];
            let rows: Vec<f32> = walk.covering_rows();
            let mut checked = 0;
            for x in rows.chunks_exact(walk.features).filter(|r| !r.iter().any(|v| v.is_nan())) {
                Trees::walk_exact(&mut walk, x);
                q.exits(x, &mut leaves);
                assert_eq!(leaves, walk.leaf_of, "{toml}: row {x:?}");
                checked += 1;
            }
            assert!(checked > 100, "{toml}: {checked} rows");
        }
    }

    #[test]
    fn stepping_skips_denormals_and_keeps_order() {
        assert_eq!(up(0.0), f32::MIN_POSITIVE);
        assert_eq!(up(-f32::MIN_POSITIVE), 0.0);
        assert_eq!(down(0.0), -f32::MIN_POSITIVE);
        assert_eq!(down(f32::MIN_POSITIVE), 0.0);
        assert_eq!(up(f32::MAX), f32::INFINITY);
        assert!(up(f32::INFINITY).is_nan());
        for v in [-3.5f32, -1e-30, 1.0, 2.5, f32::MAX / 2.0] {
            assert!(up(v) > v && down(v) < v, "{v}");
            assert!(!up(v).is_subnormal() && !down(v).is_subnormal());
            assert_eq!(down(up(v)), v);
        }
        assert_eq!(stable(-0.0).to_bits(), 0);
        assert_eq!(stable(1e-40), 0.0);
    }
}
