//! Dense feed-forward models evaluated natively, generated at load from the ONNX graph:
//! one chain from the feature input to the manifest's output of `Gemm`, `MatMul` (by an
//! initializer), `Add` (of an initializer), `Relu`, `Sigmoid`, `Tanh`, `Softmax` (last
//! axis) and `Identity` — linear layers and MLPs as `torch.onnx` and hand-built graphs
//! write them. Matrix products use the blocked GEMV of [`super::kernels`].

use super::graph::{check_softmax, Graph};
use super::kernels::{input_bound, sigmoid_in_place, softmax_in_place, tanh_in_place, Packed};
use super::onnx_pb::{GraphProto, NodeProto};
use crate::manifest::Manifest;

#[derive(Clone, Debug)]
enum Op {
    /// `y = W·x` (+ bias): `Gemm`, or `MatMul` by an initializer.
    Linear {
        weights: Packed,
        bias: Vec<f32>,
    },
    /// `y = x + b` (b broadcast over the row).
    Add(Vec<f32>),
    Relu,
    Sigmoid,
    Tanh,
    Softmax,
}

/// The chain, input first.
#[derive(Clone, Debug)]
pub struct Dense {
    ops: Vec<Op>,
    /// Two buffers of the widest layer: the current row and the next.
    a: Vec<f32>,
    b: Vec<f32>,
    summary: String,
    /// Largest |input| served natively (see [`Dense::accepts`]).
    bound: f32,
}

/// Longest chain followed (a bound on a hostile graph, not on real models).
const MAX_OPS: usize = 256;

impl Dense {
    /// Recognise the graph; `Err` says why it is not a chain this evaluator runs.
    pub fn from_graph(g: &GraphProto, manifest: &Manifest) -> Result<Dense, String> {
        let graph = Graph::new(g);
        // Walk back from the output to the input, then reverse.
        let mut chain: Vec<&NodeProto> = Vec::new();
        let mut at = manifest.output.name();
        while at != manifest.input_name {
            let n = graph
                .producer(at)
                .ok_or_else(|| format!("`{at}` is neither made by a node nor the input"))?;
            if chain.len() == MAX_OPS {
                return Err(format!("a chain of more than {MAX_OPS} nodes"));
            }
            if !n.domain.is_empty() && n.domain != "ai.onnx" {
                return Err(format!(
                    "the output is made by `{}` (domain {}), not a dense chain",
                    n.op_type, n.domain
                ));
            }
            // The data input: the one that is not an initializer.
            let data = graph.data_inputs(n);
            if data.len() != 1 {
                return Err(format!(
                    "`{}` node `{}` has {} data inputs; a dense chain has one",
                    n.op_type,
                    n.name,
                    data.len()
                ));
            }
            chain.push(n);
            at = data[0];
        }
        chain.reverse();
        let (mut ops, mut width, mut widest) = (Vec::new(), manifest.features.len(), manifest.features.len());
        let mut names = Vec::new();
        for n in chain {
            let op = match n.op_type.as_str() {
                "Identity" => continue,
                "Relu" => Op::Relu,
                "Sigmoid" => Op::Sigmoid,
                "Tanh" => Op::Tanh,
                "Softmax" => {
                    check_softmax(n)?;
                    Op::Softmax
                }
                "Add" => {
                    let b = n
                        .input
                        .iter()
                        .find_map(|i| graph.init(i, "Add's operand").ok())
                        .ok_or("Add of two data inputs")?;
                    let v = b.floats()?;
                    let v = match v.len() {
                        1 => vec![v[0]; width],
                        k if k == width => v,
                        k => return Err(format!("Add of {k} values to a row of {width}")),
                    };
                    Op::Add(v)
                }
                "MatMul" | "Gemm" => {
                    let (weights, bias) = graph.linear_layer(n, width)?;
                    width = weights.rows();
                    Op::Linear { weights, bias }
                }
                other => {
                    return Err(format!(
                    "`{other}` in the chain (dense chains: Gemm, MatMul, Add, Relu, Sigmoid, Tanh, Softmax)"
                ))
                }
            };
            names.push(match &op {
                Op::Linear { weights, .. } => format!("{}x{}", weights.cols(), weights.rows()),
                _ => n.op_type.clone(),
            });
            widest = widest.max(width);
            ops.push(op);
        }
        if !ops.iter().any(|o| matches!(o, Op::Linear { .. })) {
            return Err("no Gemm or MatMul in the chain".into());
        }
        if width != manifest.output.width() {
            return Err(format!(
                "the chain gives {width} values; the manifest reads {}",
                manifest.output.width()
            ));
        }
        let grow = |mut a: f32| {
            let mut top = a;
            for op in &ops {
                a = match op {
                    Op::Linear { weights, bias } => {
                        weights.row_abs_sum() * a + bias.iter().fold(0f32, |m, b| m.max(b.abs()))
                    }
                    Op::Add(b) => a + b.iter().fold(0f32, |m, b| m.max(b.abs())),
                    Op::Relu => a,
                    Op::Sigmoid | Op::Tanh | Op::Softmax => 1.0,
                };
                top = top.max(a);
            }
            top
        };
        let bound = input_bound(grow);
        Ok(Dense {
            bound,
            ops,
            a: vec![0.0; widest],
            b: vec![0.0; widest],
            summary: format!("dense {}", names.join(" -> ")),
        })
    }

    /// "dense 10x3 -> Softmax".
    pub fn describe(&self) -> String {
        self.summary.clone()
    }

    /// Whether row `x` is in the native range: every value finite and at most the bound
    /// that keeps every layer under [`INTERMEDIATE_LIMIT`](super::kernels::INTERMEDIATE_LIMIT); other rows run on ONNX Runtime.
    #[inline]
    pub fn accepts(&self, x: &[f32]) -> bool {
        x.iter().all(|v| v.abs() <= self.bound)
    }

    /// One row. No allocation.
    #[inline]
    pub fn run(&mut self, x: &[f32], out: &mut [f32]) {
        let mut width = x.len();
        self.a[..width].copy_from_slice(x);
        for op in &self.ops {
            match op {
                Op::Linear { weights, bias } => {
                    let y = &mut self.b[..weights.rows()];
                    y.copy_from_slice(bias);
                    weights.gemv_add(&self.a[..width], y);
                    width = weights.rows();
                    std::mem::swap(&mut self.a, &mut self.b);
                }
                Op::Add(b) => self.a[..width].iter_mut().zip(b).for_each(|(x, b)| *x += b),
                Op::Relu => self.a[..width].iter_mut().for_each(|x| *x = x.max(0.0)),
                Op::Sigmoid => sigmoid_in_place(&mut self.a[..width]),
                Op::Tanh => tanh_in_place(&mut self.a[..width]),
                Op::Softmax => softmax_in_place(&mut self.a[..width]),
            }
        }
        out.copy_from_slice(&self.a[..width]);
    }
}
