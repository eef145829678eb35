//! Inference engine: one ONNX Runtime session, built once, run on pre-allocated
//! buffers.
//!
//! At load: the runtime library is located or provisioned ([`runtime`]), the
//! session is built (graph optimisation on, `intra_threads` threads — 1 by
//! default, denormals flushed to zero), the manifest is checked against the
//! model's real inputs and outputs, and one *slot* per batch size `b` in
//! `1..=max_batch` is made: an ORT-owned input tensor `[b, features]`, an output
//! tensor `[b, width]` and an `IoBinding` joining them to the session. Each slot
//! is then run `warmup_runs` times before the engine reports ready.
//!
//! Per request, nothing is allocated: features are written into the slot's input
//! tensor in place, the slot's binding is run with `RunWithBinding` called
//! straight through `ort::api()` (ort's `run_binding` would collect the outputs
//! into a fresh `SessionOutputs` — a `Vec` and an `Arc` per output, heap
//! allocations on every run — hence the raw call; `tests/engine_alloc.rs` proves
//! the path allocation-free), and the output rows are read in
//! place and decoded by the manifest.

mod backend;
pub mod fpenv;
pub mod gate;
pub mod native;
pub mod runtime;

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, Session};
use ort::value::{Tensor, ValueType};
use ort::AsPointer;

pub use crate::manifest::Backend;
use crate::manifest::{BatchDim, IoDesc, Manifest, ManifestError, Prediction, Sequence};
use crate::state::{State, StateSpec};
use crate::wire::MlRequest;
use native::NativeModel;

/// Where the model runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// CUDA (cargo feature `cuda`, runtime from `onnxruntime-gpu`).
    Cuda { device_id: i32 },
    /// TensorRT (cargo feature `tensorrt`), with an engine cache directory and optional fp16.
    TensorRt { device_id: i32, engine_cache: Option<PathBuf>, fp16: bool },
}

impl ExecutionProvider {
    /// Short name for logs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda { .. } => "cuda",
            ExecutionProvider::TensorRt { .. } => "tensorrt",
        }
    }
}

/// How to build an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Explicit `libonnxruntime.so.1.31.1`; otherwise see [`runtime::locate`].
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (1: the run stays on the calling, pinned thread).
    pub intra_threads: usize,
    /// Largest batch run in one call when the model's batch dimension is dynamic.
    pub max_batch: usize,
    /// Warm-up runs per batch size before the engine is ready.
    pub warmup_runs: usize,
    /// Execution provider to try; falls back to CPU with a loud log line.
    pub provider: ExecutionProvider,
    /// Overrides the manifest's `[model] backend` when set.
    pub backend: Option<Backend>,
    /// Largest run (rows) the native evaluator serves; larger runs go to ONNX Runtime.
    /// `None`: measured at load (`auto`), every run size (`native`).
    pub native_max_run: Option<usize>,
    /// Live verification of a native evaluator (`crate::verify`).
    pub verify: crate::verify::VerifyOptions,
    /// Log the load at debug level (the live verifier's reference engine: the serving
    /// engine already logged the same model).
    pub quiet: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            ort_lib: None,
            intra_threads: 1,
            max_batch: 32,
            warmup_runs: 20,
            provider: ExecutionProvider::Cpu,
            backend: None,
            native_max_run: None,
            verify: crate::verify::VerifyOptions::default(),
            quiet: false,
        }
    }
}

/// Why an engine could not be built or a run failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Runtime(#[from] runtime::ProvisionError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("model run failed: {0}")]
    Run(String),
    #[error("{0}")]
    Config(String),
}

impl<R> From<ort::Error<R>> for EngineError {
    fn from(e: ort::Error<R>) -> Self {
        EngineError::Ort(e.to_string())
    }
}

/// What a loaded engine serves, for logs, the hello ack and reports.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub price_scale: i64,
    /// Sizes are fixed point at this scale (a power of ten).
    pub size_scale: i64,
    /// Extra features each request must carry.
    pub extra_features: u16,
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
    pub batch: BatchDim,
    /// Largest batch one run takes (1 for a fixed-batch model).
    pub max_batch: usize,
    /// The provider actually in use (after any fallback).
    pub provider: &'static str,
    /// The backend serving: `ort`, or `native` (with what it evaluates).
    pub backend: String,
    /// Why: the native evaluator's parity with ONNX Runtime and both timings at load,
    /// or why there is none.
    pub backend_report: String,
    pub runtime_library: PathBuf,
    /// The live verifier of a native evaluator (`None` on ONNX Runtime or with it off).
    pub verification: Option<crate::verify::Verification>,
}

impl ModelInfo {
    /// The backend serving now: `backend`, or ONNX Runtime once the live verifier made
    /// the engine fall back.
    pub fn backend_now(&self) -> String {
        match self.verification.as_ref().and_then(|v| v.fell_back.get()) {
            Some(why) => format!("ort (fell back from {} after a disagreement: {why})", self.backend),
            None => self.backend.clone(),
        }
    }
}

/// One batch size's pre-bound buffers.
struct Slot {
    /// Rows this slot runs.
    rows: usize,
    /// `[rows, features]` (a window model: `[rows, window, features]`), written in place per run.
    input: Tensor<f32>,
    /// `[rows, width]`, written by ONNX Runtime per run.
    output: Tensor<f32>,
    /// A recurrent model's state inputs, `[rows, width_k]` each, filled from the symbols' memory.
    states_in: Vec<Tensor<f32>>,
    /// Its state outputs, `[rows, width_k]` each, copied back to the symbols' memory after a run.
    states_out: Vec<Tensor<f32>>,
    binding: IoBinding,
}

/// Everything a run touches but the session and manifest: the pre-bound slots and their scratch.
struct Parts {
    /// `slots[b - 1]` runs batches of `b` rows.
    slots: Vec<Slot>,
    /// Input names for re-binding on device providers (which copy at bind time): features first,
    /// then the recurrent state inputs.
    input_names: Vec<CString>,
    rebind_input: bool,
    /// Width of each recurrent state tensor (empty for other models).
    state_widths: Vec<usize>,
    /// Per row of a recurrent run: the symbol's state slot (capacity `max_batch`).
    row_slots: Vec<usize>,
    /// Output rows of a recurrent batch that had to run in parts (a symbol twice in it).
    scratch: Vec<f32>,
    /// The native evaluator, when it serves instead of ONNX Runtime (`backend`).
    native: Option<NativeModel>,
    /// Largest run (rows) the native evaluator serves; larger ones run on ONNX Runtime,
    /// whose batched kernels win there (measured at load, `backend::choose`).
    native_up_to: usize,
    /// The live verifier's end on this thread, while the native evaluator serves.
    tap: Option<crate::verify::Tap>,
}

/// A loaded model, ready to score requests. Not `Sync`: one inference thread owns it.
pub struct Engine {
    manifest: Manifest,
    info: ModelInfo,
    /// What a symbol's state must hold for this model (features and sequence memory).
    spec: StateSpec,
    parts: Parts,
    /// Per row of the batch being filled: its symbol was warming (capacity `max_batch`).
    warming: Vec<bool>,
    /// Per row: the recurrent state the model returned was finite (always true otherwise).
    row_ok: Vec<bool>,
    // Declared last: dropped after the bindings and tensors that belong to it.
    session: Session,
}

// SAFETY: every field is owned by the engine alone: the ORT session (itself Send + Sync), ORT-owned
// tensors, and IoBindings — plain C++ objects with no thread affinity that only reference this engine's
// tensors. All use goes through `&mut self`, so moving the engine to another thread (a reload hands a
// freshly built engine to the scoring thread) never lets two threads touch a binding at once.
unsafe impl Send for Engine {}

static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();

/// The process's ONNX Runtime environment for `opts` (locating or provisioning
/// the library as [`Engine::load`] does). For tools that build their own
/// sessions beside an engine, e.g. the bare-ORT baseline in `benches/engine.rs`.
pub fn ort_environment(opts: &EngineOptions) -> Result<&'static Environment, EngineError> {
    // One runtime per process, loaded once: later engines (a reload, the live verifier's
    // reference) take it as it is, without locating and hashing the library again (the
    // loaded library is what runs, whatever the file on disk has become).
    if let Some((loaded, env)) = ENVIRONMENT.get() {
        if opts.ort_lib.as_deref().is_none_or(|p| p == loaded) {
            return Ok(env);
        }
    }
    let flavor = match opts.provider {
        ExecutionProvider::Cpu => runtime::Flavor::Cpu,
        _ => runtime::Flavor::Gpu,
    };
    let lib = runtime::locate(opts.ort_lib.as_deref(), flavor)?;
    Ok(&environment(&lib)?.1)
}

/// The process's ONNX Runtime environment, loading the library on first use.
fn environment(lib: &Path) -> Result<&'static (PathBuf, Environment), EngineError> {
    if let Some(env) = ENVIRONMENT.get() {
        if env.0 != lib {
            log::warn!(
                "ONNX Runtime already loaded from {}; ignoring {} (one runtime per process)",
                env.0.display(),
                lib.display()
            );
        }
        return Ok(env);
    }
    let builder = ort::init_from(lib).map_err(|e| {
        EngineError::Ort(format!(
            "cannot load {}: {e}. Fix: set TICKINFER_ORT_LIB to a libonnxruntime.so.{}",
            lib.display(),
            runtime::ORT_VERSION
        ))
    })?;
    let env = builder.with_name("tickinfer").build()?;
    let _ = ENVIRONMENT.set((lib.to_path_buf(), env));
    Ok(ENVIRONMENT.get().expect("just set"))
}

fn describe(name: &str, ty: &ValueType) -> IoDesc {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = match ty.to_string().as_str() {
                "f32" => "float32".to_string(),
                "f64" => "float64".to_string(),
                "f16" => "float16".to_string(),
                other => other.replace('i', "int").replace('u', "uint").to_lowercase(),
            };
            IoDesc { name: name.into(), dtype, shape: shape.to_vec() }
        }
        ValueType::Sequence(_) => IoDesc { name: name.into(), dtype: "sequence".into(), shape: vec![] },
        ValueType::Map { .. } => IoDesc { name: name.into(), dtype: "map".into(), shape: vec![] },
        _ => IoDesc { name: name.into(), dtype: "optional".into(), shape: vec![] },
    }
}

impl Engine {
    /// Load the manifest at `manifest_path` and its model; warm up; ready to run.
    pub fn load(manifest_path: &Path, opts: &EngineOptions) -> Result<Engine, EngineError> {
        let manifest = Manifest::load(manifest_path)?;
        Engine::from_manifest(manifest, opts)
    }

    /// Build an engine from a parsed manifest.
    pub fn from_manifest(manifest: Manifest, opts: &EngineOptions) -> Result<Engine, EngineError> {
        if opts.max_batch == 0 || opts.max_batch > 4096 {
            return Err(EngineError::Config(format!("max_batch {} must be in 1..=4096", opts.max_batch)));
        }
        if !manifest.onnx.is_file() {
            return Err(EngineError::Config(format!(
                "model file {} (named by {}) does not exist",
                manifest.onnx.display(),
                manifest.path.display()
            )));
        }
        let level = if opts.quiet { log::Level::Debug } else { log::Level::Info };
        let env = ort_environment(opts)?;
        let lib = ENVIRONMENT.get().expect("loaded by ort_environment").0.clone();

        let (session, provider) = build_session(env, &manifest.onnx, opts)?;
        let inputs: Vec<IoDesc> = session.inputs().iter().map(|o| describe(o.name(), o.dtype())).collect();
        let outputs: Vec<IoDesc> = session.outputs().iter().map(|o| describe(o.name(), o.dtype())).collect();
        let batch = manifest.check_model(&inputs, &outputs)?;
        let max_batch = match batch {
            BatchDim::Dynamic => opts.max_batch,
            BatchDim::One => 1,
        };

        let info = ModelInfo {
            name: manifest.name.clone(),
            version: manifest.version,
            description: manifest.description.clone(),
            price_scale: manifest.price_scale,
            size_scale: manifest.size_scale,
            extra_features: manifest.features.extras(),
            inputs,
            outputs,
            batch,
            max_batch,
            provider,
            backend: "ort".into(),
            backend_report: String::new(),
            runtime_library: lib.clone(),
            verification: None,
        };
        log::log!(
            level,
            "model {} v{} ({}) from {}: provider {}, batch {:?} up to {}",
            info.name,
            info.version,
            info.description,
            manifest.onnx.display(),
            info.provider,
            info.batch,
            info.max_batch
        );
        for i in &info.inputs {
            log::log!(level, "  input  {i}");
        }
        for o in &info.outputs {
            log::log!(level, "  output {o}");
        }
        log::log!(level, "  features [{}] -> {}", manifest.feature_names.join(", "), manifest.output.name());

        let state_widths = manifest.state_widths(&info.inputs);
        let spec = state_spec(&manifest, &state_widths)?;
        let allocator = Allocator::default();
        let width_in = manifest.features.len();
        let width_out = manifest.output.width();
        let states: Vec<_> = match &manifest.sequence {
            Sequence::Recurrent { state, .. } => state.iter().zip(&state_widths).collect(),
            _ => vec![],
        };
        let mut slots = Vec::with_capacity(max_batch);
        for rows in 1..=max_batch {
            let input = match manifest.sequence {
                Sequence::Window { window } => Tensor::<f32>::new(&allocator, [rows, window, width_in])?,
                _ => Tensor::<f32>::new(&allocator, [rows, width_in])?,
            };
            let mut output = Tensor::<f32>::new(&allocator, output_shape(&info.outputs, &manifest, rows))?;
            let mut binding = session.create_binding()?;
            binding.bind_input(manifest.input_name.as_str(), &input)?;
            binding.bind_output(manifest.output.name(), &mut output)?;
            let (mut states_in, mut states_out) = (Vec::new(), Vec::new());
            for (pair, &w) in &states {
                let mut fed = Tensor::<f32>::new(&allocator, [rows, w])?;
                fed.extract_tensor_mut().1.fill(0.0);
                let mut back = Tensor::<f32>::new(&allocator, [rows, w])?;
                binding.bind_input(pair.input.as_str(), &fed)?;
                binding.bind_output(pair.output.as_str(), &mut back)?;
                states_in.push(fed);
                states_out.push(back);
            }
            debug_assert_eq!(output.extract_tensor().1.len(), rows * width_out);
            slots.push(Slot { rows, input, output, states_in, states_out, binding });
        }
        let cname = |n: &str| {
            CString::new(n).map_err(|_| EngineError::Config(format!("name {n:?} contains a NUL byte")))
        };
        let mut input_names = vec![cname(&manifest.input_name)?];
        for (pair, _) in &states {
            input_names.push(cname(&pair.input)?);
        }
        if !spec.is_stateless() {
            log::log!(
                level,
                "  state per symbol: {} events kept, {} accumulators, {} sequence floats, {} B; warm after {} earlier events",
                spec.capacity,
                spec.ewma_alphas.len() + spec.rate_taus_s.len(),
                spec.sequence_floats,
                spec.bytes_per_symbol(),
                spec.history
            );
        }
        match &manifest.sequence {
            Sequence::None => {}
            Sequence::Window { window } => {
                log::log!(level, "  window model: the symbol's last {window} feature rows per request")
            }
            Sequence::Recurrent { state, warmup_events } => log::log!(
                level,
                "  recurrent step model: state {} carried per symbol, warm after {warmup_events} more events",
                state
                    .iter()
                    .zip(&state_widths)
                    .map(|(p, w)| format!("{}->{} [{w}]", p.input, p.output))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        let parts = Parts {
            slots,
            input_names,
            rebind_input: provider != "cpu",
            state_widths,
            row_slots: vec![0; max_batch],
            scratch: vec![0.0; max_batch * width_out],
            native: None,
            native_up_to: 0,
            tap: None,
        };
        let (warming, row_ok) = (vec![false; max_batch], vec![true; max_batch]);
        let mut engine = Engine { manifest, info, spec, parts, warming, row_ok, session };
        backend::choose(&mut engine, opts.backend, opts.native_max_run, level)?;
        engine.warm_up(opts.warmup_runs, level)?;
        if let Some(native) = &engine.parts.native {
            let memory = engine.parts.state_widths.iter().sum();
            if let Some((tap, verification)) =
                crate::verify::start(&engine.manifest, opts, memory, native.exact())?
            {
                engine.parts.tap = Some(tap);
                engine.info.verification = Some(verification);
            }
        }
        Ok(engine)
    }

    /// What this engine serves.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The manifest in use.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Largest number of requests one [`run_rows`](Self::run_rows) takes.
    pub fn max_batch(&self) -> usize {
        self.info.max_batch
    }

    /// A valid request for this model (a 100.00 / 100.01 quote, 100 × 120, its extra
    /// features zero) for `symbol_id`: what warm-up and keep-warm runs score.
    pub fn warm_request(&self, symbol_id: u16) -> MlRequest {
        let scale = self.info.price_scale;
        MlRequest {
            symbol_id,
            bid_price: 100 * scale,
            ask_price: 100 * scale + scale.max(100) / 100,
            bid_size: 100 * self.info.size_scale,
            ask_size: 120 * self.info.size_scale,
            book_imbalance: -90_909,
            n_features: self.info.extra_features,
            ..MlRequest::new()
        }
    }

    fn warm_up(&mut self, runs: usize, level: log::Level) -> Result<(), EngineError> {
        // One symbol per row, so that a recurrent model runs every slot whole.
        let reqs: Vec<MlRequest> = (0..self.max_batch()).map(|i| self.warm_request(i as u16)).collect();
        let mut state = self.new_state(self.max_batch()); // its own: the serving state never sees warm-up rows
        let t0 = std::time::Instant::now();
        for b in 1..=self.max_batch() {
            for _ in 0..runs {
                self.run_rows(&reqs[..b], &mut state)?;
            }
        }
        log::log!(level, "warm-up: {runs} runs x {} batch sizes in {:.1?}", self.max_batch(), t0.elapsed());
        Ok(())
    }

    /// A per-symbol state table for this model's stateful features, for `max_symbols`
    /// symbols (allocated now; empty for a stateless model).
    pub fn new_state(&self, max_symbols: usize) -> State {
        State::new(self.spec.clone(), max_symbols)
    }

    /// What a symbol's state must hold for this model: its stateful features and its
    /// sequence memory. A reload keeps the serving state only when this is equal.
    pub fn state_spec(&self) -> &StateSpec {
        &self.spec
    }

    /// Run the model on `reqs` (1..=max_batch of them, in order: each updates its
    /// symbol's `state` before its row is filled) and return the raw output rows,
    /// `reqs.len() × width` values, row-major. No allocation.
    pub fn run_rows(&mut self, reqs: &[MlRequest], state: &mut State) -> Result<&[f32], EngineError> {
        let Engine { manifest, parts, session, warming, row_ok, .. } = self;
        run_batch(parts, session, manifest, reqs, state, warming, row_ok)
    }

    /// Score `reqs` (any number; run in chunks of `max_batch`) into `out`
    /// (same length); `None` where the model's output for that request was not
    /// finite (see [`Manifest::decode`]) or, for a recurrent model, where the state
    /// it returned was not (that symbol's state then starts again from zero). Each
    /// request updates its symbol's `state` first, in order. No allocation.
    pub fn predict(
        &mut self,
        reqs: &[MlRequest],
        state: &mut State,
        out: &mut [Option<Prediction>],
    ) -> Result<(), EngineError> {
        assert_eq!(reqs.len(), out.len(), "one prediction slot per request");
        let Engine { manifest, parts, session, info, warming, row_ok, .. } = self;
        let width = manifest.output.width();
        for (reqs, out) in reqs.chunks(info.max_batch).zip(out.chunks_mut(info.max_batch)) {
            let rows = run_batch(parts, session, manifest, reqs, state, warming, row_ok)?;
            for ((((req, row), p), &warm), &ok) in
                reqs.iter().zip(rows.chunks_exact(width)).zip(out.iter_mut()).zip(&*warming).zip(&*row_ok)
            {
                *p = manifest.decode(row, req).filter(|_| ok).map(|p| Prediction { warming: warm, ..p });
            }
        }
        Ok(())
    }
}

impl Engine {
    /// ONNX Runtime on raw model rows — features already computed, `x` row-major — and, for
    /// a recurrent model, each row's input state (`state_in`, the symbol's sequence memory
    /// layout): outputs into `out`, returned states into `state_out`. In batches of up to
    /// `max_batch` on the engine's own slots; off the hot path (the load-time gate, the
    /// live verifier's reference engine). Not for window models (their rows are windows).
    pub fn reference_rows(
        &mut self,
        x: &[f32],
        state_in: &[f32],
        out: &mut [f32],
        state_out: &mut [f32],
    ) -> Result<(), EngineError> {
        let Engine { manifest, parts, session, .. } = self;
        if matches!(manifest.sequence, Sequence::Window { .. }) {
            return Err(EngineError::Config("raw rows are not a window model's input".into()));
        }
        let (width, out_width) = (manifest.features.len(), manifest.output.width());
        let memory: usize = parts.state_widths.iter().sum();
        let n = x.len() / width;
        if x.len() != n * width
            || out.len() != n * out_width
            || state_in.len() != n * memory
            || state_out.len() != n * memory
        {
            return Err(EngineError::Run(format!(
                "reference rows: {} features, {} outputs, {} / {} state values for {n} rows",
                x.len(),
                out.len(),
                state_in.len(),
                state_out.len()
            )));
        }
        let mut start = 0;
        while start < n {
            let b = (n - start).min(parts.slots.len());
            let slot = &mut parts.slots[b - 1];
            slot.input.extract_tensor_mut().1.copy_from_slice(&x[start * width..(start + b) * width]);
            let mut at = 0;
            for (fed, &w) in slot.states_in.iter_mut().zip(&parts.state_widths) {
                let fed = fed.extract_tensor_mut().1;
                for r in 0..b {
                    let src = &state_in[(start + r) * memory + at..(start + r) * memory + at + w];
                    fed[r * w..(r + 1) * w].copy_from_slice(src);
                }
                at += w;
            }
            run_bound(slot, session, &parts.input_names, parts.rebind_input)?;
            out[start * out_width..(start + b) * out_width].copy_from_slice(slot.output.extract_tensor().1);
            let mut at = 0;
            for (back, &w) in slot.states_out.iter().zip(&parts.state_widths) {
                let back = back.extract_tensor().1;
                for r in 0..b {
                    state_out[(start + r) * memory + at..(start + r) * memory + at + w]
                        .copy_from_slice(&back[r * w..(r + 1) * w]);
                }
                at += w;
            }
            start += b;
        }
        Ok(())
    }
}

/// The state a model needs per symbol: its features' state, plus a window model's last
/// `window` rows or a recurrent model's state tensors.
fn state_spec(manifest: &Manifest, state_widths: &[usize]) -> Result<StateSpec, EngineError> {
    use sha2::{Digest, Sha256};
    let mut spec = manifest.features.state_spec().clone();
    let features = format!("{:?}", manifest.features);
    spec.history += sequence_history(&manifest.sequence);
    match &manifest.sequence {
        Sequence::None => {}
        Sequence::Window { window } => {
            spec.sequence_floats = window * manifest.features.len();
            spec.sequence_id = format!("window {window} of {features}");
        }
        Sequence::Recurrent { .. } => {
            // The carried state means something only to the weights that made it.
            let bytes = std::fs::read(&manifest.onnx)
                .map_err(|e| EngineError::Config(format!("cannot read {}: {e}", manifest.onnx.display())))?;
            spec.sequence_floats = state_widths.iter().sum();
            spec.sequence_id = format!("recurrent {:x} of {features}", Sha256::digest(&bytes));
        }
    }
    Ok(spec)
}

/// Earlier events of its symbol a sequence model needs beyond its features' for a request to
/// be warm: a window's other rows, or a recurrent model's warm-up.
pub fn sequence_history(sequence: &Sequence) -> usize {
    match sequence {
        Sequence::None => 0,
        Sequence::Window { window } => window - 1,
        Sequence::Recurrent { warmup_events, .. } => *warmup_events,
    }
}

/// Run `reqs` (1..=max_batch, in order) and return their output rows. A recurrent
/// model runs a batch that holds a symbol twice in parts, each part with every symbol
/// at most once, so that the second step sees the state the first one left.
fn run_batch<'p>(
    parts: &'p mut Parts,
    session: &Session,
    manifest: &Manifest,
    reqs: &[MlRequest],
    state: &mut State,
    warming: &mut [bool],
    row_ok: &mut [bool],
) -> Result<&'p [f32], EngineError> {
    let b = reqs.len();
    if b == 0 || b > parts.slots.len() {
        return Err(EngineError::Run(format!("batch of {b} outside 1..={}", parts.slots.len())));
    }
    let first = match manifest.sequence {
        Sequence::Recurrent { .. } => distinct_prefix(reqs, state)?,
        _ => b,
    };
    if first == b {
        run_slot(parts, session, manifest, reqs, state, warming, row_ok)?;
        return Ok(parts.slots[b - 1].output.extract_tensor().1);
    }
    let width = manifest.output.width();
    let (mut start, mut end) = (0, first);
    loop {
        run_slot(
            parts,
            session,
            manifest,
            &reqs[start..end],
            state,
            &mut warming[start..end],
            &mut row_ok[start..end],
        )?;
        let rows = parts.slots[end - start - 1].output.extract_tensor().1;
        parts.scratch[start * width..end * width].copy_from_slice(rows);
        start = end;
        if start == b {
            break;
        }
        end = start + distinct_prefix(&reqs[start..], state)?;
    }
    Ok(&parts.scratch[..b * width])
}

/// How many leading `reqs` have distinct symbols (admitting each).
fn distinct_prefix(reqs: &[MlRequest], state: &mut State) -> Result<usize, EngineError> {
    state.begin_batch();
    for (i, req) in reqs.iter().enumerate() {
        let slot = admitted(state, req)?;
        if !state.mark(slot) {
            return Ok(i);
        }
    }
    Ok(reqs.len())
}

/// The state slot of `req`'s symbol, admitting it; an error when every slot is taken.
#[inline]
fn admitted(state: &mut State, req: &MlRequest) -> Result<usize, EngineError> {
    if state.admit(req.symbol_id) {
        if let Some(slot) = state.slot_of(req.symbol_id) {
            return Ok(slot);
        }
    }
    Err(EngineError::Run(format!(
        "symbol {} has no state slot: all {} are taken (--max-symbols)",
        { req.symbol_id },
        state.max_symbols()
    )))
}

/// The hot path of one model run: fill the slot's input (each request updating its
/// symbol's state first), then run it natively — when the native evaluator serves this run
/// size and every row is in its range, sampling rows for the live verifier — or on
/// ONNX Runtime (a recurrent model's state fed from and carried back to the symbols).
#[inline]
fn run_slot(
    parts: &mut Parts,
    session: &Session,
    manifest: &Manifest,
    reqs: &[MlRequest],
    state: &mut State,
    warming: &mut [bool],
    row_ok: &mut [bool],
) -> Result<(), EngineError> {
    if parts.tap.as_ref().is_some_and(|t| t.fallback_requested()) {
        fall_back(parts, &manifest.name);
    }
    let b = reqs.len();
    let Parts {
        slots, input_names, rebind_input, state_widths, row_slots, native, native_up_to, tap, ..
    } = parts;
    let slot = &mut slots[b - 1];
    debug_assert_eq!(slot.rows, b);
    let features = &manifest.features;
    let width = features.len();
    let inv = features.scales();
    let recurrent = matches!(manifest.sequence, Sequence::Recurrent { .. });
    {
        let (_, data) = slot.input.extract_tensor_mut();
        match manifest.sequence {
            _ if state.is_stateless() => {
                for ((req, row), warm) in
                    reqs.iter().zip(data.chunks_exact_mut(width)).zip(warming.iter_mut())
                {
                    *warm = features.fill_next(state, req, row);
                }
            }
            Sequence::None => {
                // In request order: this row sees every earlier request of its symbol, this batch's too.
                for ((req, row), warm) in
                    reqs.iter().zip(data.chunks_exact_mut(width)).zip(warming.iter_mut())
                {
                    admitted(state, req)?;
                    *warm = features.fill_next(state, req, row);
                }
            }
            Sequence::Window { window } => {
                let span = window * width;
                for ((req, dst), warm) in reqs.iter().zip(data.chunks_exact_mut(span)).zip(warming.iter_mut())
                {
                    admitted(state, req)?;
                    let (view, ring) = state.update_with_sequence(req, inv);
                    *warm = view.warming;
                    // The symbol's ring of rows: the newest goes where the oldest was.
                    let count = view.count as usize;
                    let pos = (count - 1) % window;
                    features.fill_with(req, Some(&view), &mut ring[pos * width..(pos + 1) * width]);
                    // Oldest first; zeros before a new symbol's first row.
                    let have = count.min(window);
                    dst[..(window - have) * width].fill(0.0);
                    for j in 0..have {
                        let src = (count - have + j) % window;
                        let at = window - have + j;
                        dst[at * width..(at + 1) * width]
                            .copy_from_slice(&ring[src * width..(src + 1) * width]);
                    }
                }
            }
            Sequence::Recurrent { .. } => {
                // Every symbol at most once per run (`run_batch`): the steps below may run in any order.
                for (i, (req, row)) in reqs.iter().zip(data.chunks_exact_mut(width)).enumerate() {
                    admitted(state, req)?;
                    let (view, _) = state.update_with_sequence(req, inv);
                    warming[i] = view.warming;
                    row_slots[i] = view.slot;
                    features.fill_with(req, Some(&view), row);
                }
            }
        }
    }
    if let Some(native) = native.as_mut().filter(|_| b <= *native_up_to) {
        let (_, x) = slot.input.extract_tensor();
        let in_range = x.chunks_exact(width).enumerate().all(|(i, row)| {
            native.accepts(row, if recurrent { state.sequence_mut(row_slots[i]) } else { &[] })
        });
        if in_range {
            let out_width = manifest.output.width();
            let (_, out) = slot.output.extract_tensor_mut();
            for (i, (row, out)) in x.chunks_exact(width).zip(out.chunks_exact_mut(out_width)).enumerate() {
                let memory: &mut [f32] = if recurrent { state.sequence_mut(row_slots[i]) } else { &mut [] };
                let sampled = tap.as_mut().is_some_and(|t| t.due());
                if sampled {
                    tap.as_mut().expect("sampled").before(row, memory);
                }
                row_ok[i] = native.run(row, memory, out);
                if sampled {
                    tap.as_mut().expect("sampled").after(&reqs[i], out, memory, row_ok[i]);
                }
            }
            return Ok(());
        }
    }
    if recurrent {
        for (i, &at_slot) in row_slots[..b].iter().enumerate() {
            let memory = state.sequence_mut(at_slot);
            let mut at = 0;
            for (fed, &w) in slot.states_in.iter_mut().zip(&*state_widths) {
                fed.extract_tensor_mut().1[i * w..(i + 1) * w].copy_from_slice(&memory[at..at + w]);
                at += w;
            }
        }
    }
    run_bound(slot, session, input_names, *rebind_input)?;
    if slot.states_out.is_empty() {
        row_ok[..b].fill(true);
        return Ok(());
    }
    // Carry each symbol's new state back; a non-finite one is not kept (the symbol starts again).
    for (i, ok) in row_ok[..b].iter_mut().enumerate() {
        let memory = state.sequence_mut(row_slots[i]);
        *ok = slot
            .states_out
            .iter()
            .zip(&*state_widths)
            .all(|(back, &w)| back.extract_tensor().1[i * w..(i + 1) * w].iter().all(|v| v.is_finite()));
        let mut at = 0;
        for (back, &w) in slot.states_out.iter().zip(&*state_widths) {
            let dst = &mut memory[at..at + w];
            if *ok {
                dst.copy_from_slice(&back.extract_tensor().1[i * w..(i + 1) * w]);
            } else {
                dst.fill(0.0);
            }
            at += w;
        }
    }
    Ok(())
}

/// The live verifier found the native evaluator answering differently from ONNX Runtime
/// (`on_disagreement = "fallback"`): from this run on, ONNX Runtime serves. Once per
/// engine; dropping the tap ends the verifier thread.
#[cold]
fn fall_back(parts: &mut Parts, model: &str) {
    parts.native = None;
    parts.tap = None;
    log::error!("{model}: the native evaluator no longer serves: ONNX Runtime answers from this request on");
}

/// Run a slot's binding on its (already written) inputs.
#[inline]
fn run_bound(
    slot: &mut Slot,
    session: &Session,
    input_names: &[CString],
    rebind_input: bool,
) -> Result<(), EngineError> {
    let api = ort::api();
    if rebind_input {
        let inputs = std::iter::once(&slot.input).chain(&slot.states_in);
        for (name, tensor) in input_names.iter().zip(inputs) {
            // SAFETY: binding, name and tensor are live and owned by the engine; device providers copy
            // the input at bind time, so it is re-bound after being written.
            let status = unsafe { (api.BindInput)(slot.binding.ptr_mut(), name.as_ptr(), tensor.ptr()) };
            check_status(status)?;
        }
    }
    // SAFETY: the session and binding pointers are valid for the life of the engine; the engine's
    // `&mut self` gives the exclusive access RunWithBinding requires; null run options are allowed.
    let status =
        unsafe { (api.RunWithBinding)(session.ptr().cast_mut(), std::ptr::null(), slot.binding.ptr()) };
    check_status(status)
}

fn output_shape(outputs: &[IoDesc], manifest: &Manifest, rows: usize) -> Vec<usize> {
    let rank = outputs.iter().find(|o| o.name == manifest.output.name()).map_or(2, |o| o.shape.len());
    if rank == 1 {
        vec![rows]
    } else {
        vec![rows, manifest.output.width()]
    }
}

fn check_status(status: ort::sys::OrtStatusPtr) -> Result<(), EngineError> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the C API carries a NUL-terminated message; we release it once.
    let message = unsafe {
        let msg = CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(status.0);
        msg
    };
    Err(EngineError::Run(message))
}

/// tickinfer's ONNX Runtime session settings: graph optimisation all, `intra_threads`
/// intra-op threads (spinning only when more than one), one inter-op thread, denormals
/// as zero. Every engine session starts from it; `benches/engine.rs` times it bare as
/// "ort tickinfer settings".
pub fn session_builder(
    env: &Environment,
    intra_threads: usize,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    Ok(Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(intra_threads.max(1))?
        .with_inter_threads(1)?
        .with_config_entry("session.set_denormal_as_zero", "1")?
        .with_config_entry("session.intra_op.allow_spinning", if intra_threads > 1 { "1" } else { "0" })?)
}

fn build_session(
    env: &Environment,
    onnx: &Path,
    opts: &EngineOptions,
) -> Result<(Session, &'static str), EngineError> {
    let base = || session_builder(env, opts.intra_threads);
    match &opts.provider {
        ExecutionProvider::Cpu => Ok((base()?.commit_from_file(onnx)?, "cpu")),
        other => match device_session(base()?, onnx, other) {
            Ok(s) => Ok(s),
            Err(e) => {
                log::warn!(
                    "!!! {} execution provider unavailable ({e}) — FALLING BACK TO CPU: latency and throughput \
                     will be the CPU's !!!",
                    other.name()
                );
                Ok((base()?.commit_from_file(onnx)?, "cpu"))
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn device_session(
    builder: ort::session::builder::SessionBuilder,
    onnx: &Path,
    provider: &ExecutionProvider,
) -> Result<(Session, &'static str), EngineError> {
    use ort::ep;
    let dispatch = match provider {
        ExecutionProvider::Cuda { device_id } => ep::CUDA::default().with_device_id(*device_id).build(),
        #[cfg(feature = "tensorrt")]
        ExecutionProvider::TensorRt { device_id, engine_cache, fp16 } => {
            let mut trt = ep::TensorRT::default().with_device_id(*device_id).with_fp16(*fp16);
            if let Some(dir) = engine_cache {
                std::fs::create_dir_all(dir)
                    .map_err(|e| EngineError::Config(format!("TensorRT cache {}: {e}", dir.display())))?;
                trt = trt.with_engine_cache(true).with_engine_cache_path(dir.display().to_string());
            }
            trt.build()
        }
        #[cfg(not(feature = "tensorrt"))]
        ExecutionProvider::TensorRt { .. } => {
            return Err(EngineError::Config("built without the `tensorrt` cargo feature".into()))
        }
        ExecutionProvider::Cpu => unreachable!("CPU handled by the caller"),
    };
    let session = builder.with_execution_providers([dispatch.error_on_failure()])?.commit_from_file(onnx)?;
    Ok((session, provider.name()))
}

#[cfg(not(feature = "cuda"))]
fn device_session(
    _builder: ort::session::builder::SessionBuilder,
    _onnx: &Path,
    provider: &ExecutionProvider,
) -> Result<(Session, &'static str), EngineError> {
    Err(EngineError::Config(format!(
        "tickinfer was built without the `{}` cargo feature (rebuild with --features {})",
        provider.name(),
        provider.name()
    )))
}
