//! `serve --keep-warm-us`: warm-ups run while idle and never change an answer — not
//! the stateful features, not a window or recurrent model's memory, in either mode —
//! and they are counted. (What they buy in latency is measured by
//! `tests/replay_open_loop.rs` and quoted in docs/serving.md, not asserted here.)
mod util;

use std::path::Path;
use std::time::Duration;

use util::repo_root;
use util::server::{Client, Server};

/// `(direction, confidence, target, status, flags)` of each answer.
type Answer = (i8, u8, i64, u16, u16);

/// The same stream of requests for symbols 0..3 (0 is the symbol a keep-warm run's
/// made-up request carries), in bursts of 8 with 2 ms of idle between them: answers, in
/// order, and the server's keep-warm counts: model runs, socket round trips.
fn answers(model: &Path, backend: &str, mode: &str, keep_warm: bool) -> (Vec<Answer>, (u64, u64)) {
    // Adaptive: spins 20 ms after each burst (warm-ups run then), blocks once the test is done.
    let mut args = vec!["--model", model.to_str().unwrap(), "--mode", mode, "--poll", "adaptive"];
    args.extend(["--backend", backend]);
    args.extend(["--spin-us", "20000", "--stats-interval-s", "0"]);
    if keep_warm {
        args.extend(["--keep-warm-us", "1"]);
    }
    let server = Server::start(&args);
    if keep_warm {
        assert!(server.log().contains("keep-warm: after 1µs idle"), "{}", server.log());
    }
    let mut c = Client::connect(&server.socket).unwrap();
    let mut out = Vec::new();
    for burst in 0..24u64 {
        for k in 0..8u64 {
            let i = burst * 8 + k;
            let req = util::stream_request(i, (i % 3) as u16);
            c.send(&[req]).unwrap();
            let r = c.recv().unwrap();
            assert_eq!({ r.request_id }, { req.request_id });
            out.push((r.direction, r.confidence, r.target_price, r.status, r.flags));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let n = out.len() as u64;
    // The answers are counted by the I/O thread, the warm-ups (pipeline mode) by the worker:
    // each publishes on its own 200 ms clock, so wait for both (a server that never warms up
    // still fails, when the wait gives up).
    let stats = server.stats_when(|s| {
        s["responses"].as_u64() == Some(n) && (!keep_warm || s["keep_warm_runs"].as_u64() > Some(0))
    });
    (out, (stats["keep_warm_runs"].as_u64().unwrap(), stats["keep_warm_socket_trips"].as_u64().unwrap()))
}

#[test]
fn warm_ups_never_change_an_answer() {
    // Each backend pinned (`auto` would pick by timing); the window model has no native evaluator.
    let models = [
        ("stateful features", "tests/fixtures/models/stateful_linear.toml", "native"),
        ("stateful features", "tests/fixtures/models/stateful_linear.toml", "ort"),
        ("recurrent step", "models/lobster_lstm_step.toml", "native"),
        ("recurrent step", "models/lobster_lstm_step.toml", "ort"),
        ("window", "models/lobster_lstm_window.toml", "auto"),
    ];
    for (what, model, backend) in models {
        let model = repo_root().join(model);
        for mode in ["inline", "pipeline"] {
            let (cold, none) = answers(&model, backend, mode, false);
            let (warm, (runs, trips)) = answers(&model, backend, mode, true);
            assert_eq!(none, (0, 0), "{what} on {backend}, {mode}: no keep-warm runs unless asked");
            // Counted by the thread that did them: the model runs (the worker's, in pipeline
            // mode) apart from the socket round trips (the I/O thread's).
            assert!(
                runs > 0,
                "{what} on {backend}, {mode}: 2 ms idle gaps with --keep-warm-us 1 ran no model warm-up"
            );
            assert!(trips > 0, "{what} on {backend}, {mode}: no socket warm-up");
            assert!(cold.iter().all(|a| a.3 == 0), "{what} on {backend}, {mode}: {cold:?}");
            assert_eq!(
                cold, warm,
                "{what} on {backend}, {mode}: an answer changed with {runs} warm-ups between them"
            );
            eprintln!(
                "{what} on {backend}, {mode}: {} answers identical; {runs} model warm-ups ran between them",
                cold.len()
            );
        }
    }
}

#[test]
fn keep_warm_needs_a_spinning_thread() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["serve", "--socket", "/nonexistent/t.sock", "--poll", "block", "--keep-warm-us", "50"])
        .arg("--model")
        .arg(repo_root().join("models/lobster_direction.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--keep-warm-us needs a spinning thread"), "{err}");
}
