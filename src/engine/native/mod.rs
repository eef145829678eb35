//! The native backend: evaluators generated at load from the ONNX graph for model
//! families whose per-call cost in ONNX Runtime is far above their arithmetic: the
//! recurrent LSTM step ([`lstm::LstmStep`]), linear models ([`linear::Linear`]),
//! dense chains — linear layers, MLPs ([`dense::Dense`]) — and tree ensembles
//! ([`trees::Trees`]: LightGBM, XGBoost, scikit-learn forests). The weights are read from
//! the `.onnx` itself, and an evaluator serves only after it agreed with ONNX Runtime
//! on random inputs at load (`engine::backend`): ONNX stays the one model format.

pub mod dense;
pub mod graph;
pub mod kernels;
pub mod linear;
pub mod lstm;
pub mod onnx_pb;
pub mod trees;

use crate::manifest::{Manifest, Sequence};

/// A generated evaluator.
#[derive(Clone, Debug)]
pub enum NativeModel {
    Lstm(lstm::LstmStep),
    Linear(linear::Linear),
    Dense(dense::Dense),
    Trees(trees::Trees),
}

impl NativeModel {
    /// Build the evaluator for `manifest`'s model, or say why there is none.
    pub fn from_manifest(manifest: &Manifest, state_widths: &[usize]) -> Result<NativeModel, String> {
        let bytes = std::fs::read(&manifest.onnx)
            .map_err(|e| format!("cannot read {}: {e}", manifest.onnx.display()))?;
        let model = onnx_pb::ModelProto::parse(&bytes)?;
        let graph = model.graph.ok_or("the model has no graph")?;
        match manifest.sequence {
            Sequence::Recurrent { .. } => {
                lstm::LstmStep::from_graph(&graph, manifest, state_widths).map(NativeModel::Lstm)
            }
            Sequence::None => {
                let linear = match linear::Linear::from_graph(&graph, manifest) {
                    Ok(m) => return Ok(NativeModel::Linear(m)),
                    Err(e) => e,
                };
                let dense = match dense::Dense::from_graph(&graph, manifest) {
                    Ok(m) => return Ok(NativeModel::Dense(m)),
                    Err(e) => e,
                };
                trees::Trees::from_graph(&graph, manifest).map(NativeModel::Trees).map_err(|trees| {
                    format!("not a linear model ({linear}); not a dense chain ({dense}); not a tree ensemble ({trees})")
                })
            }
            Sequence::Window { .. } => Err("a window model (no native evaluator for windows)".into()),
        }
    }

    /// What the evaluator computes, for logs and stats.
    pub fn describe(&self) -> String {
        match self {
            NativeModel::Lstm(m) => m.describe(),
            NativeModel::Linear(m) => m.describe(),
            NativeModel::Dense(m) => m.describe(),
            NativeModel::Trees(m) => m.describe(),
        }
    }

    /// One row: `x` its features, `memory` its symbol's sequence memory (a recurrent
    /// model's state, updated in place; empty otherwise), `out` the model output.
    /// False when a recurrent state came back non-finite (see [`lstm::LstmStep::step`]).
    #[inline]
    pub fn run(&mut self, x: &[f32], memory: &mut [f32], out: &mut [f32]) -> bool {
        match self {
            NativeModel::Lstm(m) => m.step(x, memory, out),
            NativeModel::Linear(m) => {
                m.run(x, out);
                true
            }
            NativeModel::Dense(m) => {
                m.run(x, out);
                true
            }
            NativeModel::Trees(m) => {
                m.run(x, out);
                true
            }
        }
    }
}
