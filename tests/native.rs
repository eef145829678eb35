//! The native backend: evaluators generated from the ONNX graph at load (the recurrent
//! LSTM step, linear models, dense chains, tree ensembles), checked against ONNX Runtime. Outputs and carried state
//! agree with ORT's over long streams at batch 1 and max_batch; `auto` reports its
//! choice with the parity and timings; a graph the native backend does not run is
//! named (an error for `native`, ONNX Runtime for `auto`).
mod util;

use tickinfer::engine::{Backend, Engine, EngineOptions};
use tickinfer::manifest::Prediction;
use tickinfer::wire::MlRequest;
use util::{repo_root, stream_request, test_engine_options};

const LSTMS: [&str; 3] = [
    "tests/fixtures/models/lstm_step.toml",
    "models/lobster_lstm_step.toml",
    "benches/models/lstm_2x128_step.toml",
];

fn load(manifest: &str, backend: Backend) -> Result<Engine, String> {
    let _ = env_logger::builder().is_test(true).try_init();
    let opts = EngineOptions { backend: Some(backend), ..test_engine_options() };
    Engine::load(&repo_root().join(manifest), &opts).map_err(|e| e.to_string())
}

/// Four symbols, unevenly interleaved (batches hold some symbols several times), with
/// the features the stateful models read changing from event to event.
fn stream(n: u64) -> Vec<MlRequest> {
    (0..n).map(|i| stream_request(i, [5, 5, 1, 5, 8, 1, 2][(i % 7) as usize])).collect()
}

/// Raw output rows of `reqs`, `chunk` requests per run, from a fresh state.
fn outputs(engine: &mut Engine, reqs: &[MlRequest], chunk: usize) -> Vec<f32> {
    let mut state = engine.new_state(8);
    let mut rows = Vec::new();
    for c in reqs.chunks(chunk) {
        rows.extend_from_slice(engine.run_rows(c, &mut state).unwrap());
    }
    rows
}

#[test]
fn native_and_ort_agree_over_long_streams_at_every_batch_size() {
    let reqs = stream(700);
    for manifest in LSTMS {
        let mut ort = load(manifest, Backend::Ort).unwrap();
        let mut native = load(manifest, Backend::Native).unwrap();
        assert_eq!(ort.info().backend, "ort");
        assert!(native.info().backend.starts_with("native (LSTM"), "{}", native.info().backend);
        let want = outputs(&mut ort, &reqs, 1);
        for chunk in [1, 7, native.max_batch()] {
            let got = outputs(&mut native, &reqs, chunk);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // 700 steps carry any difference forward through the state: it stays at float rounding.
            assert!(worst <= 1e-4, "{manifest} chunk {chunk}: max |native - ort| {worst:e}");
        }
        // The signals: the same direction for every request (confidence is a rounded probability).
        let mut p_ort = vec![None::<Prediction>; reqs.len()];
        let mut p_native = p_ort.clone();
        ort.predict(&reqs, &mut ort.new_state(8), &mut p_ort).unwrap();
        native.predict(&reqs, &mut native.new_state(8), &mut p_native).unwrap();
        let same =
            p_ort.iter().zip(&p_native).filter(|(a, b)| a.unwrap().direction == b.unwrap().direction).count();
        assert!(same >= reqs.len() - 1, "{manifest}: {same} of {} directions agree", reqs.len());
        assert!(p_native.iter().zip(&p_ort).all(|(a, b)| a.unwrap().warming == b.unwrap().warming));
    }
}

/// Runs longer than the native evaluator serves go to ONNX Runtime, the recurrent state
/// handed over between the two: 48 symbols round-robin, so runs reach max_batch (ORT) and
/// runs of 1 to 3 stay native (`native_max_run` 4), mixed over one stream; every output
/// stays within float rounding of ONNX Runtime's alone.
#[test]
fn recurrent_state_crosses_between_native_and_ort_runs() {
    let reqs: Vec<MlRequest> = (0..960).map(|i| stream_request(i, (i % 48) as u16)).collect();
    for manifest in LSTMS {
        let mut ort = load(manifest, Backend::Ort).unwrap();
        let opts = EngineOptions {
            backend: Some(Backend::Native),
            native_max_run: Some(4),
            ..test_engine_options()
        };
        let mut mixed = Engine::load(&repo_root().join(manifest), &opts).unwrap();
        assert!(
            mixed.info().backend_report.contains("runs of up to 4 rows native"),
            "{}",
            mixed.info().backend_report
        );
        let mut state = ort.new_state(64);
        let mut want = Vec::new();
        for c in reqs.chunks(ort.max_batch()) {
            want.extend_from_slice(ort.run_rows(c, &mut state).unwrap());
        }
        let mut state = mixed.new_state(64);
        let (mut got, mut at, mut k) = (Vec::new(), 0, 0);
        while at < reqs.len() {
            let n = [1, 16, 3, 16, 2, 5, 16][k % 7].min(reqs.len() - at);
            got.extend_from_slice(mixed.run_rows(&reqs[at..at + n], &mut state).unwrap());
            at += n;
            k += 1;
        }
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{manifest}: max |mixed - ort| {worst:e}");
    }
}

/// Linear models (the bundled default: LinearClassifier → Normalizer; a LinearRegressor)
/// and dense chains (a MatMul/Add/Softmax over stateful features; an MLP 16→64→64→3):
/// native and ORT give the same outputs on the committed parity requests and on a stream.
#[test]
fn native_linear_and_dense_models_agree_with_ort() {
    for (manifest, family, cases) in [
        ("models/lobster_direction.toml", "native (LinearClassifier", Some("lobster_direction")),
        ("tests/fixtures/models/ridge_return.toml", "native (LinearRegressor", Some("ridge_return")),
        ("tests/fixtures/models/stateful_linear.toml", "native (dense 10x3 -> Add -> Softmax", None),
        (
            "tests/fixtures/models/mlp_direction.toml",
            "native (dense 16x64 -> Relu -> 64x64 -> Relu -> 64x3 -> Softmax",
            None,
        ),
    ] {
        let mut ort = load(manifest, Backend::Ort).unwrap();
        let mut native = load(manifest, Backend::Native).unwrap();
        assert!(native.info().backend.starts_with(family), "{manifest}: {}", native.info().backend);
        let mut reqs: Vec<MlRequest> =
            cases.map(|c| util::parity_cases(c).iter().map(|c| c.request).collect()).unwrap_or_default();
        let extras = ort.info().extra_features;
        reqs.extend(stream(300).into_iter().enumerate().map(|(i, r)| {
            let mut features = [0f32; tickinfer::wire::MAX_FEATURES];
            features
                .iter_mut()
                .take(extras as usize)
                .enumerate()
                .for_each(|(k, f)| *f = ((i + k) % 5) as f32 - 2.0);
            MlRequest { n_features: extras, features, ..r }
        }));
        for chunk in [1, native.max_batch()] {
            let (a, b) = (outputs(&mut ort, &reqs, chunk), outputs(&mut native, &reqs, chunk));
            let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5, "{manifest} chunk {chunk}: max |native - ort| {worst:e}");
        }
    }
}

/// Tree ensembles: LightGBM's (the stateless fixture, the bundled stateful model, the
/// 300-tree bench model) and hand-built ones using every node comparison, missing-value
/// routing, multi-class leaves, base values, LOGISTIC, an averaging regressor and a
/// tree too wide for a 32-bit leaf vector. Rows
/// include NaN (the exact path), ±∞ and values exactly at thresholds.
#[test]
fn native_tree_ensembles_agree_with_ort_nan_and_thresholds_included() {
    // Every threshold of the hand-built trees, their neighbours, and the awkward values.
    let probes = [
        0.25f32,
        -0.5,
        1.0,
        0.0,
        2.0,
        0.75,
        -1.0,
        0.5,
        0.1,
        0.2500001,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        -f32::INFINITY,
        3.0,
        -0.25,
        -1.2,
        0.35,
        -0.8,
        1.15,
    ];
    for (manifest, family) in [
        ("tests/fixtures/models/lgbm_direction.toml", "native (TreeEnsembleClassifier 90 trees"),
        ("models/lobster_stateful.toml", "native (TreeEnsembleClassifier 300 trees"),
        ("benches/models/lgbm_100x31.toml", "native (TreeEnsembleClassifier 300 trees"),
        ("tests/fixtures/models/tree_modes.toml", "native (TreeEnsembleClassifier 3 trees"),
        ("tests/fixtures/models/tree_regressor.toml", "native (TreeEnsembleRegressor 3 trees"),
        ("tests/fixtures/models/tree_wide.toml", "native (TreeEnsembleRegressor 1 trees"),
    ] {
        // `==`/`!=` nodes take the node walk (tree_modes); a 48-leaf tree, 64-bit leaf vectors;
        // trees of ≤ 32 leaves the tree lanes (16 lanes for ≤ 16 leaves).
        let path = match manifest {
            m if m.contains("tree_modes") => "node walk",
            m if m.contains("tree_wide") => "bit vectors u64",
            m if m.contains("lgbm_100x31") => "tree lanes x32",
            _ => "tree lanes x16",
        };
        let mut ort = load(manifest, Backend::Ort).unwrap();
        let mut native = load(manifest, Backend::Native).unwrap();
        assert!(native.info().backend.starts_with(family), "{manifest}: {}", native.info().backend);
        assert!(native.info().backend.contains(path), "{manifest}: {}", native.info().backend);
        let extras = ort.info().extra_features as usize;
        let reqs: Vec<MlRequest> = stream(400)
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let mut features = [0f32; tickinfer::wire::MAX_FEATURES];
                for (k, f) in features.iter_mut().take(extras).enumerate() {
                    // Every 5th row holds a NaN (in a different column each time).
                    let v = probes[(i * 7 + k * 3) % probes.len()];
                    *f = if i % 5 == 0 && k == (i / 5) % extras { f32::NAN } else { v };
                }
                MlRequest { n_features: extras as u16, features, ..r }
            })
            .collect();
        for chunk in [1, native.max_batch()] {
            let (a, b) = (outputs(&mut ort, &reqs, chunk), outputs(&mut native, &reqs, chunk));
            assert_eq!(a.len(), b.len());
            // ONNX Runtime's operations in its order: the same bits.
            for (k, (a, b)) in a.iter().zip(&b).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{manifest} chunk {chunk} value {k}: ort {a} native {b}"
                );
            }
        }
    }
}

#[test]
fn auto_reports_its_choice_with_parity_and_timings() {
    let engine = load(LSTMS[2], Backend::Auto).unwrap();
    let report = &engine.info().backend_report;
    for needle in ["gate:", "rows", "agrees on every row", "max |Δ|", "one row: native", "µs, ort"] {
        assert!(report.contains(needle), "`{needle}` not in: {report}");
    }
    // What it serves is what the report says it chose.
    let chose_native = report.starts_with("native:");
    assert_eq!(engine.info().backend.starts_with("native"), chose_native, "{report}");
    assert!(chose_native || report.starts_with("ort:"), "{report}");
    // Native serving measures the run size where ORT's batched kernels take over (or none).
    if chose_native {
        assert!(
            report.contains("rows native, larger on ort") || report.contains("every run size"),
            "{report}"
        );
    }
}

#[test]
fn a_graph_the_native_backend_does_not_run_is_named() {
    // A graph with Gather/Cast, one ending in a Concat, and a window LSTM: no native evaluator.
    for (manifest, why) in [
        ("tests/fixtures/models/failing_gather.toml", "not a dense chain"),
        ("tests/fixtures/models/nonfinite_log.toml", "not a tree ensemble (the output is made by `Concat`"),
        ("tests/fixtures/models/lstm_window.toml", "a window model"),
    ] {
        let e = load(manifest, Backend::Native).err().expect("native must refuse it");
        assert!(e.contains("backend native") && e.contains(why), "{manifest}: {e}");
        let auto = load(manifest, Backend::Auto).unwrap();
        assert_eq!(auto.info().backend, "ort");
        assert!(auto.info().backend_report.contains(why), "{}", auto.info().backend_report);
    }
    let forced = load(LSTMS[0], Backend::Ort).unwrap();
    assert!(forced.info().backend_report.starts_with("ort: chosen"), "{}", forced.info().backend_report);
}

/// Inputs far outside the training range (an absurd ask) saturate the gates: the state
/// stays finite, the request still gets a signal, and both backends give the same one.
#[test]
fn saturating_inputs_give_the_same_signal_on_both_backends() {
    let mut answers = Vec::new();
    for backend in [Backend::Ort, Backend::Native] {
        let mut engine = load(LSTMS[0], backend).unwrap();
        let mut state = engine.new_state(4);
        let mut reqs: Vec<MlRequest> = (0..5).map(|i| stream_request(i, 3)).collect();
        // An absurd price makes the features huge but finite; the LSTM saturates, stays finite.
        let mut wild = stream_request(6, 3);
        wild.ask_price = i64::MAX / 2;
        reqs.push(wild);
        let mut wilder = stream_request(7, 3);
        wilder.bid_price = 1;
        reqs.push(wilder);
        let mut p = vec![None::<Prediction>; reqs.len()];
        let mut rows = Vec::new();
        for (r, p) in reqs.iter().zip(p.iter_mut()) {
            engine.predict(std::slice::from_ref(r), &mut state, std::slice::from_mut(p)).unwrap();
        }
        let mut state = engine.new_state(4);
        for r in &reqs {
            rows.extend_from_slice(engine.run_rows(std::slice::from_ref(r), &mut state).unwrap());
        }
        assert!(p.iter().all(|p| p.is_some()), "{backend:?}: saturating inputs still give a signal");
        answers.push((p, rows));
    }
    let ((p_ort, r_ort), (p_native, r_native)) = (&answers[0], &answers[1]);
    let worst = r_ort.iter().zip(r_native).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-4, "max |native - ort| {worst:e}");
    let directions = |p: &[Option<Prediction>]| p.iter().map(|p| p.unwrap().direction).collect::<Vec<_>>();
    assert_eq!(directions(p_ort), directions(p_native));
}

/// The evaluator alone: a non-finite state (here fed in directly; in service it would
/// come from a non-finite step) is never kept: the step reports it and zeroes the memory.
#[test]
fn a_non_finite_state_is_not_kept() {
    use tickinfer::engine::native::NativeModel;
    let manifest = tickinfer::manifest::Manifest::load(&repo_root().join(LSTMS[0])).unwrap();
    let mut model = NativeModel::from_manifest(&manifest, &[8, 8]).unwrap();
    assert_eq!(model.describe(), "LSTM 1x8 step -> Gemm 3 -> Softmax");
    let x = vec![0.5f32; manifest.features.len()];
    let (mut memory, mut out) = (vec![0.1f32; 16], [0f32; 3]);
    assert!(model.run(&x, &mut memory, &mut out));
    assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-5 && memory.iter().any(|v| *v != 0.1));
    memory[3] = f32::NAN;
    assert!(!model.run(&x, &mut memory, &mut out));
    assert!(memory.iter().all(|v| *v == 0.0), "{memory:?}");
    // Widths that are not layers x hidden are refused, named.
    let e = NativeModel::from_manifest(&manifest, &[8, 9]).unwrap_err();
    assert!(e.contains("state widths"), "{e}");
}

/// Graphs no exporter writes — a value made from itself, nodes missing their inputs,
/// dimensions whose product overflows — are refused with a reason by every family's
/// loader, promptly (a hang would hold a reload's lock for ever) and without a panic.
#[test]
fn malformed_graphs_are_refused_without_a_hang_or_a_panic() {
    use prost::Message;
    use tickinfer::engine::native::onnx_pb::{
        AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
    };
    use tickinfer::engine::native::NativeModel;
    use tickinfer::manifest::Manifest;

    let node = |op: &str, domain: &str, input: &[&str], output: &[&str]| NodeProto {
        op_type: op.into(),
        domain: domain.into(),
        input: input.iter().map(|s| s.to_string()).collect(),
        output: output.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let huge = TensorProto {
        name: "w".into(),
        dims: vec![1 << 40, 1 << 40, 1 << 40],
        data_type: 1,
        ..Default::default()
    };
    let lstm = NodeProto {
        attribute: vec![AttributeProto { name: "hidden_size".into(), i: 8, ..Default::default() }],
        ..node("LSTM", "", &[], &["y", "y_h", "y_c"])
    };
    let cases: Vec<(&str, Vec<NodeProto>, Vec<TensorProto>)> = vec![
        ("an Identity making its own input", vec![node("Identity", "", &["out"], &["out"])], vec![]),
        ("an Identity without an input", vec![node("Identity", "", &[], &["out"])], vec![]),
        ("a Normalizer without an input", vec![node("Normalizer", "ai.onnx.ml", &[], &["out"])], vec![]),
        ("a Gemm without inputs", vec![node("Gemm", "", &[], &["out"])], vec![]),
        ("a Gemm by weights of overflowing dims", vec![node("Gemm", "", &["x", "w"], &["out"])], vec![huge]),
        (
            "an ensemble without attributes",
            vec![node("TreeEnsembleClassifier", "ai.onnx.ml", &["x"], &["l", "out"])],
            vec![],
        ),
        ("an LSTM without inputs", vec![lstm], vec![]),
        (
            "two Identities making each other",
            vec![node("Identity", "", &["a"], &["out"]), node("Identity", "", &["out"], &["a"])],
            vec![],
        ),
    ];
    let plain =
        "[model]\nname = \"m\"\nversion = 1\nonnx = \"m.onnx\"\nprice_scale = 10000\n[input]\nname = \"x\"\n\
                 features = [\"extra:0\", \"extra:1\"]\n[output]\nname = \"out\"\nkind = \"classes\"\n\
                 classes = [\"sell\", \"flat\", \"buy\"]\n";
    let recurrent = format!(
        "{}[sequence]\nkind = \"recurrent\"\nstate = [{{ input = \"h_in\", output = \"h_out\" }}, {{ input = \"c_in\", output = \"c_out\" }}]\n",
        plain
    );
    let manifests = [
        (Manifest::parse(plain, std::path::Path::new("m.toml")).unwrap(), vec![]),
        (Manifest::parse(&recurrent, std::path::Path::new("m.toml")).unwrap(), vec![8usize, 8]),
    ];
    for (what, nodes, initializer) in cases {
        let bytes = ModelProto { graph: Some(GraphProto { node: nodes, initializer, ..Default::default() }) }
            .encode_to_vec();
        for (manifest, widths) in &manifests {
            let (tx, rx) = std::sync::mpsc::channel();
            let (bytes, manifest, widths) = (bytes.clone(), manifest.clone(), widths.clone());
            std::thread::spawn(move || {
                let _ = tx.send(NativeModel::from_bytes(&bytes, &manifest, &widths).map(|m| m.describe()));
            });
            match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(Err(why)) => assert!(!why.is_empty(), "{what}"),
                Ok(Ok(model)) => panic!("{what}: built {model}"),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: the loader hangs"),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the loader panicked"),
            }
        }
    }
}
