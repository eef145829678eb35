//! Which runtime serves: ONNX Runtime, or the native evaluator generated from the
//! same `.onnx` (`native`). Decided once at load (a reload builds a new engine, so
//! it decides again, off the hot path):
//!
//! 1. `ort`: ONNX Runtime, nothing else tried.
//! 2. Otherwise the native evaluator is generated from the graph; a graph it does not
//!    run is named (`native` fails the load with that reason; `auto` serves with ORT).
//! 3. Parity: [`PARITY_ROWS`] seeded random rows (features, and a recurrent model's
//!    state) run through both; every output and returned state value must agree
//!    within [`TOLERANCE`] and every row's argmax must be the same, or the evaluator
//!    is refused with the worst row named (a load error for `native`).
//! 4. Timing: both run [`TIMED_RUNS`] single-row calls; `auto` serves with the one
//!    of lower median. Then runs of 2, 4, 8 … up to the largest batch: the native
//!    evaluator (one row after another) serves every run size up to the first at which
//!    ONNX Runtime's batched kernels are faster, ORT the larger ones — under load a
//!    batch goes to whichever is faster for its size. The choice, the parity and the
//!    medians are logged and kept in [`ModelInfo::backend_report`](super::ModelInfo)
//!    for `tickinfer stats` and metrics.

use std::time::Instant;

use super::{run_bound, Backend, Engine, EngineError, NativeModel};

/// Rows compared at load.
pub const PARITY_ROWS: usize = 64;
/// Largest |native − ORT| accepted in any output or state value.
pub const TOLERANCE: f32 = 1e-4;
/// Single-row runs timed per backend at load.
pub const TIMED_RUNS: usize = 400;

pub(super) fn choose(engine: &mut Engine, forced: Option<Backend>) -> Result<(), EngineError> {
    let backend = forced.unwrap_or(engine.manifest.backend);
    let name = engine.manifest.name.clone();
    let refuse = |why: String| -> Result<(), EngineError> {
        Err(EngineError::Config(format!("backend native for {name}: {why}")))
    };
    if backend == Backend::Ort {
        engine.info.backend_report = "ort: chosen by the manifest or --backend".into();
        log::info!("  backend: {}", engine.info.backend_report);
        return Ok(());
    }
    let mut native = match NativeModel::from_manifest(&engine.manifest, &engine.parts.state_widths) {
        Ok(n) => n,
        Err(why) if backend == Backend::Native => return refuse(why),
        Err(why) => {
            engine.info.backend_report = format!("ort: no native evaluator for this graph ({why})");
            log::info!("  backend: {}", engine.info.backend_report);
            return Ok(());
        }
    };
    let worst = match parity(engine, &mut native)? {
        Ok(worst) => worst,
        Err(why) if backend == Backend::Native => return refuse(why),
        Err(why) => {
            engine.info.backend_report =
                format!("ort: the native {} disagrees with it ({why})", native.describe());
            log::warn!("  backend: {}", engine.info.backend_report);
            return Ok(());
        }
    };
    let (ort_ns, native_ns) = timings(engine, &mut native, 1, TIMED_RUNS)?;
    let serve_native = backend == Backend::Native || native_ns < ort_ns;
    // The crossover: the first run size at which ORT's batched run beats rows one by one.
    let max_batch = engine.parts.slots.len();
    let mut up_to = max_batch;
    let mut crossover = String::new();
    if backend != Backend::Native && serve_native {
        let (mut b, mut won) = (2, 1);
        while b / 2 < max_batch {
            let rows = b.min(max_batch);
            let (o, n) = timings(engine, &mut native, rows, (TIMED_RUNS / rows).max(40))?;
            if o < n {
                up_to = won;
                crossover = format!(
                    "; runs of up to {up_to} rows native, larger on ort ({rows} rows: native {:.2} µs, ort {:.2} µs)",
                    n as f64 / 1e3,
                    o as f64 / 1e3
                );
                break;
            }
            won = rows;
            b *= 2;
        }
        if crossover.is_empty() && max_batch > 1 {
            crossover = format!("; native for every run size up to {max_batch} rows");
        }
    }
    let what = native.describe();
    engine.info.backend_report = format!(
        "{}: native {what} agrees with ONNX Runtime on {PARITY_ROWS} random rows (max |Δ| {worst:.1e}); \
         one row: native {:.2} µs, ort {:.2} µs (medians of {TIMED_RUNS}){crossover}{}",
        if serve_native { "native" } else { "ort" },
        native_ns as f64 / 1e3,
        ort_ns as f64 / 1e3,
        if backend == Backend::Native { "; native chosen by the manifest or --backend" } else { "" }
    );
    log::info!("  backend: {}", engine.info.backend_report);
    if serve_native {
        engine.info.backend = format!("native ({what})");
        engine.parts.native = Some(native);
        engine.parts.native_up_to = up_to;
    }
    Ok(())
}

/// A seeded stream of values in [-1, 1) (xorshift64*): the same rows every load.
struct Rows(u64);
impl Rows {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `Ok(Ok(max |Δ|))` when the evaluator agrees with ONNX Runtime; `Ok(Err(why))` when not.
fn parity(engine: &mut Engine, native: &mut NativeModel) -> Result<Result<f32, String>, EngineError> {
    let Engine { manifest, parts, session, .. } = engine;
    let width = manifest.features.len();
    let out_width = manifest.output.width();
    let memory_len: usize = parts.state_widths.iter().sum();
    let mut rows = Rows(0x9E37_79B9_7F4A_7C15);
    let (mut memory, mut out) = (vec![0f32; memory_len], vec![0f32; out_width]);
    let mut worst = 0f32;
    for r in 0..PARITY_ROWS {
        let slot = &mut parts.slots[0];
        // Features up to ±3 (normalised inputs), state in [-1, 1) (an LSTM's h and c live there).
        let (_, x) = slot.input.extract_tensor_mut();
        x.iter_mut().for_each(|v| *v = 3.0 * rows.next());
        for v in memory.iter_mut() {
            *v = rows.next();
        }
        let mut at = 0;
        for (fed, &w) in slot.states_in.iter_mut().zip(&parts.state_widths) {
            fed.extract_tensor_mut().1.copy_from_slice(&memory[at..at + w]);
            at += w;
        }
        run_bound(slot, session, &parts.input_names, parts.rebind_input)?;
        let x: Vec<f32> = slot.input.extract_tensor().1[..width].to_vec();
        native.run(&x, &mut memory, &mut out);
        let want = slot.output.extract_tensor().1;
        let mut diff = out.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, worse);
        let mut at = 0;
        for (back, &w) in slot.states_out.iter().zip(&parts.state_widths) {
            let d = memory[at..at + w].iter().zip(back.extract_tensor().1).map(|(a, b)| (a - b).abs());
            diff = worse(diff, d.fold(0f32, worse));
            at += w;
        }
        let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |m, (i, &x)| if x > v[m] { i } else { m });
        if diff > TOLERANCE || argmax(&out) != argmax(want) {
            return Ok(Err(format!(
                "row {r}: max |Δ| {diff:.2e} (tolerance {TOLERANCE:.0e}), argmax {} vs ORT {}",
                argmax(&out),
                argmax(want)
            )));
        }
        worst = worst.max(diff);
    }
    Ok(Ok(worst))
}

/// The larger difference, a NaN (one side not finite) counting as infinite.
fn worse(m: f32, d: f32) -> f32 {
    if d.is_nan() {
        f32::INFINITY
    } else {
        m.max(d)
    }
}

/// Median run of `rows` rows, ns, over `runs` runs: (ONNX Runtime's batched run,
/// native rows one after another).
fn timings(
    engine: &mut Engine,
    native: &mut NativeModel,
    rows: usize,
    runs: usize,
) -> Result<(u64, u64), EngineError> {
    let Engine { manifest, parts, session, .. } = engine;
    let memory_len: usize = parts.state_widths.iter().sum();
    let (mut memory, mut out) = (vec![0f32; memory_len], vec![0f32; manifest.output.width()]);
    let width = manifest.features.len();
    // The parity rows left in the single-row slot: copied to every row of this one.
    let x: Vec<f32> = parts.slots[0].input.extract_tensor().1.to_vec();
    let slot = &mut parts.slots[rows - 1];
    for row in slot.input.extract_tensor_mut().1.chunks_exact_mut(x.len()) {
        row.copy_from_slice(&x);
    }
    let mut ort = Vec::with_capacity(runs);
    let mut own = Vec::with_capacity(runs);
    for i in 0..runs + runs / 10 {
        let t = Instant::now();
        run_bound(slot, session, &parts.input_names, parts.rebind_input)?;
        let a = t.elapsed().as_nanos() as u64;
        let t = Instant::now();
        for _ in 0..rows {
            native.run(&x[..width], &mut memory, &mut out);
        }
        let b = t.elapsed().as_nanos() as u64;
        if i >= runs / 10 {
            ort.push(a);
            own.push(b);
        }
    }
    ort.sort_unstable();
    own.sort_unstable();
    Ok((ort[ort.len() / 2], own[own.len() / 2]))
}
