//! Engine cost beside the floor: tickinfer's engine (features + run + decode) on each
//! backend — ONNX Runtime through pre-bound IoBindings, and the native evaluator
//! generated from the same graph — at batch 1 and 32, and a bare `ort` run of the same
//! model with the same session settings (what a quant would write:
//! `session.run(inputs![..])` on a ready input row).
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::PathBuf;
use tickinfer::engine::{ort_environment, Backend, Engine, EngineOptions};
use tickinfer::manifest::{Manifest, Prediction};
use tickinfer::wire::MlRequest;

fn requests(n: usize) -> Vec<MlRequest> {
    (0..n as i64)
        .map(|i| MlRequest {
            bid_price: 2_230_000 + i * 100,
            ask_price: 2_230_300 + i * 100,
            bid_size: 100 + i * 7,
            ask_size: 300 - i,
            book_imbalance: 0,
            request_id: i as u64,
            ..MlRequest::new()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let _ = env_logger::builder().is_test(true).try_init();
    let manifest_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/lobster_direction.toml");
    let opts = EngineOptions { max_batch: 32, warmup_runs: 50, ..Default::default() };
    let mut engines: Vec<(&str, Engine)> = [("ort", Backend::Ort), ("native", Backend::Native)]
        .into_iter()
        .map(|(name, b)| {
            let o = EngineOptions { backend: Some(b), ..opts.clone() };
            (name, Engine::load(&manifest_path, &o).expect("engine loads"))
        })
        .collect();
    let manifest = Manifest::load(&manifest_path).unwrap();

    // Bare ORT: same model, same session settings, input rows already computed.
    let env = ort_environment(&opts).unwrap();
    let mut bare = Session::builder(env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_inter_threads(1)
        .unwrap()
        .commit_from_file(&manifest.onnx)
        .unwrap();
    let width = manifest.features.len();

    let mut g = c.benchmark_group("engine");
    for batch in [1usize, 32] {
        let reqs = requests(batch);
        let mut preds = vec![None::<Prediction>; batch];
        let mut rows = vec![0f32; batch * width];
        for (r, row) in reqs.iter().zip(rows.chunks_exact_mut(width)) {
            manifest.features.fill(r, row);
        }
        let theirs = {
            let out = bare
                .run(ort::inputs![TensorRef::from_array_view(([batch, width], &rows[..])).unwrap()])
                .unwrap();
            out["probabilities"].try_extract_tensor::<f32>().unwrap().1.to_vec()
        };
        g.throughput(Throughput::Elements(batch as u64));
        for (name, engine) in engines.iter_mut() {
            // Works before it is timed: the engine agrees with bare ORT on the probabilities
            // (the ORT backend bit for bit; the native one within float rounding).
            let mut state = engine.new_state(1);
            engine.predict(&reqs, &mut state, &mut preds).unwrap();
            let ours = engine.run_rows(&reqs, &mut state).unwrap().to_vec();
            if *name == "ort" {
                assert_eq!(ours, theirs, "engine (ort) and bare ORT disagree at batch {batch}");
            } else {
                let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-6, "engine ({name}) and bare ORT differ by {worst:e} at batch {batch}");
            }
            assert!(preds.iter().flatten().count() == batch, "every output is finite");
            assert!(preds.iter().flatten().all(|p| (-1..=1).contains(&p.direction) && p.confidence <= 100));
            g.bench_with_input(
                BenchmarkId::new(format!("tickinfer_predict_{name}"), batch),
                &batch,
                |b, _| b.iter(|| engine.predict(black_box(&reqs), &mut state, &mut preds).unwrap()),
            );
        }
        g.bench_with_input(BenchmarkId::new("bare_ort_run", batch), &batch, |b, _| {
            b.iter(|| {
                let input = TensorRef::from_array_view(([batch, width], black_box(&rows[..]))).unwrap();
                let out = bare.run(ort::inputs![input]).unwrap();
                black_box(out["probabilities"].try_extract_tensor::<f32>().unwrap().1[0]);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
