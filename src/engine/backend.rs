//! Which runtime serves: ONNX Runtime, or the native evaluator generated from the
//! same `.onnx` (`native`). Decided once at load (a reload builds a new engine, so
//! it decides again, off the hot path):
//!
//! 1. `ort`: ONNX Runtime, nothing else tried.
//! 2. Otherwise the native evaluator is generated from the graph; a graph it does not
//!    run is named (`native` fails the load with that reason; `auto` serves with ORT).
//! 3. The gate ([`super::gate`]): rows that cover the model run through both; the
//!    evaluator must agree on every row (outputs, returned state, decoded signal) and,
//!    for a tree ensemble, the rows must reach every reachable leaf and take every
//!    two-sided branch both ways. Otherwise `native` fails the load naming the first
//!    disagreeing row (or the coverage), and `auto` serves with ORT, saying why.
//! 4. Timing: both run [`TIMED_RUNS`] single-row calls over the gate's first rows; `auto`
//!    serves with the one of lower median. Then runs of 2, 4, 8 … up to the largest batch:
//!    the native evaluator (one row after another) serves every run size up to the first
//!    at which ONNX Runtime's batched kernels are faster, ORT the larger ones — under load
//!    a batch goes to whichever is faster for its size. The choice, the gate's report and
//!    the medians are logged and kept in [`ModelInfo::backend_report`](super::ModelInfo)
//!    for `tickinfer stats` and metrics.
//!
//! `TICKINFER_TEST_NATIVE_FAULT` (tests only) makes the native evaluator wrong on purpose:
//! `gate` from the start (the gate must refuse it), `serving` once the gate has passed (a
//! defect the gate cannot see: the live verifier must catch it).

use std::time::Instant;

use super::{gate, run_bound, Backend, Engine, EngineError, NativeModel};

/// Single-row runs timed per backend at load.
pub const TIMED_RUNS: usize = 400;

pub(super) fn choose(
    engine: &mut Engine,
    forced: Option<Backend>,
    native_max_run: Option<usize>,
    level: log::Level,
) -> Result<(), EngineError> {
    let backend = forced.unwrap_or(engine.manifest.backend);
    let name = engine.manifest.name.clone();
    let refuse = |why: String| -> Result<(), EngineError> {
        Err(EngineError::Config(format!("backend native for {name}: {why}")))
    };
    if backend == Backend::Ort {
        engine.info.backend_report = "ort: chosen by the manifest or --backend".into();
        log::log!(level, "  backend: {}", engine.info.backend_report);
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
    let fault = std::env::var("TICKINFER_TEST_NATIVE_FAULT").ok();
    if fault.as_deref() == Some("gate") {
        log::warn!(
            "  TICKINFER_TEST_NATIVE_FAULT=gate: the native evaluator is made wrong on purpose (tests only)"
        );
        native = NativeModel::Faulty(Box::new(native));
    }
    let gate = gate::run(engine, &mut native)?;
    let verdict = gate.summary();
    let why_not = if !gate.agrees() {
        Some(format!("the native {} disagrees with ONNX Runtime ({verdict})", native.describe()))
    } else if !gate.full() {
        Some(format!("the gate's rows did not cover the native {} ({verdict})", native.describe()))
    } else {
        None
    };
    if let Some(why) = why_not {
        if backend == Backend::Native {
            return refuse(why);
        }
        engine.info.backend_report = format!("ort: {why}");
        log::warn!("  backend: {}", engine.info.backend_report);
        return Ok(());
    }
    if fault.as_deref() == Some("serving") {
        log::warn!("  TICKINFER_TEST_NATIVE_FAULT=serving: the native evaluator turns wrong after the gate (tests only)");
        native = NativeModel::Faulty(Box::new(native));
    }
    // Timing rows: the gate's first rows (features at real thresholds or scales), not its extremes.
    let width = engine.manifest.features.len();
    let timing_rows: Vec<f32> = gate.timing_rows.clone();
    debug_assert_eq!(timing_rows.len() % width, 0);
    let (ort_ns, native_ns) = timings(engine, &mut native, &timing_rows, 1, TIMED_RUNS)?;
    let serve_native = backend == Backend::Native || native_ns < ort_ns;
    // The crossover: the first run size at which ORT's batched run beats rows one by one.
    let max_batch = engine.parts.slots.len();
    let mut up_to = max_batch;
    let mut crossover = String::new();
    if backend != Backend::Native && serve_native {
        let (mut b, mut won) = (2, 1);
        while b / 2 < max_batch {
            let rows = b.min(max_batch);
            let (o, n) = timings(engine, &mut native, &timing_rows, rows, (TIMED_RUNS / rows).max(40))?;
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
    if let Some(m) = native_max_run.filter(|_| serve_native) {
        up_to = m.min(max_batch);
        crossover = format!("; runs of up to {up_to} rows native, larger on ort (--native-max-run)");
    }
    let what = native.describe();
    engine.info.backend_report = format!(
        "{}: native {what}; {verdict}; one row: native {:.2} µs, ort {:.2} µs (medians of {TIMED_RUNS}){crossover}{}",
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

/// Median run of `rows` rows, ns, over `runs` runs: (ONNX Runtime's batched run,
/// native rows one after another). Each run takes the next `rows` rows of `cycle`.
fn timings(
    engine: &mut Engine,
    native: &mut NativeModel,
    cycle: &[f32],
    rows: usize,
    runs: usize,
) -> Result<(u64, u64), EngineError> {
    let Engine { manifest, parts, session, .. } = engine;
    let memory_len: usize = parts.state_widths.iter().sum();
    let (mut memory, mut out) = (vec![0f32; memory_len], vec![0f32; manifest.output.width()]);
    let width = manifest.features.len();
    let n = cycle.len() / width;
    let slot = &mut parts.slots[rows - 1];
    let mut ort = Vec::with_capacity(runs);
    let mut own = Vec::with_capacity(runs);
    let mut next = 0;
    for i in 0..runs + runs / 10 {
        let first = next;
        for row in slot.input.extract_tensor_mut().1.chunks_exact_mut(width) {
            row.copy_from_slice(&cycle[next * width..(next + 1) * width]);
            next = (next + 1) % n;
        }
        let t = Instant::now();
        run_bound(slot, session, &parts.input_names, parts.rebind_input)?;
        let a = t.elapsed().as_nanos() as u64;
        let t = Instant::now();
        for r in 0..rows {
            let at = (first + r) % n;
            native.run(&cycle[at * width..(at + 1) * width], &mut memory, &mut out);
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
