//! Tree ensembles on real rows: the native evaluator alone, tickinfer's engine (state,
//! features, run, decoding; live verifier off) and a bare ONNX Runtime `session.run`, on
//! the same stream of rows that vary from one call to the next (`bench::real_stream`: the
//! real LOBSTER day in `../shared` when it is there, else the bundled synthetic sample) —
//! repeating one row lets the branch predictor learn a tree's paths and flatters every
//! evaluator. Two models: the bundled `lobster_stateful` (300 trees × 15 leaves, 18
//! features) and LightGBM 100 rounds × 31 leaves × 3 classes (`benches/models/`).
//!
//! Before timing, the evaluator's output is checked bit for bit against ONNX Runtime on
//! every row of the stream. Tail latency from HdrHistogram (one call per sample, the
//! clock read around it), criterion for the mean of the evaluator alone. Pinned to the
//! last core found; the configuration is printed with the table.
//!
//!     cargo bench --bench trees
//!     TICKINFER_BENCH_DATA=path/to/LOBSTER.zip cargo bench --bench trees
#[path = "util/mod.rs"]
mod util;

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hdrhistogram::Histogram;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use tickinfer::bench::{ready_rows, real_stream};
use tickinfer::clock::now_ns;
use tickinfer::engine::native::NativeModel;
use tickinfer::engine::{ort_environment, Backend, Engine, EngineOptions};
use tickinfer::manifest::{Manifest, Prediction};
use tickinfer::verify::VerifyOptions;

const MODELS: [(&str, &str); 2] = [
    ("lobster_stateful (300 trees x 15 leaves)", "models/lobster_stateful.toml"),
    ("LightGBM 100x31x3 (300 trees)", "benches/models/lgbm_100x31.toml"),
];

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds")
}

/// One model's table lines, and its evaluator for criterion.
fn study(label: &str, toml: &Path, calls: usize, c: &mut Criterion, table: &mut String) {
    let manifest = Manifest::load(toml).expect("manifest");
    let (reqs, what) = real_stream(&manifest, 20_000).expect("real stream");
    let rows = ready_rows(&manifest, &reqs);
    let (width, outs) = (manifest.features.len(), manifest.output.width());
    let mut native = NativeModel::from_manifest(&manifest, &[]).expect("a native evaluator");
    assert!(matches!(native, NativeModel::Trees(_)), "{label}: not served as trees: {}", native.describe());

    let opts = EngineOptions::default();
    let env = ort_environment(&opts).expect("ORT environment");
    let mut session = Session::builder(env)
        .expect("session builder")
        .with_optimization_level(GraphOptimizationLevel::All)
        .expect("optimisation level")
        .with_intra_threads(1)
        .expect("intra-op threads")
        .with_inter_threads(1)
        .expect("inter-op threads")
        .commit_from_file(&manifest.onnx)
        .expect("ORT session");
    let (input, output) = (manifest.input_name.clone(), manifest.output.name().to_string());
    let mut ort_row = |x: &[f32]| -> Vec<f32> {
        let t = TensorRef::from_array_view(([1usize, width], x)).expect("tensor");
        let out = session.run(vec![(input.clone(), t)]).expect("ORT run");
        out[output.as_str()].try_extract_tensor::<f32>().expect("f32 output").1.to_vec()
    };

    // Works before it is timed: bit for bit with ONNX Runtime on every row of the stream.
    let mut got = vec![0f32; outs];
    for x in rows.chunks_exact(width) {
        native.run(x, &mut [], &mut got);
        let want = ort_row(x);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{label}: native {got:?} vs ORT {want:?} on row {x:?}"
        );
    }

    let n_rows = rows.len() / width;
    let warm = calls / 10;
    let mut h_native = hist();
    for i in 0..calls + warm {
        let x = &rows[(i % n_rows) * width..][..width];
        let t0 = now_ns();
        native.run(black_box(x), &mut [], &mut got);
        black_box(&got);
        if i >= warm {
            h_native.saturating_record(now_ns() - t0);
        }
    }
    let mut h_ort = hist();
    for i in 0..calls + warm {
        let x = &rows[(i % n_rows) * width..][..width];
        let t0 = now_ns();
        black_box(ort_row(x));
        if i >= warm {
            h_ort.saturating_record(now_ns() - t0);
        }
    }
    // The engine as the server's worker calls it (state and features per request), verify off,
    // on the native backend (`auto` times both at load and may pick ORT in a debug build).
    let quiet = EngineOptions {
        verify: VerifyOptions { every: Some(0), ..Default::default() },
        backend: Some(Backend::Native),
        ..opts
    };
    let mut engine = Engine::load(toml, &quiet).expect("engine");
    assert!(engine.info().backend.starts_with("native"), "{label}: served by {}", engine.info().backend);
    let mut state = engine.new_state(1);
    let mut p = [None::<Prediction>];
    let mut h_engine = hist();
    for i in 0..calls + warm {
        let mut req = reqs[i % reqs.len()];
        // Time moves on by whole passes, so stateful features see it go forward.
        let span = reqs[reqs.len() - 1].timestamp_ns - reqs[0].timestamp_ns + 1_000_000;
        req.timestamp_ns += (i / reqs.len()) as u64 * span;
        let t0 = now_ns();
        engine.predict(std::slice::from_ref(&req), &mut state, &mut p).expect("predict");
        if i >= warm {
            h_engine.saturating_record(now_ns() - t0);
        }
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    for (name, h) in [
        ("native evaluator (run only)", &h_native),
        ("tickinfer engine, verify off", &h_engine),
        ("bare ORT session.run", &h_ort),
    ] {
        table.push_str(&format!(
            "| {label} | {name} | {:.2} | {:.2} | {:.2} |\n",
            us(h, 0.5),
            us(h, 0.99),
            us(h, 0.999)
        ));
    }
    table.push_str(&format!(
        "\n{label}: {} ({}); {calls} calls per row kind; evaluator p99 / bare ORT p99 = {:.3}, engine p99 / bare ORT p99 = {:.3}\n\n",
        native.describe(),
        what,
        us(&h_native, 0.99) / us(&h_ort, 0.99),
        us(&h_engine, 0.99) / us(&h_ort, 0.99),
    ));
    let mut i = 0;
    c.bench_function(&format!("trees/{label}/native"), |b| {
        b.iter(|| {
            i = (i + 1) % n_rows;
            native.run(black_box(&rows[i * width..][..width]), &mut [], &mut got);
        })
    });
}

fn bench(c: &mut Criterion) {
    let full = util::full();
    let pinned = util::pin_to_last_core();
    let root = tickinfer::source_root();
    let mut table = format!("# Trees on real rows (per call, µs; pinned to {pinned})\n\n| model | row | p50 | p99 | p99.9 |\n|---|---|---|---|---|\n");
    let calls = if full { 200_000 } else { 2_000 };
    for (label, toml) in MODELS {
        study(label, &root.join(toml), calls, c, &mut table);
    }
    println!("{table}");
    let out = root.join("target/criterion");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("trees-study.md"), &table);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
