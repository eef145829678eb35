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

/// A generated evaluator (one per engine: the variants' sizes do not matter).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum NativeModel {
    Lstm(lstm::LstmStep),
    Linear(linear::Linear),
    Dense(dense::Dense),
    Trees(trees::Trees),
    /// Tests only (`TICKINFER_TEST_NATIVE_FAULT`, `engine::backend`): the evaluator's
    /// output row reversed (a classifier's sell and buy swapped, a regression negated) —
    /// a wrong evaluator the gate and the live verifier must catch.
    Faulty(Box<NativeModel>),
}

impl NativeModel {
    /// Build the evaluator for `manifest`'s model, or say why there is none.
    pub fn from_manifest(manifest: &Manifest, state_widths: &[usize]) -> Result<NativeModel, String> {
        // Tests only: the loader panics for this model name, so that a test can show a reload
        // surviving a loader bug (`tests/ops_reload.rs`).
        if std::env::var("TICKINFER_TEST_LOADER_PANIC").is_ok_and(|n| n == manifest.name) {
            panic!("TICKINFER_TEST_LOADER_PANIC: the native loader panics for {} on purpose", manifest.name);
        }
        let bytes = std::fs::read(&manifest.onnx)
            .map_err(|e| format!("cannot read {}: {e}", manifest.onnx.display()))?;
        NativeModel::from_bytes(&bytes, manifest, state_widths)
    }

    /// [`from_manifest`](Self::from_manifest) on the model's bytes: any bytes give an
    /// evaluator or the reason there is none, never a panic or an endless walk (fuzzed:
    /// `fuzz/fuzz_targets/model_loader.rs`).
    pub fn from_bytes(
        bytes: &[u8],
        manifest: &Manifest,
        state_widths: &[usize],
    ) -> Result<NativeModel, String> {
        let model = onnx_pb::ModelProto::parse(bytes)?;
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
            NativeModel::Faulty(m) => format!("{} (made wrong on purpose)", m.describe()),
        }
    }

    /// Whether the evaluator repeats ONNX Runtime's operations in its order, so that its
    /// outputs must be bit-identical (tree ensembles); the others approximate (GEMV order,
    /// MLAS's activation approximations) and are held to a tolerance (`engine::gate`).
    pub fn exact(&self) -> bool {
        match self {
            NativeModel::Faulty(m) => m.exact(),
            m => matches!(m, NativeModel::Trees(_)),
        }
    }

    /// Whether the evaluator serves row `x` (with the symbol's sequence `memory`): a tree
    /// ensemble every row (comparisons are exact for any value); the others rows whose
    /// values are finite and small enough that no intermediate can overflow — beyond that
    /// the order of additions decides between ∞, NaN and a number, so those rows run on
    /// ONNX Runtime (`engine::run_slot`), and the gate compares only what native serves.
    #[inline]
    pub fn accepts(&self, x: &[f32], memory: &[f32]) -> bool {
        match self {
            NativeModel::Lstm(m) => m.accepts(x, memory),
            NativeModel::Linear(m) => m.accepts(x),
            NativeModel::Dense(m) => m.accepts(x),
            NativeModel::Trees(_) => true,
            NativeModel::Faulty(m) => m.accepts(x, memory),
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
            NativeModel::Faulty(m) => {
                let ok = m.run(x, memory, out);
                if out.len() > 1 {
                    out.reverse();
                } else {
                    out.iter_mut().for_each(|o| *o = -*o - 1.0);
                }
                ok
            }
        }
    }
}
