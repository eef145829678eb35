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

use crate::manifest::{BatchDim, IoDesc, Manifest, ManifestError, Prediction};
use crate::state::State;
use crate::wire::MlRequest;

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
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            ort_lib: None,
            intra_threads: 1,
            max_batch: 32,
            warmup_runs: 20,
            provider: ExecutionProvider::Cpu,
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
    /// Extra features each request must carry.
    pub extra_features: u16,
    pub inputs: Vec<IoDesc>,
    pub outputs: Vec<IoDesc>,
    pub batch: BatchDim,
    /// Largest batch one run takes (1 for a fixed-batch model).
    pub max_batch: usize,
    /// The provider actually in use (after any fallback).
    pub provider: &'static str,
    pub runtime_library: PathBuf,
}

/// One batch size's pre-bound buffers.
struct Slot {
    /// Rows this slot runs.
    rows: usize,
    /// `[rows, features]`, written in place per run.
    input: Tensor<f32>,
    /// `[rows, width]`, written by ONNX Runtime per run.
    output: Tensor<f32>,
    binding: IoBinding,
}

/// A loaded model, ready to score requests. Not `Sync`: one inference thread owns it.
pub struct Engine {
    manifest: Manifest,
    info: ModelInfo,
    /// `slots[b - 1]` runs batches of `b` rows.
    slots: Vec<Slot>,
    /// Input name for re-binding on device providers (which copy at bind time).
    input_name: CString,
    rebind_input: bool,
    /// Per row of the batch being filled: its symbol was warming (capacity `max_batch`).
    warming: Vec<bool>,
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
            extra_features: manifest.features.extras(),
            inputs,
            outputs,
            batch,
            max_batch,
            provider,
            runtime_library: lib.clone(),
        };
        log::info!(
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
            log::info!("  input  {i}");
        }
        for o in &info.outputs {
            log::info!("  output {o}");
        }
        log::info!("  features [{}] -> {}", manifest.feature_names.join(", "), manifest.output.name());

        let allocator = Allocator::default();
        let width_in = manifest.features.len();
        let width_out = manifest.output.width();
        let mut slots = Vec::with_capacity(max_batch);
        for rows in 1..=max_batch {
            let input = Tensor::<f32>::new(&allocator, [rows, width_in])?;
            let mut output = Tensor::<f32>::new(&allocator, output_shape(&info.outputs, &manifest, rows))?;
            let mut binding = session.create_binding()?;
            binding.bind_input(manifest.input_name.as_str(), &input)?;
            binding.bind_output(manifest.output.name(), &mut output)?;
            debug_assert_eq!(output.extract_tensor().1.len(), rows * width_out);
            slots.push(Slot { rows, input, output, binding });
        }
        let input_name = CString::new(manifest.input_name.as_str())
            .map_err(|_| EngineError::Config("input name contains a NUL byte".into()))?;
        let spec = manifest.features.state_spec();
        if !spec.is_stateless() {
            log::info!(
                "  state per symbol: {} events kept, {} accumulators, {} B; warm after {} earlier events",
                spec.capacity,
                spec.ewma_alphas.len() + spec.rate_taus_s.len(),
                spec.bytes_per_symbol(),
                spec.history
            );
        }
        let warming = vec![false; max_batch];
        let mut engine =
            Engine { rebind_input: provider != "cpu", input_name, manifest, info, slots, session, warming };
        engine.warm_up(opts.warmup_runs)?;
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

    fn warm_up(&mut self, runs: usize) -> Result<(), EngineError> {
        let scale = self.info.price_scale;
        let req = MlRequest {
            bid_price: 100 * scale,
            ask_price: 100 * scale + scale.max(100) / 100,
            bid_size: 100,
            ask_size: 120,
            book_imbalance: -90_909,
            n_features: self.info.extra_features,
            ..MlRequest::new()
        };
        let reqs = vec![req; self.max_batch()];
        let mut state = self.new_state(1); // its own: the serving state never sees warm-up rows
        let t0 = std::time::Instant::now();
        for b in 1..=self.max_batch() {
            for _ in 0..runs {
                self.run_rows(&reqs[..b], &mut state)?;
            }
        }
        log::info!("warm-up: {runs} runs x {} batch sizes in {:.1?}", self.max_batch(), t0.elapsed());
        Ok(())
    }

    /// A per-symbol state table for this model's stateful features, for `max_symbols`
    /// symbols (allocated now; empty for a stateless model).
    pub fn new_state(&self, max_symbols: usize) -> State {
        State::new(self.manifest.features.state_spec().clone(), max_symbols)
    }

    /// Run the model on `reqs` (1..=max_batch of them, in order: each updates its
    /// symbol's `state` before its row is filled) and return the raw output rows,
    /// `reqs.len() × width` values, row-major. No allocation.
    pub fn run_rows(&mut self, reqs: &[MlRequest], state: &mut State) -> Result<&[f32], EngineError> {
        let Engine { manifest, slots, input_name, rebind_input, session, warming, .. } = self;
        run_slot(slots, session, manifest, input_name, *rebind_input, reqs, state, warming)
    }

    /// Score `reqs` (any number; run in chunks of `max_batch`) into `out`
    /// (same length); `None` where the model's output for that request was not
    /// finite (see [`Manifest::decode`]). Each request updates its symbol's `state`
    /// first, in order. No allocation.
    pub fn predict(
        &mut self,
        reqs: &[MlRequest],
        state: &mut State,
        out: &mut [Option<Prediction>],
    ) -> Result<(), EngineError> {
        assert_eq!(reqs.len(), out.len(), "one prediction slot per request");
        let Engine { manifest, slots, input_name, rebind_input, session, info, warming } = self;
        let width = manifest.output.width();
        for (reqs, out) in reqs.chunks(info.max_batch).zip(out.chunks_mut(info.max_batch)) {
            let rows = run_slot(slots, session, manifest, input_name, *rebind_input, reqs, state, warming)?;
            for (((req, row), p), &warm) in
                reqs.iter().zip(rows.chunks_exact(width)).zip(out.iter_mut()).zip(&*warming)
            {
                *p = manifest.decode(row, req).map(|p| Prediction { warming: warm, ..p });
            }
        }
        Ok(())
    }
}

/// The hot path of one model run: fill the slot's input in place, run its
/// binding, return its output rows.
#[inline]
#[allow(clippy::too_many_arguments)]
fn run_slot<'s>(
    slots: &'s mut [Slot],
    session: &Session,
    manifest: &Manifest,
    input_name: &CStr,
    rebind_input: bool,
    reqs: &[MlRequest],
    state: &mut State,
    warming: &mut [bool],
) -> Result<&'s [f32], EngineError> {
    let b = reqs.len();
    if b == 0 || b > slots.len() {
        return Err(EngineError::Run(format!("batch of {b} outside 1..={}", slots.len())));
    }
    let slot = &mut slots[b - 1];
    debug_assert_eq!(slot.rows, b);
    let width = manifest.features.len();
    {
        let (_, data) = slot.input.extract_tensor_mut();
        let inv = manifest.features.inv_price_scale();
        for ((req, row), warm) in reqs.iter().zip(data.chunks_exact_mut(width)).zip(warming.iter_mut()) {
            if state.is_stateless() {
                manifest.features.fill_with(req, None, row);
                *warm = false;
                continue;
            }
            // In request order: this row sees every earlier request of its symbol, this batch's too.
            if !state.admit(req.symbol_id) {
                return Err(EngineError::Run(format!(
                    "symbol {} has no state slot: all {} are taken (--max-symbols)",
                    { req.symbol_id },
                    state.max_symbols()
                )));
            }
            let view = state.update(req, inv);
            *warm = view.warming;
            manifest.features.fill_with(req, Some(&view), row);
        }
    }
    let api = ort::api();
    if rebind_input {
        // SAFETY: binding, name and tensor are live and owned by the engine; device providers copy the
        // input at bind time, so it is re-bound after being written.
        let status =
            unsafe { (api.BindInput)(slot.binding.ptr_mut(), input_name.as_ptr(), slot.input.ptr()) };
        check_status(status)?;
    }
    // SAFETY: the session and binding pointers are valid for the life of the engine; the engine's
    // `&mut self` gives the exclusive access RunWithBinding requires; null run options are allowed.
    let status =
        unsafe { (api.RunWithBinding)(session.ptr().cast_mut(), std::ptr::null(), slot.binding.ptr()) };
    check_status(status)?;
    let (_, out) = slot.output.extract_tensor();
    Ok(out)
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

fn build_session(
    env: &Environment,
    onnx: &Path,
    opts: &EngineOptions,
) -> Result<(Session, &'static str), EngineError> {
    let base = || -> Result<ort::session::builder::SessionBuilder, EngineError> {
        Ok(Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(opts.intra_threads.max(1))?
            .with_inter_threads(1)?
            .with_config_entry("session.set_denormal_as_zero", "1")?
            .with_config_entry(
                "session.intra_op.allow_spinning",
                if opts.intra_threads > 1 { "1" } else { "0" },
            )?)
    };
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
