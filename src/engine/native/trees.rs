//! Tree ensembles evaluated natively, generated at load from the ONNX-ML graph:
//! `TreeEnsembleClassifier` (post-transform NONE, LOGISTIC, SOFTMAX, SOFTMAX_ZERO) and
//! `TreeEnsembleRegressor` (aggregate SUM or AVERAGE), followed by any `Identity` and
//! `Mul` by a scalar initializer — what onnxmltools writes for LightGBM and XGBoost,
//! and skl2onnx for scikit-learn's forests and boosting.
//!
//! ONNX Runtime walks one tree at a time with a data-dependent branch per node: on
//! unpredictable inputs about half of them mispredict. This evaluator uses
//! QuickScorer (Lucchese et al., SIGIR 2015) instead: each tree keeps a bit per leaf
//! (≤ 64 leaves); every node whose test fails clears the leaves of the subtree it
//! rejects, and the tree's exit leaf is the lowest bit left. The failing nodes are
//! found per feature, not per tree: each feature's nodes are sorted by threshold, so
//! those that fail for `x` are a prefix of the list — found by one binary search per
//! feature, then cleared in a loop with no data-dependent branch (independent mask
//! updates the CPU overlaps). Trees of more than 64 leaves, and comparisons by
//! `==`/`!=`, are walked node by node.
//!
//! Semantics are ONNX Runtime's, including missing values: a row holding a NaN takes
//! the exact walk (each node's own comparison and `missing_value_tracks_true`), so the
//! bit-vector path may fold every comparison into one `x <= t`: `x < t` ⟺
//! `x <= next_down(t)`, and `>`/`>=` swap the children.

use std::collections::HashMap;

use super::graph::{text, Graph, PostTransform};
use super::onnx_pb::{GraphProto, NodeProto};
use crate::manifest::Manifest;

const ML: &str = "ai.onnx.ml";

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

/// A node as ONNX states it, for rows with missing values.
#[derive(Clone, Copy, Debug)]
struct Exact {
    mode: Mode,
    missing_true: bool,
    thr: f32,
    feature: u32,
    yes: u32,
    no: u32,
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

/// QuickScorer's tables: per feature, the branch nodes in ascending threshold order
/// (normalised to `x <= thr`), each with its tree and the mask that clears the leaves
/// of its `x <= thr` side.
#[derive(Clone, Debug)]
struct BitVectors<M> {
    /// `thr[starts[f]..starts[f + 1]]`: feature f's thresholds, ascending.
    starts: Vec<usize>,
    thr: Vec<f32>,
    /// `(tree, mask)` beside each threshold: one stream of 8 (u32) or 16 bytes per node.
    clear: Vec<(u32, M)>,
    /// Per tree: all leaves, less those behind a node that always fails (`x < -inf`).
    init: Vec<M>,
    /// Scratch: the current row's bits per tree.
    bits: Vec<M>,
    /// Per tree: the global node index of its leaves, lowest bit first (`leaf_base[t] + bit`).
    leaf_base: Vec<usize>,
    leaves: Vec<u32>,
}

#[derive(Clone, Debug)]
enum Quick {
    Narrow(BitVectors<u32>),
    Wide(BitVectors<u64>),
}

#[derive(Clone, Debug)]
pub struct Trees {
    exact: Vec<Exact>,
    /// Global index of each tree's root, in the model's tree order.
    roots: Vec<u32>,
    /// The bit-vector path, when every tree has ≤ 64 leaves and no node
    /// compares by `==`/`!=`.
    quick: Option<Quick>,
    /// Per node: range into `weights` (empty for branches and weightless leaves).
    leaf_range: Vec<(u32, u32)>,
    /// `(output index, weight)` pairs, leaves' in the model's order.
    weights: Vec<(u32, f32)>,
    base: Vec<f32>,
    /// 1 / tree count for AVERAGE, else 1.
    average: f32,
    post: PostTransform,
    /// A trailing `Mul` by a scalar (onnxmltools multiplies by 1).
    scale: f32,
    features: usize,
    /// Scratch: the leaf each tree reached for the current row.
    leaf_of: Vec<u32>,
    what: &'static str,
    max_depth: usize,
    nodes: usize,
}

fn ints<'a>(n: &'a NodeProto, name: &str) -> &'a [i64] {
    n.attr(name).map_or(&[], |a| a.ints.as_slice())
}

fn floats<'a>(n: &'a NodeProto, name: &str) -> &'a [f32] {
    n.attr(name).map_or(&[], |a| a.floats.as_slice())
}

/// The largest float below `t` (`x < t` ⟺ `x <= next_down(t)` for every non-NaN x);
/// NaN for −∞ (nothing is below it, and `x <= NaN` is never true).
fn next_down(t: f32) -> f32 {
    if t.is_nan() || t == f32::NEG_INFINITY {
        f32::NAN
    } else if t == 0.0 {
        -f32::from_bits(1)
    } else if t > 0.0 {
        f32::from_bits(t.to_bits() - 1)
    } else {
        f32::from_bits(t.to_bits() + 1)
    }
}

impl Trees {
    /// Recognise the graph; `Err` says why it is not a tree ensemble this evaluator runs.
    pub fn from_graph(g: &GraphProto, manifest: &Manifest) -> Result<Trees, String> {
        let graph = Graph::new(g);
        let out = manifest.output.name();
        // The tail: Identity and Mul by a scalar initializer, back to the ensemble.
        let mut at = out;
        let mut scale = 1.0f32;
        let top = loop {
            let n = graph.producer(at).ok_or_else(|| format!("no node makes `{at}`"))?;
            match (n.op_type.as_str(), n.domain.as_str()) {
                ("Identity", "") => at = &n.input[0],
                ("Mul", "") if n.input.len() == 2 => {
                    let data = graph.data_inputs(n);
                    let [data] = data.as_slice() else { return Err("a Mul of two values".into()) };
                    let k = n.input.iter().find(|i| i.as_str() != *data).expect("two inputs");
                    let k = graph.init(k, "the Mul's factor")?.floats()?;
                    let [k] = k.as_slice() else { return Err("a Mul by a non-scalar".into()) };
                    scale *= k;
                    at = data;
                }
                ("TreeEnsembleClassifier" | "TreeEnsembleRegressor", ML) => break n,
                (op, _) => return Err(format!("the output is made by `{op}`, not a tree ensemble")),
            }
        };
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
        if classifier {
            let labels = ints(top, "classlabels_int64s")
                .len()
                .max(top.attr("classlabels_strings").map_or(0, |a| a.strings.len()));
            if labels != outputs {
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
        } else {
            let n = top.attr("n_targets").map_or(1, |a| a.i);
            if n as usize != outputs {
                return Err(format!("n_targets {n} for an output of {outputs}"));
            }
        }
        if let Some(&bad) = w_ids.iter().find(|&&c| c < 0 || c as usize >= outputs) {
            return Err(format!("a leaf weight for output {bad} of {outputs}"));
        }
        let post = PostTransform::of(top)?;
        let aggregate = text(top, "aggregate_function").unwrap_or_else(|| "SUM".into());
        if !matches!(aggregate.as_str(), "SUM" | "AVERAGE") || (classifier && aggregate != "SUM") {
            return Err(format!("aggregate_function {aggregate}"));
        }
        let base = floats(top, "base_values").to_vec();
        let base = match base.len() {
            0 => vec![0.0; outputs],
            n if n == outputs => base,
            n => return Err(format!("{n} base values for {outputs} outputs")),
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
        let mut roots: Vec<u32> = Vec::new();
        let mut tree_index: HashMap<i64, usize> = HashMap::new();
        for i in 0..n {
            if index.insert((treeids[i], nodeids[i]), i as u32).is_some() {
                return Err(format!("node {} of tree {} appears twice", nodeids[i], treeids[i]));
            }
            tree_index.entry(treeids[i]).or_insert_with(|| {
                roots.push(u32::MAX);
                roots.len() - 1
            });
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
        // A tree's root: the node no other node of its tree points to.
        let mut pointed = vec![false; n];
        for e in exact.iter().filter(|e| e.mode != Mode::Leaf) {
            pointed[e.yes as usize] = true;
            pointed[e.no as usize] = true;
        }
        for i in 0..n {
            if !pointed[i] {
                let t = tree_index[&treeids[i]];
                if roots[t] != u32::MAX {
                    return Err(format!("tree {} has more than one root", treeids[i]));
                }
                roots[t] = i as u32;
            }
        }
        if roots.contains(&u32::MAX) {
            return Err("a tree without a root (a cycle)".into());
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
        let quick = bit_vectors::<u32>(&exact, &roots, features)
            .map(Quick::Narrow)
            .or_else(|| bit_vectors::<u64>(&exact, &roots, features).map(Quick::Wide));
        // Leaf weights, grouped by leaf in the model's order.
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
        let mut weights = Vec::with_capacity(w_vals.len());
        let leaf_range = per_leaf
            .into_iter()
            .map(|ws| {
                let start = weights.len() as u32;
                weights.extend(ws);
                (start, weights.len() as u32)
            })
            .collect();
        let average = if aggregate == "AVERAGE" { 1.0 / roots.len() as f32 } else { 1.0 };
        Ok(Trees {
            nodes: exact.len(),
            exact,
            leaf_of: vec![0; roots.len()],
            max_depth: depths.iter().copied().max().unwrap_or(0),
            roots,
            quick,
            leaf_range,
            weights,
            base,
            average,
            post,
            scale,
            features,
            what: if classifier { "TreeEnsembleClassifier" } else { "TreeEnsembleRegressor" },
        })
    }

    /// "TreeEnsembleClassifier 300 trees (9000 nodes, depth <= 14, bit vectors) x16 -> 3 -> SOFTMAX".
    pub fn describe(&self) -> String {
        format!(
            "{} {} trees ({} nodes, depth <= {}, {}) x{} -> {}{}{}",
            self.what,
            self.roots.len(),
            self.nodes,
            self.max_depth,
            match self.quick {
                Some(Quick::Narrow(_)) => "bit vectors u32",
                Some(Quick::Wide(_)) => "bit vectors u64",
                None => "node walk",
            },
            self.features,
            self.base.len(),
            self.post.suffix(),
            if self.average != 1.0 { " (average)" } else { "" },
        )
    }

    /// One row. No allocation.
    #[inline]
    pub fn run(&mut self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.features);
        debug_assert_eq!(out.len(), self.base.len());
        match &mut self.quick {
            _ if x.iter().any(|v| v.is_nan()) => self.walk_exact(x),
            Some(Quick::Narrow(q)) => q.exits(x, &mut self.leaf_of),
            Some(Quick::Wide(q)) => q.exits(x, &mut self.leaf_of),
            None => self.walk_exact(x),
        }
        // Sum the leaves in the model's tree order (ONNX Runtime's order of additions).
        out.fill(0.0);
        for &leaf in &self.leaf_of {
            let (s, e) = self.leaf_range[leaf as usize];
            for &(o, w) in &self.weights[s as usize..e as usize] {
                out[o as usize] += w;
            }
        }
        for (o, b) in out.iter_mut().zip(&self.base) {
            *o = *o * self.average + b;
        }
        self.post.apply(out);
        if self.scale != 1.0 {
            out.iter_mut().for_each(|o| *o *= self.scale);
        }
    }

    /// Node by node with ONNX Runtime's comparisons and missing-value rule.
    fn walk_exact(&mut self, x: &[f32]) {
        for (leaf, &root) in self.leaf_of.iter_mut().zip(&self.roots) {
            let mut i = root;
            loop {
                let e = &self.exact[i as usize];
                let v = x[e.feature as usize];
                let yes = match e.mode {
                    Mode::Leaf => break,
                    Mode::Leq => v <= e.thr,
                    Mode::Lt => v < e.thr,
                    Mode::Gte => v >= e.thr,
                    Mode::Gt => v > e.thr,
                    Mode::Eq => v == e.thr,
                    Mode::Neq => v != e.thr,
                };
                i = if yes || (e.missing_true && v.is_nan()) { e.yes } else { e.no };
            }
            *leaf = i;
        }
    }
}

/// QuickScorer's tables for `exact`'s trees, or `None` when a tree has more leaves
/// than `M` has bits or a node compares by `==`/`!=`.
fn bit_vectors<M: Mask>(exact: &[Exact], roots: &[u32], features: usize) -> Option<BitVectors<M>> {
    if exact.iter().any(|e| matches!(e.mode, Mode::Eq | Mode::Neq)) {
        return None;
    }
    // Every node as `x <= thr ? yes : no` (valid for rows without NaN).
    let norm = |e: &Exact| match e.mode {
        Mode::Leq => (e.thr, e.yes, e.no),
        Mode::Lt => (next_down(e.thr), e.yes, e.no),
        Mode::Gt => (e.thr, e.no, e.yes),
        Mode::Gte => (next_down(e.thr), e.no, e.yes),
        Mode::Leaf | Mode::Eq | Mode::Neq => unreachable!("branches only"),
    };
    let mut init = vec![M::ALL; roots.len()];
    let (mut leaf_base, mut leaves) = (Vec::with_capacity(roots.len()), Vec::new());
    // (feature, thr, tree, mask) of every branch.
    let mut entries: Vec<(u32, f32, u32, M)> = Vec::new();
    for (t, &root) in roots.iter().enumerate() {
        // Leaves in order, the `x <= thr` side first; each branch's mask clears that side's leaves.
        leaf_base.push(leaves.len());
        let first = leaves.len();
        // Post-order by an explicit stack of (node, children already pushed).
        let mut stack = vec![(root, false)];
        let mut spans: Vec<(usize, usize)> = Vec::new(); // leaf bits a..b of each finished subtree
        while let Some((i, expanded)) = stack.pop() {
            let e = &exact[i as usize];
            if e.mode == Mode::Leaf {
                let bit = leaves.len() - first;
                if bit >= M::BITS {
                    return None;
                }
                leaves.push(i);
                spans.push((bit, bit + 1));
                continue;
            }
            let (thr, yes, no) = norm(e);
            if !expanded {
                stack.push((i, true));
                stack.push((no, false));
                stack.push((yes, false));
                continue;
            }
            // Both subtrees done: `no`'s span on top, `yes`'s under it.
            let (no_span, yes_span) = (spans.pop().expect("no side"), spans.pop().expect("yes side"));
            let mask = M::span(yes_span.0, yes_span.1).not();
            spans.push((yes_span.0, no_span.1));
            if thr.is_nan() {
                // `x <= NaN` never holds: this node always fails.
                init[t] &= mask;
            } else {
                entries.push((e.feature, thr, t as u32, mask));
            }
        }
    }
    // Per feature, ascending threshold (ties in tree order: the masks commute anyway).
    entries.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    let starts = (0..=features as u32).map(|f| entries.partition_point(|e| e.0 < f)).collect();
    Some(BitVectors {
        starts,
        thr: entries.iter().map(|e| e.1).collect(),
        clear: entries.iter().map(|e| (e.2, e.3)).collect(),
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
            // The nodes that fail (`v > thr`) are the prefix of thresholds below v: found by
            // binary search, then cleared in a loop with no data-dependent branch.
            let n = self.thr[s..e].partition_point(|&t| t < v);
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
    use super::next_down;

    #[test]
    fn next_down_turns_less_than_into_at_most() {
        let probes = [
            -3.5f32,
            -1e-40,
            -0.0,
            0.0,
            1e-40,
            1.0,
            2.5,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for t in probes {
            for x in probes {
                assert_eq!(x < t, x <= next_down(t), "x {x} t {t}");
            }
        }
    }
}
