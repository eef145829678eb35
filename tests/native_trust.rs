//! Trust in the native backend: it gives exactly the model's answer, proven at load and
//! watched while serving.
//!
//! - Models nobody here trained, written as exporters write them
//!   (`scripts/make_trust_fixtures.py`), served on ONNX Runtime and natively over 600
//!   requests each with the values real feeds produce (exact zeros of both signs, values
//!   on and beside every threshold, large raw magnitudes, NaN): the same signal for
//!   every request, and for tree ensembles the same output bits.
//! - What ONNX Runtime computes but the evaluator does not model is refused (a tree listed
//!   root last, a `Clip` on an LSTM's state output).
//! - The gate bites: an evaluator made wrong on purpose (`TICKINFER_TEST_NATIVE_FAULT=gate`)
//!   is refused at load by `native` (naming the row) and passed over by `auto`; one that
//!   turns wrong after the gate (`=serving`) is caught by the live verifier, counted, and
//!   replaced by ONNX Runtime between two requests — or only counted with
//!   `--on-disagreement log`.
//! - Every model the project ships or tests reports full coverage and agreement.
mod util;

use std::process::Command;

use tickinfer::engine::{Backend, Engine, EngineOptions};
use tickinfer::manifest::Prediction;
use tickinfer::wire::{MlRequest, Status, MAX_FEATURES};
use util::server::{request, Client, Server};
use util::{repo_root, test_engine_options, Rng};

/// The user-style models whose native answers must equal ONNX Runtime's.
const SERVED: [&str; 8] = [
    "trust_binary",
    "trust_binary_logistic",
    "trust_lt_regressor",
    "trust_gte_classifier",
    "trust_gemm_softmax",
    "trust_nan_threshold",
    "trust_softmax_zero",
    "trust_first_weight",
];

fn fixture(name: &str) -> String {
    format!("tests/fixtures/models/{name}.toml")
}

fn load(manifest: &str, backend: Backend) -> Result<Engine, String> {
    let _ = env_logger::builder().is_test(true).try_init();
    let opts = EngineOptions { backend: Some(backend), ..test_engine_options() };
    Engine::load(&repo_root().join(manifest), &opts).map_err(|e| e.to_string())
}

/// Values a real feed puts on a split: exact zeros (a quiet book's order flow, an unchanged
/// mid's return), the fixtures' thresholds and the values beside them, large raw
/// magnitudes, NaN.
fn feed_value(rng: &mut Rng) -> f32 {
    const ON: [f32; 12] = [0.0, -0.0, 100.0, -2.5, 1.5, 250.0, 1.0, 0.5, -0.5, 3.0, -1.0, 2.0];
    match rng.range(0, 10) {
        0..=2 => 0.0,
        3 => -0.0,
        4..=5 => ON[rng.range(0, ON.len() as u64) as usize],
        6 => {
            let t = ON[rng.range(0, ON.len() as u64) as usize];
            // The float just above or below (t is never 0 or ±∞ here but for 0.0: skipped).
            let bits = t.to_bits();
            if t == 0.0 {
                f32::MIN_POSITIVE
            } else if (rng.range(0, 2) == 0) == (t > 0.0) {
                f32::from_bits(bits + 1)
            } else {
                f32::from_bits(bits - 1)
            }
        }
        7 => [1e4f32, -1e4, 2.5e5, -3e6, 150.0, -150.0][rng.range(0, 6) as usize],
        8 if rng.range(0, 8) == 0 => f32::NAN,
        _ => (rng.range(0, 2000) as f32 - 1000.0) / 7.0,
    }
}

fn requests(n: usize, extras: u16, seed: u64) -> Vec<MlRequest> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let mut features = [0f32; MAX_FEATURES];
            for f in features.iter_mut().take(extras as usize) {
                *f = feed_value(&mut rng);
            }
            MlRequest {
                request_id: i as u64,
                symbol_id: (i % 3) as u16,
                bid_price: 1_000_000,
                ask_price: 1_000_100,
                bid_size: 100,
                ask_size: 120,
                n_features: extras,
                features,
                ..MlRequest::new()
            }
        })
        .collect()
}

/// The native backend answers every request as ONNX Runtime does: the same direction,
/// confidence and target price, and (tree ensembles, bit-exact by construction) the same
/// output bits; served one request per run and in batches.
#[test]
fn user_models_get_onnx_runtimes_answer_on_real_world_values() {
    for name in SERVED {
        let manifest = fixture(name);
        let mut ort = load(&manifest, Backend::Ort).unwrap();
        let mut native = load(&manifest, Backend::Native).unwrap();
        assert!(native.info().backend.starts_with("native"), "{name}: {}", native.info().backend);
        let trees = native.info().backend.contains("TreeEnsemble");
        let reqs = requests(600, ort.info().extra_features, 25 + name.len() as u64);
        let mut want = vec![None::<Prediction>; reqs.len()];
        ort.predict(&reqs, &mut ort.new_state(4), &mut want).unwrap();
        for chunk in [1, native.max_batch()] {
            let mut got = vec![None::<Prediction>; reqs.len()];
            let mut state = native.new_state(4);
            for (r, p) in reqs.chunks(chunk).zip(got.chunks_mut(chunk)) {
                native.predict(r, &mut state, p).unwrap();
            }
            let differ: Vec<usize> = (0..reqs.len()).filter(|&i| got[i] != want[i]).collect();
            assert!(
                differ.is_empty(),
                "{name} chunk {chunk}: {} of 600 answers differ from ONNX Runtime's; first: request {} {:?}: native \
                 {:?}, ort {:?}",
                differ.len(),
                differ[0],
                { reqs[differ[0]].features }[..ort.info().extra_features as usize].to_vec(),
                got[differ[0]],
                want[differ[0]]
            );
        }
        if trees {
            let (mut s1, mut s2) = (ort.new_state(4), native.new_state(4));
            for r in reqs.chunks(1) {
                let a: Vec<u32> = ort.run_rows(r, &mut s1).unwrap().iter().map(|v| v.to_bits()).collect();
                let b: Vec<u32> = native.run_rows(r, &mut s2).unwrap().iter().map(|v| v.to_bits()).collect();
                assert_eq!(
                    a,
                    b,
                    "{name}: request {} {:?}",
                    { r[0].request_id },
                    { r[0].features }[..4].to_vec()
                );
            }
        }
    }
}

/// What the evaluator would silently compute differently is refused: `native` fails the
/// load naming why, `auto` serves ONNX Runtime saying why.
#[test]
fn graphs_that_onnx_runtime_reads_differently_are_refused() {
    for (name, why) in [("trust_root_last", "not listed root first"), ("trust_lstm_clip", "`Clip` node")] {
        let manifest = fixture(name);
        let e = load(&manifest, Backend::Native).err().expect("native must refuse it");
        assert!(e.contains(why), "{name}: {e}");
        let auto = load(&manifest, Backend::Auto).unwrap();
        assert_eq!(auto.info().backend, "ort", "{name}");
        assert!(auto.info().backend_report.contains(why), "{name}: {}", auto.info().backend_report);
    }
}

/// The gate's report on every model the project ships, benchmarks or tests, natively run:
/// all rows agree, and a tree ensemble's rows reach every reachable leaf and take every
/// two-sided branch both ways.
#[test]
fn every_shipped_model_is_covered_and_agrees() {
    let mut manifests = Vec::new();
    for dir in ["models", "benches/models", "tests/fixtures/models"] {
        for entry in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                manifests.push(path);
            }
        }
    }
    manifests.sort();
    let mut checked = 0;
    for path in manifests {
        let rel = path.strip_prefix(repo_root()).unwrap().to_string_lossy().to_string();
        let engine = match load(&rel, Backend::Auto) {
            Ok(e) => e,
            Err(e) => panic!("{rel}: {e}"),
        };
        let report = &engine.info().backend_report;
        if !report.contains("gate:") {
            // No native evaluator for this graph (windows, graphs it does not run): said why.
            assert!(
                report.starts_with("ort: no native evaluator") || report.starts_with("ort: chosen"),
                "{rel}: {report}"
            );
            continue;
        }
        if rel.contains("trust_root_last") || rel.contains("trust_lstm_clip") {
            panic!("{rel} reached the gate: {report}");
        }
        assert!(report.contains("agrees on every row"), "{rel}: {report}");
        assert!(!report.contains("DISAGREES") && !report.contains("did not cover"), "{rel}: {report}");
        if report.contains("TreeEnsemble") {
            let cov = report.split("; ").find(|p| p.starts_with("branch nodes")).expect("coverage");
            let nums: Vec<(usize, usize)> = cov
                .split(['(', ','])
                .filter_map(|p| {
                    let p = p.split_whitespace().last()?;
                    let (a, b) = p.split_once('/')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            assert_eq!(nums.len(), 2, "{rel}: {cov}");
            assert!(nums.iter().all(|(a, b)| a == b && *b > 0), "{rel}: not full coverage: {cov}");
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} models reached the gate");
}

/// `tickinfer serve` with `TICKINFER_TEST_NATIVE_FAULT` set and the given flags; its exit
/// status and log when it does not start.
fn serve_faulty(fault: &str, args: &[&str]) -> Result<Server, String> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tickinfer.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickinfer"));
    cmd.env("TICKINFER_TEST_NATIVE_FAULT", fault);
    let mut server = Server::spawn_with(dir, socket, args, cmd);
    server.wait_ready_or_exit().map(|_| server)
}

/// A wrong evaluator never serves: `native` fails the load naming the first disagreeing
/// row; `auto` serves ONNX Runtime and says why.
#[test]
fn the_gate_refuses_a_wrong_evaluator() {
    for model in ["tests/fixtures/models/trust_binary.toml", "tests/fixtures/models/mlp_direction.toml"] {
        let model = repo_root().join(model);
        let model = model.to_str().unwrap();
        let err = serve_faulty("gate", &["--model", model, "--backend", "native"]).err().expect("refused");
        assert!(err.contains("DISAGREES: row") && err.contains("made wrong on purpose"), "{err}");
        let server = serve_faulty("gate", &["--model", model, "--backend", "auto"]).unwrap();
        let log = server.log();
        assert!(log.contains("backend: ort: the native") && log.contains("DISAGREES"), "{log}");
        let stats = server.stats_json();
        assert_eq!(stats["model"]["backend"], "ort", "{stats}");
    }
}

/// Requests for `trust_binary`: feature 0 above its split (150), feature 1 below (-3): no
/// reached leaf weighs class 1, so ONNX Runtime answers [-1.15, 1.15], "buy".
fn buy_requests(n: u64) -> Vec<MlRequest> {
    (0..n)
        .map(|i| {
            let mut r = request(i);
            r.n_features = 2;
            let mut features = r.features;
            features[0] = 150.0;
            features[1] = -3.0;
            r.features = features;
            r
        })
        .collect()
}

/// A defect the gate cannot see — the evaluator turns wrong once serving — is caught by
/// the live verifier: counted, logged with its row, and ONNX Runtime answers from the
/// next run on; every request is still answered, in order.
#[test]
fn the_live_verifier_catches_a_wrong_evaluator_and_falls_back() {
    let model = repo_root().join("tests/fixtures/models/trust_binary.toml");
    let model = model.to_str().unwrap();
    let args = ["--model", model, "--backend", "native", "--verify-every", "1", "--metrics", "127.0.0.1:0"];
    let server = serve_faulty("serving", &args).unwrap();
    assert!(server.stats_json()["model"]["backend"].as_str().unwrap().starts_with("native"));
    let mut client = Client::connect(&server.socket).unwrap();
    let mut directions = Vec::new();
    // Until the verifier has switched: one request at a time, so that the switch lands between two.
    for r in buy_requests(400) {
        let resp = client.roundtrip(&r).unwrap();
        assert_eq!(({ resp.request_id }, resp.status), (r.request_id, Status::Ok.code()));
        directions.push(resp.direction);
        if directions.len() > 20 && directions[directions.len() - 5..].iter().all(|&d| d == 1) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(directions[0], -1, "the faulty evaluator served the first answers (sell where ORT says buy)");
    assert!(directions.ends_with(&[1, 1, 1, 1, 1]), "ONNX Runtime answers after the switch: {directions:?}");
    let stats = server.stats_json();
    let v = &stats["verify"];
    assert!(v["disagreed"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(v["fallbacks"], 1, "{stats}");
    let backend = stats["model"]["backend"].as_str().unwrap();
    assert!(backend.starts_with("ort (fell back"), "{backend}");
    assert!(
        server.log().contains("verifier: the native backend disagrees with ONNX Runtime"),
        "{}",
        server.log()
    );
    let metrics = server.metrics_text();
    assert!(metrics.contains("tickinfer_backend_disagreements_total"), "{metrics}");
}

/// `--on-disagreement log`: counted and logged, the native evaluator keeps serving.
#[test]
fn on_disagreement_log_only_counts() {
    let model = repo_root().join("tests/fixtures/models/trust_binary.toml");
    let model = model.to_str().unwrap();
    let args = ["--model", model, "--backend", "native", "--verify-every", "1", "--on-disagreement", "log"];
    let server = serve_faulty("serving", &args).unwrap();
    let mut client = Client::connect(&server.socket).unwrap();
    for r in buy_requests(50) {
        client.roundtrip(&r).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stats = loop {
        let stats = server.stats_json();
        if stats["verify"]["checked"].as_u64().unwrap() >= 50 || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(stats["verify"]["checked"], stats["verify"]["disagreed"], "{stats}");
    assert!(stats["verify"]["disagreed"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["verify"]["fallbacks"], 0, "{stats}");
    assert!(stats["model"]["backend"].as_str().unwrap().starts_with("native"), "{stats}");
}

/// A correct evaluator under verification of every answer: all checked, none disagree.
/// The client waits for the verifier every 16 answers (its queue holds 64): on a loaded
/// machine the verifier falls behind and drops samples by design, which would leave too few
/// checked to show anything.
#[test]
fn a_correct_evaluator_passes_verification_of_every_answer() {
    let model = repo_root().join("tests/fixtures/models/trust_lt_regressor.toml");
    let model = model.to_str().unwrap();
    let server = Server::start(&["--model", model, "--backend", "native", "--verify-every", "1"]);
    let mut client = Client::connect(&server.socket).unwrap();
    let mut rng = Rng(7);
    let mut answered_ok = 0u64;
    let mut stats = serde_json::Value::Null; // the last wait's report (i = 299 always waits)
    for i in 0..300 {
        let mut r = request(i);
        r.n_features = 3;
        let mut features = r.features;
        for f in features.iter_mut().take(3) {
            *f = feed_value(&mut rng);
        }
        r.features = features;
        let resp = client.roundtrip(&r).unwrap();
        answered_ok += u64::from({ resp.status } == 0);
        if i % 16 == 15 || i == 299 {
            stats = server.stats_when(|s| {
                let v = &s["verify"];
                v["checked"].as_u64().unwrap() + v["dropped"].as_u64().unwrap() >= answered_ok
            });
        }
    }
    let v = &stats["verify"];
    assert!(answered_ok >= 250, "most generated rows are finite: {stats}");
    assert_eq!(v["checked"].as_u64().unwrap(), answered_ok, "every answer checked: {stats}");
    assert_eq!(v["dropped"], 0, "{stats}");
    assert_eq!(v["disagreed"], 0, "{stats}");
    assert!(stats["model"]["backend"].as_str().unwrap().starts_with("native"), "{stats}");
}
