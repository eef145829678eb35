//! The engine study: what one model call costs, per runtime and per setting, for the
//! four reference models of small-model serving — the bundled logistic regression, an
//! MLP 16→64→64→3, a LightGBM of 100 rounds × 31 leaves × 3 classes (300 trees) on 16
//! features, and one recurrent LSTM step (hidden 64) — at batch 1 and 32.
//!
//! Rows per model and batch:
//! - `engine (native)` / `engine (ort)`: tickinfer's engine on each backend — state,
//!   features, run and decoding per request (what the server's worker calls);
//!   `engine (auto)`: what `auto` serves (native up to the run size where ORT's batched
//!   kernels win, measured at load);
//! - `ort <setting>`: a bare `session.run` on ready input rows, with ONNX Runtime
//!   defaults, with tickinfer's settings (graph optimisation all, one intra-op thread,
//!   spinning off, denormals as zero), and with one setting changed at a time (graph
//!   optimisation off, memory pattern off), and through a pre-bound `IoBinding`;
//! - `tract` (with `--features bench-tract`): tract-onnx, pure Rust, optimised plan,
//!   one reused `SimpleState`.
//!
//! Before timing, every row is checked against the engine on ORT (within 1e-5; the ORT
//! rows of the same session settings bit for bit). A runtime that cannot load or run a
//! model gets a row saying why. Means come from criterion; p50/p99 from an HdrHistogram
//! pass per row, printed as a markdown table and written to
//! `target/criterion/engine-study.md`.
//!
//!     cargo bench --bench engine                          # ORT settings + engine per backend
//!     cargo bench --bench engine --features bench-tract   # + tract
//!     TICKINFER_STUDY_MODELS=LightGBM cargo bench --bench engine   # one model
#[path = "util/mod.rs"]
mod util;

use std::path::Path;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use hdrhistogram::Histogram;
use ort::memory::Allocator;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{IoBinding, Session};
use ort::value::{Tensor, TensorRef};
use tickinfer::bench::{ready_rows, real_stream};
use tickinfer::engine::{ort_environment, session_builder, Backend, Engine, EngineOptions};
use tickinfer::manifest::{Manifest, Prediction, Sequence};
use tickinfer::wire::MlRequest;

const MODELS: [(&str, &str); 4] = [
    ("logistic (bundled)", "models/lobster_direction.toml"),
    ("MLP 16-64-64-3", "tests/fixtures/models/mlp_direction.toml"),
    ("LightGBM 100x31 (300 trees)", "benches/models/lgbm_100x31.toml"),
    ("LSTM step h64", "benches/models/lstm_h64_step.toml"),
];

/// One configuration of a runtime, ready to run one batch.
trait Runner {
    /// Run the batch; the model output's first `batch * width` values.
    fn run(&mut self) -> Vec<f32>;
    /// Run the batch without collecting (what is timed).
    fn call(&mut self);
}

/// A bare ORT session fed ready rows — each call the stream's next `batch` rows — (and,
/// for a recurrent model, the state tensors it returned last time): `session.run(inputs)`,
/// or `run_binding` on pre-bound values.
struct BareOrt {
    session: Session,
    /// Every row of the real stream; `at`: the first row of the next call.
    rows: Vec<f32>,
    at: usize,
    batch: usize,
    width: usize,
    input: String,
    output: String,
    /// (input, output, width, carried values) per recurrent state.
    states: Vec<(String, String, usize, Vec<f32>)>,
    /// Pre-bound input, state and output tensors, for the `IoBinding` row.
    bound: Option<(IoBinding, Tensor<f32>, Vec<Tensor<f32>>)>,
}

impl BareOrt {
    fn new(
        manifest: &Manifest,
        state_widths: &[usize],
        rows: &[f32],
        batch: usize,
        setting: &str,
    ) -> Result<BareOrt, String> {
        let env = ort_environment(&EngineOptions::default()).map_err(|e| e.to_string())?;
        let e = |e: ort::Error<SessionBuilder>| e.to_string();
        // ORT's defaults, or the engine's own settings with at most one of them changed.
        let mut b = match setting {
            "defaults" => Session::builder(env).map_err(|e| e.to_string())?,
            _ => {
                let b = session_builder(env, 1).map_err(|e| e.to_string())?;
                match setting {
                    "graph opt off" => {
                        b.with_optimization_level(GraphOptimizationLevel::Disable).map_err(e)?
                    }
                    "mem pattern off" => b.with_memory_pattern(false).map_err(e)?,
                    _ => b,
                }
            }
        };
        let session = b.commit_from_file(&manifest.onnx).map_err(|e| e.to_string())?;
        let states: Vec<(String, String, usize, Vec<f32>)> = match &manifest.sequence {
            Sequence::Recurrent { state, .. } => state
                .iter()
                .zip(state_widths)
                .map(|(p, &w)| (p.input.clone(), p.output.clone(), w, vec![0f32; batch * w]))
                .collect(),
            _ => vec![],
        };
        let width = manifest.features.len();
        let bound = if setting == "IoBinding" {
            let alloc = Allocator::default();
            let mut binding = session.create_binding().map_err(|e| e.to_string())?;
            let x = Tensor::from_array(([batch, width], rows[..batch * width].to_vec()))
                .map_err(|e| e.to_string())?;
            binding.bind_input(&manifest.input_name, &x).map_err(|e| e.to_string())?;
            let mut kept = Vec::new();
            for (i, o, w, _) in &states {
                let t_in = Tensor::<f32>::new(&alloc, [batch, *w]).map_err(|e| e.to_string())?;
                let t_out = Tensor::<f32>::new(&alloc, [batch, *w]).map_err(|e| e.to_string())?;
                binding.bind_input(i, &t_in).map_err(|e| e.to_string())?;
                binding.bind_output(o, t_out).map_err(|e| e.to_string())?;
                kept.push(t_in);
            }
            let out_width = manifest.output.width();
            let out = Tensor::<f32>::new(&alloc, [batch, out_width]).map_err(|e| e.to_string())?;
            binding.bind_output(manifest.output.name(), out).map_err(|e| e.to_string())?;
            Some((binding, x, kept))
        } else {
            None
        };
        Ok(BareOrt {
            session,
            rows: rows.to_vec(),
            at: 0,
            batch,
            width,
            input: manifest.input_name.clone(),
            output: manifest.output.name().to_string(),
            states,
            bound,
        })
    }

    fn go(&mut self, collect: bool) -> Vec<f32> {
        let span = self.batch * self.width;
        let start = self.at * self.width;
        self.at = (self.at + self.batch) % (self.rows.len() / self.width - self.batch + 1);
        let rows = &self.rows[start..start + span];
        if let Some((binding, x, kept)) = &mut self.bound {
            x.extract_tensor_mut().1.copy_from_slice(rows);
            let out = self.session.run_binding(binding).expect("run_binding");
            let probs = output(&out, &self.output, collect);
            // Carry the state: the bound outputs back into the bound inputs.
            for ((_, o, _, _), t_in) in self.states.iter().zip(kept.iter_mut()) {
                let v = out[o.as_str()].try_extract_tensor::<f32>().unwrap().1.to_vec();
                t_in.extract_tensor_mut().1.copy_from_slice(&v);
            }
            return probs;
        }
        let x = TensorRef::from_array_view(([self.batch, self.width], rows)).unwrap();
        let mut inputs = vec![(self.input.clone(), x)];
        for (name, _, w, c) in &self.states {
            inputs.push((name.clone(), TensorRef::from_array_view(([self.batch, *w], &c[..])).unwrap()));
        }
        let out = self.session.run(inputs).expect("session.run");
        let probs = output(&out, &self.output, collect);
        for (_, back, _, c) in self.states.iter_mut() {
            c.copy_from_slice(out[back.as_str()].try_extract_tensor::<f32>().unwrap().1);
        }
        probs
    }
}

/// The model output's values when `collect`, else only touched (kept from being optimised away).
fn output(out: &ort::session::SessionOutputs<'_>, name: &str, collect: bool) -> Vec<f32> {
    let values = out[name].try_extract_tensor::<f32>().unwrap().1;
    if collect {
        values.to_vec()
    } else {
        black_box(values[0]);
        vec![]
    }
}

impl Runner for BareOrt {
    fn run(&mut self) -> Vec<f32> {
        self.go(true)
    }
    fn call(&mut self) {
        self.go(false);
    }
}

/// tickinfer's engine: every request's state, features, run and decoding — each call the
/// stream's next `batch` requests.
struct EngineRunner {
    engine: Engine,
    state: tickinfer::state::State,
    reqs: Vec<MlRequest>,
    at: usize,
    batch: usize,
    preds: Vec<Option<Prediction>>,
}

impl EngineRunner {
    /// The first request of the next call; moves on.
    fn advance(&mut self) -> usize {
        let start = self.at;
        self.at = (self.at + self.batch) % (self.reqs.len() - self.batch + 1);
        start
    }
}

impl Runner for EngineRunner {
    fn run(&mut self) -> Vec<f32> {
        let start = self.advance();
        self.engine.run_rows(&self.reqs[start..start + self.batch], &mut self.state).unwrap().to_vec()
    }
    fn call(&mut self) {
        let start = self.advance();
        let EngineRunner { engine, state, reqs, preds, batch, .. } = self;
        engine.predict(black_box(&reqs[start..start + *batch]), state, preds).unwrap();
    }
}

#[cfg(feature = "bench-tract")]
mod tract {
    use super::{black_box, Manifest, Runner, Sequence};
    use tract_onnx::prelude::*;
    use tract_onnx::tract_hir::internal::{bail, ensure, format_err};

    /// tract-onnx: the optimised plan, one reused `SimpleState`, a fresh input tensor per
    /// call (its API takes owned values).
    pub struct Tract {
        state: TypedSimpleState,
        rows: Vec<f32>,
        shape: [usize; 2],
        out: usize,
        /// (input index, output index, width, carried).
        states: Vec<(usize, usize, Vec<f32>)>,
    }

    impl Tract {
        pub fn new(
            manifest: &Manifest,
            state_widths: &[usize],
            rows: &[f32],
            batch: usize,
        ) -> TractResult<Tract> {
            let mut model = tract_onnx::onnx().model_for_path(&manifest.onnx)?;
            let names: Vec<String> =
                model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect();
            let width = manifest.features.len();
            let mut states = Vec::new();
            for (k, name) in names.iter().enumerate() {
                let w = if *name == manifest.input_name {
                    width
                } else {
                    let Sequence::Recurrent { state, .. } = &manifest.sequence else {
                        bail!("unexpected input {name}")
                    };
                    let (p, w) = state
                        .iter()
                        .zip(state_widths)
                        .find(|(p, _)| p.input == *name)
                        .ok_or_else(|| format_err!("unexpected input {name}"))?;
                    states.push((k, p.output.clone(), *w));
                    *w
                };
                model = model.with_input_fact(k, f32::fact([batch, w]).into())?;
            }
            let plan = model.into_optimized()?.into_runnable()?;
            let m = plan.model();
            let out_index = |name: &str| -> TractResult<usize> {
                m.output_outlets()?
                    .iter()
                    .position(|o| m.outlet_label(*o) == Some(name) || m.node(o.node).name == name)
                    .ok_or_else(|| format_err!("no output {name}"))
            };
            let out = out_index(manifest.output.name())?;
            let states = states
                .into_iter()
                .map(|(k, o, w): (usize, String, usize)| Ok((k, out_index(&o)?, vec![0f32; batch * w])))
                .collect::<TractResult<Vec<_>>>()?;
            let input = names.iter().position(|n| *n == manifest.input_name).unwrap();
            ensure!(input == 0, "the feature input is not the first");
            Ok(Tract {
                state: TypedSimpleState::new(&plan)?,
                rows: rows.to_vec(),
                shape: [batch, width],
                out,
                states,
            })
        }

        fn go(&mut self) -> Vec<f32> {
            let mut inputs: TVec<TValue> = tvec![Tensor::from_shape(&self.shape, &self.rows).unwrap().into()];
            for (_, _, c) in &self.states {
                inputs.push(Tensor::from_shape(&[self.shape[0], c.len() / self.shape[0]], c).unwrap().into());
            }
            let out = self.state.run(inputs).expect("tract run");
            for (_, o, c) in self.states.iter_mut() {
                c.copy_from_slice(out[*o].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap());
            }
            out[self.out].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
        }
    }

    impl Runner for Tract {
        fn run(&mut self) -> Vec<f32> {
            self.go()
        }
        fn call(&mut self) {
            black_box(self.go());
        }
    }
}

/// A row: its label, and the runner or why the runtime cannot run the model.
type Row = (String, Result<Box<dyn Runner>, String>);

/// Every row for one model and batch size.
fn runners(manifest_path: &Path, batch: usize) -> Vec<Row> {
    let manifest = Manifest::load(manifest_path).unwrap();
    // Real rows, varying from call to call (a row repeated lets the branch predictor learn
    // a tree's path): `tickinfer bench`'s stream. One symbol per batch row: a batch of 32 is
    // 32 symbols' next event (a recurrent model's batch rows are 32 independent sequences,
    // as bare ORT sees them).
    let (mut reqs, _) = real_stream(&manifest, 8_192).unwrap();
    reqs.iter_mut().enumerate().for_each(|(i, r)| r.symbol_id = (i % batch) as u16);
    let opts = EngineOptions { max_batch: 32, warmup_runs: 20, ..Default::default() };
    let mut out: Vec<Row> = Vec::new();
    let mut widths = vec![];
    for (label, backend) in [
        ("engine (native)", Backend::Native),
        ("engine (ort)", Backend::Ort),
        ("engine (auto)", Backend::Auto),
    ] {
        let o = EngineOptions { backend: Some(backend), ..opts.clone() };
        let r = Engine::load(manifest_path, &o).map_err(|e| e.to_string()).map(|engine| {
            widths = manifest.state_widths(&engine.info().inputs);
            let state = engine.new_state(batch);
            Box::new(EngineRunner {
                engine,
                state,
                preds: vec![None; batch],
                reqs: reqs.clone(),
                at: 0,
                batch,
            }) as Box<dyn Runner>
        });
        out.push((label.to_string(), r));
    }
    let rows = ready_rows(&manifest, &reqs);
    for setting in ["defaults", "tickinfer settings", "graph opt off", "mem pattern off", "IoBinding"] {
        let r =
            BareOrt::new(&manifest, &widths, &rows, batch, setting).map(|b| Box::new(b) as Box<dyn Runner>);
        out.push((format!("ort {setting}"), r));
    }
    #[cfg(feature = "bench-tract")]
    {
        let r = tract::Tract::new(&manifest, &widths, &rows, batch)
            .map(|t| Box::new(t) as Box<dyn Runner>)
            .map_err(|e| format!("{e:#}"));
        out.push(("tract".to_string(), r));
    }
    out
}

/// p50 and p99 (µs) over `calls` timed calls after `calls / 10` untimed ones, cut
/// short after [`ROW_SECONDS`] (a runtime 1000× slower still gets a row).
fn percentiles(runner: &mut dyn Runner, calls: usize) -> (f64, f64) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let start = Instant::now();
    for i in 0..calls + calls / 10 {
        let t0 = Instant::now();
        runner.call();
        if i >= calls / 10 {
            h.saturating_record(t0.elapsed().as_nanos() as u64);
            if h.len() >= 20 && start.elapsed().as_secs_f64() > ROW_SECONDS {
                break;
            }
        }
    }
    (h.value_at_quantile(0.5) as f64 / 1e3, h.value_at_quantile(0.99) as f64 / 1e3)
}

const ROW_SECONDS: f64 = 3.0;

fn bench(c: &mut Criterion) {
    let _ = env_logger::builder().is_test(true).try_init();
    let full = util::full();
    let pinned = util::pin_to_last_core();
    let root = tickinfer::source_root();
    let mut table = format!("# Engine study (per call, µs; pinned to {pinned})\n\n| model | batch | runtime / setting | p50 | p99 | vs `ort tickinfer settings` p50 |\n|---|---|---|---|---|---|\n");
    let mut g = c.benchmark_group("engine");
    g.sample_size(20).warm_up_time(std::time::Duration::from_millis(300));
    g.measurement_time(std::time::Duration::from_secs(1));
    // TICKINFER_STUDY_MODELS=LightGBM,LSTM: only the models whose label contains one of these.
    let only = std::env::var("TICKINFER_STUDY_MODELS").unwrap_or_default();
    let wanted = |label: &str| only.is_empty() || only.split(',').any(|w| label.contains(w.trim()));
    for (label, manifest) in MODELS.into_iter().filter(|(l, _)| wanted(l)) {
        for batch in [1usize, 32] {
            let mut rs = runners(&root.join(manifest), batch);
            // Works before it is timed: each runtime's first call agrees with the engine on
            // ORT's (bare ORT with the same session settings bit for bit).
            let firsts: Vec<Option<Vec<f32>>> =
                rs.iter_mut().map(|(_, r)| r.as_mut().ok().map(|r| r.run())).collect();
            let first = |name: &str| {
                rs.iter().zip(&firsts).find(|((l, _), _)| l == name).and_then(|(_, f)| f.clone()).expect(name)
            };
            let reference = first("engine (ort)");
            assert_eq!(
                reference,
                first("ort tickinfer settings"),
                "{label} batch {batch}: engine (ort) and bare ORT differ"
            );
            let mut base_p50 = f64::NAN;
            let mut lines = Vec::new();
            for ((name, r), got) in rs.iter_mut().zip(firsts) {
                let runner = match r {
                    Ok(runner) => runner,
                    Err(why) => {
                        let why: String = why.chars().take(140).collect();
                        lines.push(format!(
                            "| {label} | {batch} | {name} | cannot run: {} | | |",
                            why.replace('|', "/")
                        ));
                        continue;
                    }
                };
                let got = got.expect("ran above");
                assert_eq!(got.len(), reference.len(), "{label} {name}: output size");
                let worst = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-5, "{label} batch {batch} {name}: differs from ORT by {worst:e}");
                let calls = if full { 20_000 / batch.max(4) * 4 } else { 50 };
                let (p50, p99) = percentiles(runner.as_mut(), calls);
                if name == "ort tickinfer settings" {
                    base_p50 = p50;
                }
                lines.push(format!("| {label} | {batch} | {name} | {p50:.2} | {p99:.2} | {{ratio:{p50}}} |"));
                g.bench_function(BenchmarkId::new(format!("{label}/{name}"), batch), |b| {
                    b.iter(|| runner.call())
                });
            }
            for l in lines {
                let l = match l.split_once("{ratio:") {
                    Some((head, tail)) => {
                        let (v, rest) = tail.split_once('}').unwrap();
                        format!("{head}{:.2}x{rest}", v.parse::<f64>().unwrap() / base_p50)
                    }
                    None => l,
                };
                table.push_str(&l);
                table.push('\n');
            }
        }
    }
    g.finish();
    println!("\n{table}");
    let out = root.join("target/criterion");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("engine-study.md"), &table);
}

criterion_group!(benches, bench);
criterion_main!(benches);
