//! The native backend: evaluators generated at load from the ONNX graph for model
//! families whose per-call cost in ONNX Runtime is far above their arithmetic. Today
//! one family: a recurrent LSTM step ([`lstm::LstmStep`]). The weights are read from
//! the `.onnx` itself, and an evaluator serves only after it agreed with ONNX Runtime
//! on random inputs at load (`engine::backend`): ONNX stays the one model format.

pub mod kernels;
pub mod lstm;
pub mod onnx_pb;

use crate::manifest::Manifest;

/// A generated evaluator.
#[derive(Clone, Debug)]
pub enum NativeModel {
    Lstm(lstm::LstmStep),
}

impl NativeModel {
    /// Build the evaluator for `manifest`'s model, or say why there is none.
    pub fn from_manifest(manifest: &Manifest, state_widths: &[usize]) -> Result<NativeModel, String> {
        let bytes = std::fs::read(&manifest.onnx)
            .map_err(|e| format!("cannot read {}: {e}", manifest.onnx.display()))?;
        let model = onnx_pb::ModelProto::parse(&bytes)?;
        let graph = model.graph.ok_or("the model has no graph")?;
        lstm::LstmStep::from_graph(&graph, manifest, state_widths).map(NativeModel::Lstm)
    }

    /// What the evaluator computes, for logs and stats.
    pub fn describe(&self) -> String {
        match self {
            NativeModel::Lstm(m) => m.describe(),
        }
    }

    /// One recurrent step for one row (see [`lstm::LstmStep::step`]).
    #[inline]
    pub fn step(&mut self, x: &[f32], memory: &mut [f32], out: &mut [f32]) -> bool {
        match self {
            NativeModel::Lstm(m) => m.step(x, memory, out),
        }
    }
}
