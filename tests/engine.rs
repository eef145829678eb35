//! Engine: parity with Python onnxruntime for three models of different shapes,
//! manifest/model mismatches rejected by name, batching equals one-by-one.
//! ONNX Runtime is provisioned automatically on first use (see engine::runtime).
mod util;

use tickinfer::engine::{Engine, EngineError};
use tickinfer::features::FeatureMap;
use tickinfer::manifest::{Manifest, Prediction};
use tickinfer::wire::MlRequest;
use util::{parity_cases, repo_root, test_engine_options};

const MODELS: [(&str, &str); 3] = [
    ("lobster_direction", "models/lobster_direction.toml"),
    ("lgbm_direction", "tests/fixtures/models/lgbm_direction.toml"),
    ("ridge_return", "tests/fixtures/models/ridge_return.toml"),
];

fn load(manifest: &str) -> Engine {
    let _ = env_logger::builder().is_test(true).try_init();
    Engine::load(&repo_root().join(manifest), &test_engine_options())
        .unwrap_or_else(|e| panic!("{manifest}: {e}"))
}

#[test]
fn features_match_python_bit_for_bit() {
    for (name, manifest) in MODELS {
        let m = Manifest::load(&repo_root().join(manifest)).unwrap();
        let map: &FeatureMap = &m.features;
        for (i, case) in parity_cases(name).iter().enumerate() {
            let mut row = vec![0f32; map.len()];
            map.fill(&case.request, &mut row);
            for (j, (got, want)) in row.iter().zip(&case.input).enumerate() {
                // Same f64 arithmetic as numpy; allow 1 ulp for libm's log1p.
                let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                assert!(ulps <= 1, "{name} case {i} feature {j}: {got} vs python {want}");
            }
        }
    }
}

#[test]
fn outputs_match_python_onnxruntime() {
    for (name, manifest) in MODELS {
        let mut engine = load(manifest);
        let cases = parity_cases(name);
        assert!(cases.len() >= 32, "{name}: fixture too small");
        let width = engine.manifest().output.width();
        // One at a time (batch 1) and in batches: both must equal Python's numbers.
        for chunk in [1, 7, 16] {
            for (k, group) in cases.chunks(chunk).enumerate() {
                let reqs: Vec<_> = group.iter().map(|c| c.request).collect();
                let rows = engine.run_rows(&reqs, &mut engine.new_state(1)).unwrap().to_vec();
                for (i, case) in group.iter().enumerate() {
                    for (j, want) in case.output.iter().enumerate() {
                        let got = rows[i * width + j];
                        assert!(
                            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "{name} batch {chunk} case {}: output[{j}] {got} vs python {want}",
                            k * chunk + i
                        );
                    }
                }
            }
        }
        let reqs: Vec<_> = cases.iter().map(|c| c.request).collect();
        let mut preds = vec![None::<Prediction>; reqs.len()];
        engine.predict(&reqs, &mut engine.new_state(16), &mut preds).unwrap();
        for (i, (p, c)) in preds.iter().zip(&cases).enumerate() {
            let p = p.unwrap_or_else(|| panic!("{name} case {i}: non-finite output"));
            assert_eq!(
                (p.direction, p.confidence, p.target_price),
                (c.direction, c.confidence, c.target_price),
                "{name} case {i}: decoded signal differs from the Python decoder"
            );
        }
        let info = engine.info();
        assert_eq!(info.provider, "cpu");
        assert_eq!(info.max_batch, 16);
    }
}

fn write_variant(dir: &std::path::Path, from: &str, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let src = repo_root().join(from);
    let text = std::fs::read_to_string(&src).unwrap();
    let onnx_dir = src.parent().unwrap().display().to_string();
    // Point the copy at the original .onnx by absolute path.
    let text = text.replace("onnx = \"", &format!("onnx = \"{onnx_dir}/"));
    let path = dir.join("variant.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn mismatched_manifest_is_rejected_naming_each_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let opts = test_engine_options();
    type Case = (&'static str, fn(String) -> String, &'static [&'static str]);
    let cases: [Case; 4] = [
        (
            "wrong input name",
            |t| t.replace("name = \"x\"", "name = \"features\""),
            &["input `features` named in the manifest is not a model input", "x: float32[?, 6]"],
        ),
        (
            "one feature too few",
            |t| t.replace(", \"extra:1\"]", "]"),
            &["input `x` takes 6 features; the manifest lists 5"],
        ),
        (
            "regression manifest on a classifier",
            |t| {
                t.replace(
                    "kind = \"classes\"",
                    "kind = \"regression\"\ntarget = \"mid_change\"\nflat_threshold = 0.0\nfull_confidence = 1.0",
                )
                .replace("classes = [\"sell\", \"flat\", \"buy\"]\n", "")
            },
            &["output `probabilities` has shape [-1, 3]; the manifest's regression needs [batch, 1]"],
        ),
        (
            "missing output",
            |t| t.replace("name = \"probabilities\"", "name = \"probs\""),
            &["output `probs` named in the manifest is not a model output", "probabilities: float32[?, 3]"],
        ),
    ];
    for (what, edit, needles) in cases {
        let path = write_variant(dir.path(), "tests/fixtures/models/lgbm_direction.toml", edit);
        let err = match Engine::load(&path, &opts) {
            Err(e @ EngineError::Manifest(_)) => e.to_string(),
            Err(e) => panic!("{what}: wrong error kind: {e}"),
            Ok(_) => panic!("{what}: a mismatched manifest was accepted"),
        };
        for needle in needles {
            assert!(err.contains(needle), "{what}: `{needle}` not in:\n{err}");
        }
    }
    // A manifest naming a model file that does not exist.
    let path = dir.path().join("nofile.toml");
    let text = std::fs::read_to_string(repo_root().join("models/lobster_direction.toml")).unwrap();
    std::fs::write(&path, text.replace("lobster_direction.onnx", "missing.onnx")).unwrap();
    let err = Engine::load(&path, &opts).err().unwrap().to_string();
    assert!(err.contains("missing.onnx") && err.contains("does not exist"), "{err}");
}

#[test]
fn model_failure_is_an_error_not_a_panic() {
    let mut engine = load("models/lobster_direction.toml");
    let err = engine.run_rows(&[], &mut engine.new_state(1)).unwrap_err().to_string();
    assert!(err.contains("batch of 0"), "{err}");
    let too_many = vec![tickinfer::wire::MlRequest::new(); engine.max_batch() + 1];
    assert!(engine.run_rows(&too_many, &mut engine.new_state(1)).is_err());
}

mod hostile_values {
    use super::*;
    use proptest::prelude::*;
    use tickinfer::wire::{validate, Limits, MlRequest, Status, MAX_FEATURES};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Any request that passes validation — extreme prices and sizes included — is
        /// scored without a panic, for a classifier and a regressor.
        #[test]
        fn any_valid_request_is_scored(
            bid in 1i64..i64::MAX, spread in 1i64..i64::MAX, bsz in 0i64..i64::MAX, asz in 0i64..i64::MAX,
            imb in -1_000_000i64..=1_000_000, x in any::<f32>().prop_filter("finite", |v| v.is_finite()),
        ) {
            thread_local! {
                static ENGINES: std::cell::RefCell<Vec<Engine>> = std::cell::RefCell::new(
                    ["models/lobster_direction.toml", "tests/fixtures/models/ridge_return.toml"]
                        .iter().map(|m| load(m)).collect());
            }
            let mut features = [0f32; MAX_FEATURES];
            features[0] = x;
            let req = MlRequest {
                bid_price: bid, ask_price: bid.saturating_add(spread), bid_size: bsz, ask_size: asz,
                book_imbalance: imb, n_features: 1, features, ..MlRequest::new()
            };
            prop_assume!(validate(&req, &Limits::default()) == Status::Ok);
            ENGINES.with(|e| {
                for engine in e.borrow_mut().iter_mut() {
                    let n = engine.info().extra_features;
                    let r = MlRequest { n_features: n, ..req };
                    let mut p = [None::<Prediction>];
                    engine.predict(&[r], &mut engine.new_state(1), &mut p).unwrap();
                    // A non-finite output (or a target price beyond i64) is `None`: answered
                    // ML_ERR_MODEL_FAILURE by the server. Anything else is in range.
                    if let Some(p) = p[0] {
                        assert!((-1..=1).contains(&p.direction) && p.confidence <= 100);
                    }
                }
            });
        }
    }
}

/// Stateful features: the server's state and feature code against the Python twin
/// (`scripts/tickfeatures.py`), bit for bit, over the first 3000 events of the bundled
/// synthetic LOBSTER sample, read by each side's own LOBSTER reader.
#[test]
fn stateful_features_match_the_python_twin_bit_for_bit() {
    twin_fixture_parity("stateful_features.json", "stateful_linear.toml", "SYNTH_2026-01-05_sample.zip");
}

/// Book depth (levels 1..5 through `bid_px(k)`, `ask_sz(k)`, `depth_imbalance(k)`), mixed
/// with stateful features: the same parity over the bundled 5-level synthetic sample, so
/// each side's level-N LOBSTER reader and depth arithmetic are held to the same bits.
#[test]
fn depth_features_match_the_python_twin_bit_for_bit() {
    twin_fixture_parity("depth_features.json", "depth_linear.toml", "SYNTH_2026-01-05_sample_5.zip");
}

/// Replays `sample` (under data/sample) through the state and feature map of the fixture
/// model `manifest` and compares every row with the twin's bits in the parity `fixture`.
fn twin_fixture_parity(fixture: &str, manifest: &str, sample: &str) {
    use tickinfer::replay::source::{self, Format, SymbolTable};
    let root = util::repo_root();
    let text = std::fs::read_to_string(root.join("tests/fixtures/parity").join(fixture)).unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let manifest = Manifest::load(&root.join("tests/fixtures/models").join(manifest)).unwrap();
    let names: Vec<String> =
        fx["features"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(manifest.feature_names, names, "fixture and manifest list the same features");
    let stream = source::load(
        &root.join("data/sample").join(sample),
        Format::Lobster,
        &mut SymbolTable::new(&[]).unwrap(),
    )
    .unwrap();
    let rows = fx["rows"].as_array().unwrap();
    let mut state = tickinfer::state::State::new(manifest.features.state_spec().clone(), 4);
    let mut row = vec![0f32; names.len()];
    for (i, ((ev, want), fx_req)) in
        stream.events.iter().zip(rows).zip(fx["requests"].as_array().unwrap()).enumerate()
    {
        let r = &ev.req;
        let got_req =
            [r.timestamp_ns as i64, r.bid_price, r.ask_price, r.bid_size, r.ask_size, r.book_imbalance];
        let want_req: Vec<i64> = fx_req.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(got_req.to_vec(), want_req, "event {i}: the two LOBSTER readers disagree");
        assert!(state.admit(r.symbol_id));
        let view = state.update(r, manifest.features.scales());
        assert_eq!(view.warming, fx["warming"][i].as_bool().unwrap(), "event {i}: warming");
        manifest.features.fill_with(r, Some(&view), &mut row);
        let want: Vec<u32> = want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
        if got != want {
            let diff: Vec<String> = names
                .iter()
                .zip(got.iter().zip(&want))
                .filter(|(_, (g, w))| g != w)
                .map(|(n, (g, w))| format!("{n}: {} vs twin {}", f32::from_bits(*g), f32::from_bits(*w)))
                .collect();
            panic!("event {i}: rows differ: {}", diff.join("; "));
        }
    }
    assert_eq!(rows.len(), 3000);
}

/// Batching never changes an answer: the same stream of 4 symbols scored one request
/// per run and 32 per run gives the same signals and warming flags.
#[test]
fn stateful_answers_are_the_same_at_batch_1_and_32() {
    let path = util::repo_root().join("tests/fixtures/models/stateful_linear.toml");
    let opts = tickinfer::engine::EngineOptions { max_batch: 32, warmup_runs: 2, ..Default::default() };
    let mut engine = Engine::load(&path, &opts).unwrap();
    let reqs: Vec<MlRequest> = (0..2000u64).map(|i| util::stream_request(i, (i % 4) as u16)).collect();
    let mut one = vec![None::<Prediction>; reqs.len()];
    let mut state = engine.new_state(8);
    for (r, p) in reqs.iter().zip(one.iter_mut()) {
        engine.predict(std::slice::from_ref(r), &mut state, std::slice::from_mut(p)).unwrap();
    }
    let mut batched = vec![None::<Prediction>; reqs.len()];
    let mut state = engine.new_state(8);
    engine.predict(&reqs, &mut state, &mut batched).unwrap();
    assert_eq!(one, batched, "batch 1 and batch 32 answers differ");
    let warming = one.iter().filter(|p| p.unwrap().warming).count();
    // history 20 (realized_vol_bps(20)): each symbol's first 20 events are warming.
    assert_eq!(warming, 4 * 20);
    // A symbol beyond the table is an error for direct engine use (the server answers a status).
    let mut small = engine.new_state(1);
    let e = engine.predict(&reqs[..2], &mut small, &mut one[..2]).unwrap_err().to_string();
    assert!(e.contains("--max-symbols"), "{e}");
}

/// The same parity over the real LOBSTER AMZN day (57 515 events), the twin run live
/// (`python3 scripts/tickfeatures.py`, standard library only). Skips, saying so, without
/// `../shared/data` or `python3`.
#[test]
fn stateful_features_match_the_twin_over_the_real_lobster_day_when_present() {
    let manifest = Manifest::load(&repo_root().join("tests/fixtures/models/stateful_linear.toml")).unwrap();
    live_twin_parity("LOBSTER_SampleFile_AMZN_2012-06-21_1.zip", &manifest.feature_names, 1);
}

/// Depth parity over the real 5-level AMZN day (155 935 events: LOBSTER's level-5 file),
/// the twin run live. Skips, saying so, without `../shared/data` or `python3`.
#[test]
fn depth_features_match_the_twin_over_the_real_5_level_lobster_day_when_present() {
    let manifest = Manifest::load(&repo_root().join("tests/fixtures/models/depth_linear.toml")).unwrap();
    live_twin_parity("LOBSTER_SampleFile_AMZN_2012-06-21_5.zip", &manifest.feature_names, 1);
}

/// The stateful and depth features with sizes fixed point at size_scale 1000 (every level's
/// size × 1000 on the wire, × 1/1000 in the features), Rust against the twin, bit for bit,
/// over the real 5-level day. Skips, saying so, without `../shared/data` or `python3`.
#[test]
fn features_at_a_size_scale_match_the_twin_over_the_real_5_level_lobster_day_when_present() {
    let mut names: Vec<String> = Vec::new();
    for fixture in ["stateful_linear", "depth_linear"] {
        let path = repo_root().join(format!("tests/fixtures/models/{fixture}.toml"));
        for name in Manifest::load(&path).unwrap().feature_names {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    live_twin_parity("LOBSTER_SampleFile_AMZN_2012-06-21_5.zip", &names, 1000);
}

/// Every event of `../shared/data/lobster/<file>`: the Rust reader + state + features
/// (unnormalised) against the live twin's rows, bit for bit, sizes at `size_scale`.
fn live_twin_parity(file: &str, names: &[String], size_scale: i64) {
    use tickinfer::replay::source::{self, Format, LoadOptions, SymbolTable};
    let what = format!("feature parity over the real LOBSTER file {file} at size_scale {size_scale}");
    let data = repo_root().join("../shared/data/lobster").join(file);
    if !data.exists() {
        util::skip(&what, "../shared/data/lobster is not present");
        return;
    }
    let out = match std::process::Command::new("python3")
        .arg(repo_root().join("scripts/tickfeatures.py"))
        .arg(&data)
        .args(["10000", "1000000000", "--size-scale", &size_scale.to_string()])
        .args(names)
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => panic!("the twin failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            util::skip(&what, &format!("cannot run python3: {e}"));
            return;
        }
    };
    let twin: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let opts = LoadOptions { size_scale, ..Default::default() };
    let stream =
        source::load_with(&data, Format::Lobster, &mut SymbolTable::new(&[]).unwrap(), &opts).unwrap();
    let rows = twin["rows"].as_array().unwrap();
    assert_eq!(rows.len(), stream.events.len(), "both readers see the same events");
    // Unnormalised rows (the twin was run without mean/std): a map without them.
    let raw = FeatureMap::new(names, None, None, 10_000).unwrap().with_size_scale(size_scale).unwrap();
    let mut state = tickinfer::state::State::new(raw.state_spec().clone(), 1);
    let mut row = vec![0f32; names.len()];
    for (i, (ev, want)) in stream.events.iter().zip(rows).enumerate() {
        assert!(state.admit(ev.req.symbol_id));
        let view = state.update(&ev.req, raw.scales());
        raw.fill_with(&ev.req, Some(&view), &mut row);
        let want: Vec<u32> = want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "event {i}: rows differ ({names:?})");
    }
    eprintln!("{what}: {} events x {} features, bit for bit", rows.len(), names.len());
}
