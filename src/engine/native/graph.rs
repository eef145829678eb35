//! Reading an ONNX graph for the native evaluators: who makes each value, the
//! initializers, and the pieces more than one evaluator reads the same way (a `Gemm`
//! or `MatMul` layer, a `Softmax`'s axis).

use std::collections::HashMap;

use super::kernels::{softmax_in_place, softmax_zero_in_place, Packed};
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

    /// Applied to one row of scores, in place.
    #[inline]
    pub fn apply(self, out: &mut [f32]) {
        match self {
            PostTransform::None => {}
            PostTransform::Logistic => out.iter_mut().for_each(|o| *o = 1.0 / (1.0 + (-*o).exp())),
            PostTransform::Softmax => softmax_in_place(out),
            PostTransform::SoftmaxZero => softmax_zero_in_place(out),
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
