//! Reading an ONNX graph for the native evaluators: who makes each value, the
//! initializers, and the pieces more than one evaluator reads the same way (a `Gemm`
//! or `MatMul` layer, a `Softmax`'s axis).

use std::collections::HashMap;

use super::kernels::Packed;
use super::onnx_pb::{GraphProto, NodeProto, TensorProto};

/// Ops a value passes through unchanged in meaning for a one-step, batch-leading graph
/// (layout moves, the time/direction axes added or dropped, a layer sliced out).
const PASS_THROUGH: [&str; 8] =
    ["Squeeze", "Unsqueeze", "Transpose", "Reshape", "Identity", "Slice", "Gather", "Flatten"];

/// A graph's values by name.
pub struct Graph<'a> {
    producer: HashMap<&'a str, &'a NodeProto>,
    inits: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Graph<'a> {
    pub fn new(g: &'a GraphProto) -> Graph<'a> {
        Graph {
            producer: g.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect(),
            inits: g.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
        }
    }

    /// The node that makes `name`, if any (not for graph inputs and initializers).
    pub fn producer(&self, name: &str) -> Option<&'a NodeProto> {
        self.producer.get(name).copied()
    }

    /// The initializer `name`; `what` names it in the error.
    pub fn init(&self, name: &str, what: &str) -> Result<&'a TensorProto, String> {
        self.inits.get(name).copied().ok_or_else(|| format!("{what} `{name}` is not an initializer"))
    }

    /// A node's inputs that are neither empty nor initializers: the data it reads.
    pub fn data_inputs(&self, n: &'a NodeProto) -> Vec<&'a str> {
        n.input.iter().map(String::as_str).filter(|i| !i.is_empty() && !self.inits.contains_key(i)).collect()
    }

    /// Where a value comes from, following pass-through ops: a graph input's name or
    /// the output of the first other node.
    pub fn source(&self, mut name: &'a str) -> &'a str {
        for _ in 0..64 {
            match self.producer.get(name) {
                Some(n) if PASS_THROUGH.contains(&n.op_type.as_str()) && !n.input.is_empty() => {
                    name = &n.input[0]
                }
                _ => break,
            }
        }
        name
    }

    /// The values `name` is moved from through layout-only ops (pass-through ops and
    /// `Concat`): graph inputs, initializers and the outputs of the first other nodes.
    pub fn sources(&self, name: &'a str) -> Vec<&'a str> {
        let (mut found, mut stack, mut seen) = (Vec::new(), vec![name], std::collections::HashSet::new());
        while let Some(v) = stack.pop() {
            if !seen.insert(v) {
                continue;
            }
            match self.producer.get(v) {
                Some(n) if PASS_THROUGH.contains(&n.op_type.as_str()) && !n.input.is_empty() => {
                    stack.push(&n.input[0])
                }
                Some(n) if n.op_type == "Concat" => stack.extend(n.input.iter().map(String::as_str)),
                _ => found.push(v),
            }
        }
        found
    }

    /// The first node on the data path to `outputs` that `modelled` does not hold and that
    /// is not layout-only (pass-through ops, `Concat`): an op the evaluator would silently
    /// drop — a `Clip` on a state output, a scaling `Mul` — so it must refuse the graph.
    /// Only data inputs are followed (a `Reshape`'s shape, a `Gather`'s indices are not).
    pub fn unmodelled(&self, outputs: &[&'a str], modelled: &[&NodeProto]) -> Option<&'a NodeProto> {
        let mut stack: Vec<&str> = outputs.to_vec();
        let mut seen = std::collections::HashSet::new();
        while let Some(v) = stack.pop() {
            let Some(&n) = self.producer.get(v) else { continue };
            if !seen.insert(std::ptr::from_ref(n)) {
                continue;
            }
            if modelled.iter().any(|m| std::ptr::eq(*m, n)) {
                stack.extend(self.data_inputs(n));
            } else if PASS_THROUGH.contains(&n.op_type.as_str()) && !n.input.is_empty() {
                stack.push(&n.input[0]);
            } else if n.op_type == "Concat" {
                stack.extend(n.input.iter().map(String::as_str));
            } else {
                return Some(n);
            }
        }
        None
    }

    /// A `Gemm` (any transB, alpha, beta·C) or a `MatMul` by an initializer, reading a
    /// row of `width` values: `(W, bias)` with `y = W·x + bias`, alpha and beta folded in.
    pub fn linear_layer(&self, n: &NodeProto, width: usize) -> Result<(Packed, Vec<f32>), String> {
        let gemm = n.op_type == "Gemm";
        let geti = |a: &str, d: i64| n.attr(a).map_or(d, |a| a.i);
        let getf = |a: &str| n.attr(a).map_or(1.0, |a| a.f);
        let op = &n.op_type;
        if n.input.len() < 2
            || self.inits.contains_key(n.input[0].as_str())
            || (gemm && geti("transA", 0) != 0)
        {
            return Err(format!("{op} with transA, or by an initializer on the left"));
        }
        let w = self.init(&n.input[1], &format!("the {op}'s weights"))?;
        let wf = w.floats()?;
        let trans = gemm && geti("transB", 0) == 1;
        let (out, inp) = match (trans, w.dims.as_slice()) {
            (true, &[o, i]) | (false, &[i, o]) if i as usize == width && o > 0 => (o as usize, i as usize),
            (_, d) => return Err(format!("{op} weights {d:?} (transB {trans}) for a row of {width}")),
        };
        let alpha = if gemm { getf("alpha") } else { 1.0 };
        let t: Vec<f32> = (0..out)
            .flat_map(|o| (0..inp).map(move |i| (o, i)))
            .map(|(o, i)| alpha * if trans { wf[o * inp + i] } else { wf[i * out + o] })
            .collect();
        let mut bias = vec![0.0; out];
        if let Some(c) = n.input.get(2).filter(|s| gemm && !s.is_empty()) {
            let c = self.init(c, &format!("the {op}'s C"))?.floats()?;
            let beta = getf("beta");
            match c.len() {
                1 => bias.fill(beta * c[0]),
                k if k == out => bias.iter_mut().zip(&c).for_each(|(b, c)| *b = beta * c),
                k => return Err(format!("{op} bias of {k} values for {out} outputs")),
            }
        }
        Ok((Packed::new(&t, out, inp), bias))
    }
}

/// A `Softmax` over the row (axis -1 or 1 of `[batch, n]`), or why not.
pub fn check_softmax(n: &NodeProto) -> Result<(), String> {
    match n.attr("axis").map_or(-1, |a| a.i) {
        -1 | 1 => Ok(()),
        axis => Err(format!("Softmax over axis {axis}")),
    }
}

/// ONNX Runtime's `ComputeLogistic`: `1 / (1 + exp(-|x|))`, mirrored for negative x.
#[inline]
pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

/// A string attribute of `n`, if set.
pub fn text(n: &NodeProto, name: &str) -> Option<String> {
    n.attr(name).map(|a| String::from_utf8_lossy(&a.s).to_string())
}

/// ONNX-ML's `post_transform` of the linear and tree-ensemble ops (PROBIT not run natively).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

impl PostTransform {
    /// `n`'s `post_transform` (default NONE), or the unsupported name.
    pub fn of(n: &NodeProto) -> Result<PostTransform, String> {
        match text(n, "post_transform").as_deref().unwrap_or("NONE") {
            "NONE" => Ok(PostTransform::None),
            "LOGISTIC" => Ok(PostTransform::Logistic),
            "SOFTMAX" => Ok(PostTransform::Softmax),
            "SOFTMAX_ZERO" => Ok(PostTransform::SoftmaxZero),
            other => Err(format!("{} post_transform {other}", n.op_type)),
        }
    }

    /// Applied to one row of scores, in place, with ONNX Runtime's own formulas
    /// (`ml_common.h`: `ComputeLogistic`, `ComputeSoftmax`, `ComputeSoftmaxZero`), the same
    /// operations in the same order, so a tree ensemble's scores come out bit for bit.
    #[inline]
    pub fn apply(self, out: &mut [f32]) {
        match self {
            PostTransform::None => {}
            PostTransform::Logistic => out.iter_mut().for_each(|o| *o = logistic(*o)),
            PostTransform::Softmax => {
                let max = out.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
                let mut sum = 0f32;
                for v in out.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                out.iter_mut().for_each(|v| *v /= sum);
            }
            PostTransform::SoftmaxZero => {
                // A score within ±1e-7 of zero is not exponentiated (scaled by exp(-max) instead),
                // and the division happens even when every score was zero (as ONNX Runtime does).
                let max = out.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
                let exp_neg_max = (-max).exp();
                let mut sum = 0f32;
                for v in out.iter_mut() {
                    if *v > 0.000_000_1 || *v < -0.000_000_1 {
                        *v = (*v - max).exp();
                        sum += *v;
                    } else {
                        *v *= exp_neg_max;
                    }
                }
                out.iter_mut().for_each(|v| *v /= sum);
            }
        }
    }

    /// " -> SOFTMAX" for `describe` ("" for NONE).
    pub fn suffix(self) -> &'static str {
        match self {
            PostTransform::None => "",
            PostTransform::Logistic => " -> LOGISTIC",
            PostTransform::Softmax => " -> SOFTMAX",
            PostTransform::SoftmaxZero => " -> SOFTMAX_ZERO",
        }
    }
}
