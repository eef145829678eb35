//! Linear models evaluated natively, generated at load from the ONNX-ML graph:
//! `LinearClassifier` (multinomial: one score row per class; post-transform NONE,
//! SOFTMAX, SOFTMAX_ZERO or LOGISTIC), optionally followed by `Normalizer`
//! (L1, L2, MAX), and `LinearRegressor` (post-transform NONE) — what skl2onnx writes
//! for scikit-learn's logistic and linear regressions, the bundled default included.
//! A few dozen multiply-adds: ONNX Runtime's per-call cost is ≈ 100× the arithmetic.

use super::graph::{text, Graph, PostTransform};
use super::kernels::input_bound;
use super::onnx_pb::GraphProto;
use crate::manifest::Manifest;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Norm {
    L1,
    L2,
    Max,
}

/// `out = normalise(post(W·x + b))`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[outputs, features]`, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    features: usize,
    post: PostTransform,
    norm: Option<Norm>,
    what: &'static str,
    /// Largest |input| served natively (see [`Linear::accepts`]).
    bound: f32,
}

const ML: &str = "ai.onnx.ml";

impl Linear {
    /// Recognise the graph; `Err` says why it is not a linear model this evaluator runs.
    pub fn from_graph(g: &GraphProto, manifest: &Manifest) -> Result<Linear, String> {
        let graph = Graph::new(g);
        let producer = |name: &str| graph.producer(name);
        let out = manifest.output.name();
        let mut top = producer(out).ok_or_else(|| format!("no node makes `{out}`"))?;
        let mut norm = None;
        if top.op_type == "Normalizer" && top.domain == ML {
            norm = Some(match text(top, "norm").as_deref() {
                Some("L1") => Norm::L1,
                Some("L2") => Norm::L2,
                Some("MAX") => Norm::Max,
                other => return Err(format!("Normalizer norm {other:?}")),
            });
            top = top.input.first().and_then(|i| producer(i)).ok_or("Normalizer of a graph input")?;
        }
        if top.domain != ML || !(top.op_type == "LinearClassifier" || top.op_type == "LinearRegressor") {
            return Err(format!("the output is made by `{}`, not a linear model", top.op_type));
        }
        if top.input.first().map(String::as_str) != Some(manifest.input_name.as_str()) {
            return Err(format!(
                "the {} does not read the input `{}` directly",
                top.op_type, manifest.input_name
            ));
        }
        let classifier = top.op_type == "LinearClassifier";
        // The classifier's scores are its second output; the regressor's, its only one.
        let made = match norm {
            Some(_) => producer(out).and_then(|n| n.input.first()).map_or("", String::as_str),
            None => out,
        };
        if top.output.get(usize::from(classifier)).map(String::as_str) != Some(made) {
            return Err("the manifest's output is not the linear model's scores".into());
        }
        let features = manifest.features.len();
        let outputs = manifest.output.width();
        let weights = top.attr("coefficients").map(|a| a.floats.clone()).unwrap_or_default();
        if weights.len() != outputs * features {
            return Err(format!(
                "{} coefficients for {outputs} outputs x {features} features (a binary classifier's single score row is not run natively)",
                weights.len()
            ));
        }
        let mut bias = top.attr("intercepts").map(|a| a.floats.clone()).unwrap_or_default();
        if bias.is_empty() {
            bias = vec![0.0; outputs];
        }
        if bias.len() != outputs {
            return Err(format!("{} intercepts for {outputs} outputs", bias.len()));
        }
        let post = PostTransform::of(top)?;
        if !classifier && post != PostTransform::None {
            return Err(format!(
                "{} post_transform {}",
                top.op_type,
                post.suffix().trim_start_matches(" -> ")
            ));
        }
        let what = if classifier { "LinearClassifier" } else { "LinearRegressor" };
        let row_sum = weights
            .chunks_exact(features.max(1))
            .map(|r| r.iter().map(|w| w.abs()).sum::<f32>())
            .fold(0.0, f32::max);
        let bias_max = bias.iter().fold(0f32, |m, b| m.max(b.abs()));
        let bound = input_bound(|x| row_sum * x + bias_max);
        Ok(Linear { weights, bias, features, post, norm, what, bound })
    }

    /// "LinearClassifier 18x3 -> SOFTMAX -> L1".
    pub fn describe(&self) -> String {
        format!(
            "{} {}x{}{}{}",
            self.what,
            self.features,
            self.bias.len(),
            self.post.suffix(),
            match self.norm {
                None => "",
                Some(Norm::L1) => " -> L1",
                Some(Norm::L2) => " -> L2",
                Some(Norm::Max) => " -> MAX",
            }
        )
    }

    /// Whether row `x` is in the native range: every value finite and at most the bound
    /// that keeps the scores under [`INTERMEDIATE_LIMIT`](super::kernels::INTERMEDIATE_LIMIT); other rows run on ONNX Runtime.
    #[inline]
    pub fn accepts(&self, x: &[f32]) -> bool {
        x.iter().all(|v| v.abs() <= self.bound)
    }

    /// One row. No allocation.
    #[inline]
    pub fn run(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(x.len(), self.features);
        for ((o, w), b) in out.iter_mut().zip(self.weights.chunks_exact(self.features)).zip(&self.bias) {
            *o = w.iter().zip(x).fold(*b, |acc, (w, x)| acc + w * x);
        }
        self.post.apply(out);
        let scale = match self.norm {
            None => return,
            Some(Norm::L1) => out.iter().map(|o| o.abs()).sum::<f32>(),
            Some(Norm::L2) => out.iter().map(|o| o * o).sum::<f32>().sqrt(),
            Some(Norm::Max) => out.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        };
        if scale != 0.0 {
            out.iter_mut().for_each(|o| *o /= scale);
        }
    }
}
