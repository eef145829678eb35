//! Sequence models: a window model (`[batch, K, F]` from the symbol's last K rows) and a
//! recurrent step model (h, c carried per symbol) exported from the same LSTM by
//! `scripts/export_lstm.py --fixtures`. Step equals window over every full window;
//! batching never changes an answer; state is per symbol, reset, and kept across a
//! reload only for the same model.
mod util;

use std::path::Path;

use tickinfer::engine::{Backend, Engine, EngineError, EngineOptions};
use tickinfer::manifest::Prediction;
use tickinfer::wire::MlRequest;
use util::{repo_root, stream_request, test_engine_options};

const STEP: &str = "tests/fixtures/models/lstm_step.toml";
const WINDOW: &str = "tests/fixtures/models/lstm_window.toml";
/// The fixture's window (`[sequence] window` in lstm_window.toml).
const K: usize = 6;

fn load(manifest: &str) -> Engine {
    let _ = env_logger::builder().is_test(true).try_init();
    Engine::load(&repo_root().join(manifest), &test_engine_options())
        .unwrap_or_else(|e| panic!("{manifest}: {e}"))
}

/// The step model on each backend, pinned (not `auto`'s timing): ONNX Runtime; native for
/// every run size; native for runs of up to 4 rows and ONNX Runtime above (the hand-over).
fn step_engines() -> Vec<(&'static str, Engine)> {
    let _ = env_logger::builder().is_test(true).try_init();
    [
        ("ort", Backend::Ort, None),
        ("native", Backend::Native, None),
        ("native up to 4", Backend::Native, Some(4)),
    ]
    .into_iter()
    .map(|(what, backend, native_max_run)| {
        let opts = EngineOptions { backend: Some(backend), native_max_run, ..test_engine_options() };
        (what, Engine::load(&repo_root().join(STEP), &opts).unwrap_or_else(|e| panic!("{what}: {e}")))
    })
    .collect()
}

/// Three symbols interleaved unevenly, so that batches hold some symbols twice.
fn stream(n: u64) -> Vec<MlRequest> {
    (0..n).map(|i| stream_request(i, [3, 3, 9, 3, 40, 9][(i % 6) as usize])).collect()
}

/// Output rows of `reqs` run one request at a time, in order.
fn one_by_one(engine: &mut Engine, state: &mut tickinfer::state::State, reqs: &[MlRequest]) -> Vec<Vec<f32>> {
    reqs.iter().map(|r| engine.run_rows(std::slice::from_ref(r), state).unwrap().to_vec()).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5)
}

#[test]
fn step_model_equals_window_model_over_every_full_window() {
    let (mut step, mut window) = (load(STEP), load(WINDOW));
    let reqs = stream(90);
    let mut wstate = window.new_state(4);
    let windowed = one_by_one(&mut window, &mut wstate, &reqs);
    let mut checked = 0;
    for (n, req) in reqs.iter().enumerate() {
        // The symbol's last K requests up to n: the rows the window model saw at n.
        let mine: Vec<MlRequest> =
            reqs[..=n].iter().filter(|r| r.symbol_id == req.symbol_id).copied().collect();
        if mine.len() < K {
            continue;
        }
        // The step model from zero state over exactly those K requests (the fixture's
        // features are stateless, so a fresh state computes the same rows).
        let mut sstate = step.new_state(1);
        let stepped = one_by_one(&mut step, &mut sstate, &mine[mine.len() - K..]);
        let last = stepped.last().unwrap();
        assert!(close(last, &windowed[n]), "event {n}: step {last:?} vs window {:?}", windowed[n]);
        checked += 1;
    }
    assert!(checked > 50, "only {checked} full windows compared");
}

#[test]
fn warming_until_the_window_or_warmup_is_full() {
    for (manifest, warm_after) in [(WINDOW, K - 1), (STEP, 5)] {
        let mut engine = load(manifest);
        let mut state = engine.new_state(2);
        let reqs: Vec<MlRequest> = (0..12).map(|i| stream_request(i, 7)).collect();
        let mut preds = vec![None::<Prediction>; reqs.len()];
        engine.predict(&reqs, &mut state, &mut preds).unwrap();
        let warming: Vec<bool> = preds.iter().map(|p| p.unwrap().warming).collect();
        let want: Vec<bool> = (0..12).map(|i| i < warm_after).collect();
        assert_eq!(warming, want, "{manifest}");
    }
}

#[test]
fn batching_never_changes_an_answer() {
    let mut engines = step_engines();
    engines.push(("window", load(WINDOW)));
    for (what, mut engine) in engines {
        // Three symbols unevenly (batches hold symbol 3 about 8 times: the recurrent model runs
        // them in parts), and 40 symbols round-robin (runs as long as max_batch).
        let many: Vec<MlRequest> = (0..400).map(|i| stream_request(i, (i % 40) as u16)).collect();
        for reqs in [stream(200), many] {
            let mut one = vec![None::<Prediction>; reqs.len()];
            let mut state = engine.new_state(64);
            for (r, p) in reqs.iter().zip(one.iter_mut()) {
                engine.predict(std::slice::from_ref(r), &mut state, std::slice::from_mut(p)).unwrap();
            }
            let mut rows_one = Vec::new();
            let mut state = engine.new_state(64);
            for r in &reqs {
                rows_one.extend_from_slice(engine.run_rows(std::slice::from_ref(r), &mut state).unwrap());
            }
            let mut batched = vec![None::<Prediction>; reqs.len()];
            let mut state = engine.new_state(64);
            engine.predict(&reqs, &mut state, &mut batched).unwrap();
            let mut rows_batched = Vec::new();
            let mut state = engine.new_state(64);
            for chunk in reqs.chunks(engine.max_batch()) {
                rows_batched.extend_from_slice(engine.run_rows(chunk, &mut state).unwrap());
            }
            assert!(
                close(&rows_one, &rows_batched),
                "{what}: raw outputs differ between batch 1 and max_batch"
            );
            assert!(one.iter().all(|p| p.is_some()));
            if what == "native up to 4" {
                // Batch 1 native, batches of 16 on ONNX Runtime: the same direction; a confidence
                // may round the other way where the two differ by float rounding.
                for (a, b) in one.iter().zip(&batched) {
                    let (a, b) = (a.unwrap(), b.unwrap());
                    assert_eq!((a.direction, a.warming), (b.direction, b.warming), "{what}");
                    assert!(a.confidence.abs_diff(b.confidence) <= 1, "{what}: {a:?} vs {b:?}");
                }
            } else {
                assert_eq!(one, batched, "{what}: answers differ between batch 1 and max_batch");
            }
        }
    }
}

#[test]
fn recurrent_state_is_per_symbol_and_reset_clears_it() {
    let mut engine = load(STEP);
    let reqs = stream(60);
    let mut state = engine.new_state(4);
    let mixed = one_by_one(&mut engine, &mut state, &reqs);
    // Each symbol alone, in a fresh table: the same rows as when interleaved.
    for symbol in [3u16, 9, 40] {
        let mut alone_state = engine.new_state(1);
        let idx: Vec<usize> = (0..reqs.len()).filter(|&i| reqs[i].symbol_id == symbol).collect();
        let alone: Vec<MlRequest> = idx.iter().map(|&i| reqs[i]).collect();
        let rows = one_by_one(&mut engine, &mut alone_state, &alone);
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(rows[k], mixed[i], "symbol {symbol} event {k}: another symbol leaked into its state");
        }
    }
    // After a reset of symbol 9 its next event answers as its first did; symbol 3 is untouched.
    let first9 = reqs.iter().position(|r| r.symbol_id == 9).unwrap();
    state.reset(Some(9));
    let again = one_by_one(&mut engine, &mut state, &reqs[first9..=first9]);
    assert_eq!(again[0], mixed[first9]);
    let next3 = MlRequest { timestamp_ns: u64::MAX / 2, ..reqs[0] };
    let mut fresh = engine.new_state(1);
    assert_ne!(
        one_by_one(&mut engine, &mut state, &[next3]),
        one_by_one(&mut engine, &mut fresh, &[next3]),
        "symbol 3 kept its state"
    );
}

#[test]
fn reload_keeps_state_only_for_the_same_sequence_model() {
    let (a, b, w) = (load(STEP), load(STEP), load(WINDOW));
    assert_eq!(a.state_spec(), b.state_spec(), "the same step model: state kept across a reload");
    assert_ne!(a.state_spec(), w.state_spec(), "another model: state starts empty");
    let stateless = load("models/lobster_direction.toml");
    assert!(stateless.state_spec().is_stateless());
    let spec = a.state_spec();
    assert_eq!(spec.sequence_floats, 16, "h and c, 8 each");
}

fn manifest_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = repo_root().join("tests/fixtures/models");
    let path = dir.path().join("m.toml");
    std::fs::write(&path, text.replace("@", &fixtures.display().to_string())).unwrap();
    match Engine::load(Path::new(&path), &test_engine_options()) {
        Ok(_) => panic!("loaded:\n{text}"),
        Err(EngineError::Manifest(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn mismatched_sequence_manifests_are_named() {
    let head = |onnx: &str| {
        format!(
            "[model]\nname = \"m\"\nversion = 1\nonnx = \"@/{onnx}\"\nprice_scale = 10000\n[input]\nname = \"x\"\n\
             features = [\"spread_bps\", \"size_imbalance\", \"microprice_offset_bps\", \"log_bid_size\", \
             \"log_ask_size\"]\n[output]\nkind = \"classes\"\nname = \"probabilities\"\nclasses = [\"sell\", \"flat\", \"buy\"]\n"
        )
    };
    let e = manifest_error(&head("lstm_step.onnx"));
    assert!(e.contains("3 inputs") && e.contains("h_in"), "{e}");
    let e = manifest_error(&head("lstm_window.onnx"));
    assert!(e.contains("kind = \\\"window\\\"") || e.contains("window model"), "{e}");
    let e = manifest_error(&(head("lstm_window.onnx") + "[sequence]\nkind = \"window\"\nwindow = 9\n"));
    assert!(e.contains("holds 6 steps") && e.contains("window is 9"), "{e}");
    let e = manifest_error(
        &(head("lstm_step.onnx")
            + "[sequence]\nkind = \"recurrent\"\nstate = [{ input = \"h_in\", output = \"c_out\" }, \
               { input = \"c_in\", output = \"nope\" }]\n"),
    );
    assert!(e.contains("`nope` is not a model output"), "{e}");
    let e = manifest_error(&(head("lstm_step.onnx") + "[sequence]\nkind = \"recurrent\"\nstate = []\n"));
    assert!(e.contains("at least one state"), "{e}");
    let e = manifest_error(&(head("lstm_window.onnx") + "[sequence]\nkind = \"window\"\nwindow = 0\n"));
    assert!(e.contains("window 0 must be in"), "{e}");
}

/// Through the server: the same pipelined stream answered one request per run (inline)
/// and up to 32 per run (pipeline mode: the state lives on the worker), for both models.
#[test]
fn the_server_answers_the_same_at_batch_1_and_32() {
    // The step model on each backend pinned (`auto` would pick by timing); the window model
    // has no native evaluator.
    for (manifest, backend) in [(STEP, "ort"), (STEP, "native"), (WINDOW, "auto")] {
        let (m, reqs) = (repo_root().join(manifest), stream(2000));
        let answers = |max_batch: &str, mode: &str| {
            util::server::pipelined_answers_with(&m, &["--backend", backend], max_batch, mode, &reqs)
        };
        let (one, batched) = (answers("1", "inline"), answers("32", "pipeline"));
        assert!(one.iter().all(|a| a.3 == 0), "{manifest}: every request answered OK");
        assert_eq!(
            one.iter().filter(|a| a.4 & tickinfer::wire::RESPONSE_WARMING != 0).count(),
            3 * 5,
            "{manifest}: 5 warming answers per symbol"
        );
        assert_eq!(one, batched, "{manifest} on {backend}: batch 1 and batch 32 answers differ");
    }
}
