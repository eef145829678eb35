//! Open-loop replay tells the server's latency, not the client's: benchmark-style. It
//! asserts what does not depend on the machine's load (every event answered once, in order,
//! the open-loop and keep-warm settings reported) and prints every number; the latency
//! ratios are asserted only when asked (`TICKINFER_TIMED_ASSERTS=1`, on a quiet machine:
//! twice the acceptance target in a release build, looser in a debug one). A timed
//! assertion in CI measured the machine instead: 864× on a VM busy with two builds.
//!
//! In one run, against an in-process server on the bundled model, `--server-poll spin`,
//! each open loop twice: as is, and with both ends kept warm while idle
//! (`--keep-warm-us 50 --server-keep-warm-us 50`, see `src/keep_warm.rs`):
//! - a LOBSTER file at light load (the real AMZN day at `--speed 100` when `../shared`
//!   is here, ≈ 325 events/s; else the bundled synthetic day at `--speed 1`, ≈ 500/s):
//!   open-loop p50 within 2× of the closed-loop window-1 p50 of the same events;
//! - a generated bursty stream (7 of 8 events within 10 µs of the previous) at
//!   `--speed 10`: open-loop p50 within 3× of closed loop.
//!
//! Run alone for the numbers docs/replay-and-recording.md quotes:
//! `cargo test --release --test replay_open_loop -- --nocapture`.
mod util;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use util::repo_root;

/// `tickinfer replay --model … --json` on `input`; the summary.
fn replay(input: &Path, format: &str, limit: usize, pacing: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    let text = util::run_ok(
        Command::new(env!("CARGO_BIN_EXE_tickinfer"))
            .args(["replay", "--format", format, "--json", "--server-poll", "spin"])
            .arg("--input")
            .arg(input)
            .arg("--model")
            .arg(repo_root().join("models/lobster_direction.toml"))
            .args(["--limit", &limit.to_string()])
            .args(pacing)
            .arg("--out")
            .arg(out.path())
            .env("RUST_LOG", "warn"),
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn us(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap() / 1e3
}

/// Both ends kept warm while idle (`--keep-warm-us 50` on the client, the server's too).
const KEEP_WARM: [&str; 4] = ["--keep-warm-us", "50", "--server-keep-warm-us", "50"];

/// Closed loop window 1, then open loop with `pacing`, then the same with both ends kept
/// warm: the p50s, each open loop's ratio to closed loop, and its schedule lag; every
/// answer OK and none lost. With each ratio, whether that open-loop report warned that
/// its numbers are the client's or the machine's (lag, full window).
fn closed_then_open(
    what: &str,
    input: &Path,
    format: &str,
    limit: usize,
    pacing: &[&str],
) -> [(f64, bool); 2] {
    let closed = replay(input, format, limit, &["--window", "1"]);
    let warm_pacing = [pacing, &KEEP_WARM[..]].concat();
    let opens = [replay(input, format, limit, pacing), replay(input, format, limit, &warm_pacing)];
    for s in [&closed, &opens[0], &opens[1]] {
        assert_eq!(s["events"], limit as u64, "{s}");
        assert_eq!((s["lost"].as_u64(), s["mismatched_ids"].as_u64()), (Some(0), Some(0)), "{s}");
        assert_eq!(s["by_status"][0][0], "0 ok", "{s}");
    }
    assert_eq!(closed["open_loop"].as_bool(), Some(false));
    assert_eq!((opens[0]["keep_warm_us"].as_u64(), opens[1]["keep_warm_us"].as_u64()), (None, Some(50)));
    let c = &closed["latency_ns"];
    eprintln!("{what}: closed loop window 1 p50 {:.2} µs p99 {:.2} µs", us(&c["p50"]), us(&c["p99"]));
    [(&opens[0], pacing), (&opens[1], &warm_pacing[..])].map(|(open, pacing)| {
        assert_eq!(open["open_loop"].as_bool(), Some(true));
        let (o, lag) = (&open["latency_ns"], &open["schedule_lag_ns"]);
        let ratio = o["p50"].as_f64().unwrap() / c["p50"].as_f64().unwrap();
        eprintln!(
            "  open loop {} window {}: p50 {:.2} µs p99 {:.2} µs (schedule lag p50 {:.2} p99 {:.2} µs; window \
             waits {}) | open/closed p50 {ratio:.2}; client {} {}; warnings {}",
            pacing.join(" "),
            open["window"],
            us(&o["p50"]),
            us(&o["p99"]),
            us(&lag["p50"]),
            us(&lag["p99"]),
            open["window_waits"]["episodes"],
            open["client_poll"],
            open["client_cores"],
            open["warnings"],
        );
        (ratio, open["warnings"].as_array().is_some_and(|w| !w.is_empty()))
    })
}

#[test]
fn open_loop_latency_matches_closed_loop_at_light_load_and_in_bursts() {
    let real = repo_root().join("../shared/data/lobster/LOBSTER_SampleFile_AMZN_2012-06-21_1.zip");
    let (lobster, speed, what) = if real.exists() {
        (real, "100", "real AMZN day, first 3000 events at --speed 100")
    } else {
        util::skip(
            "open loop on the real LOBSTER day",
            "../shared absent: the bundled synthetic day instead",
        );
        (
            repo_root().join("data/sample/SYNTH_2026-01-05_sample.zip"),
            "1",
            "bundled synthetic day at --speed 1",
        )
    };
    let light = closed_then_open(what, &lobster, "lobster", 3000, &["--speed", speed]);

    // Bursts of 8 events 10 µs apart, 2 ms between bursts: 7 in 8 within 30 µs of the previous.
    let dir = tempfile::tempdir().unwrap();
    let bursty = dir.path().join("bursty.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&bursty).unwrap());
    writeln!(f, "timestamp_ns,symbol,bid_price,ask_price,bid_size,ask_size").unwrap();
    for i in 0..4000u64 {
        let t = 1_000_000_000 + (i / 8) * 2_000_000 + (i % 8) * 10_000;
        let tick = (i * 7919 % 13) as f64 * 0.01;
        writeln!(f, "{t},BTC,{:.2},{:.2},{},{}", 100.0 + tick, 100.01 + tick, 1 + i % 7, 1 + i % 5).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let bursts = closed_then_open("bursty stream at --speed 10", &bursty, "csv", 4000, &["--speed", "10"]);

    // Acceptance (docs/replay-and-recording.md): 2× and 3× on a quiet machine, release build; asserted at twice
    // that. An unoptimised build's server is several times slower when cold (light load:
    // 3.4–11× measured here), so it is held only to what catches a client that blocks or
    // waits on answers (the defect this replaces measured 60 µs against 7.8, unflagged).
    // A run whose report warned (the client lagged, or a full window held sends back) has
    // said itself that it measured the machine: the ratio is then printed, not asserted —
    // what must never happen is a bad ratio the report does not explain.
    // Kept warm or not, the same bounds: keep-warm is what closes the light-load gap on a
    // VM (docs/serving.md, "Keeping warm"), but a run without it must not be unexplainably worse either.
    let (light_bound, burst_bound) = if cfg!(debug_assertions) { (20.0, 10.0) } else { (4.0, 6.0) };
    eprintln!("bounds: {light_bound}× and {burst_bound}× (debug build: {})", cfg!(debug_assertions));
    if std::env::var_os("TICKINFER_TIMED_ASSERTS").is_none() {
        util::skip(
            "the open/closed latency ratios",
            "printed above, asserted only with TICKINFER_TIMED_ASSERTS=1 on a quiet machine (speed targets \
             belong in benchmarks)",
        );
        return;
    }
    for (kept, (ratio, warned)) in ["", ", both ends kept warm"].iter().zip(light) {
        assert!(
            ratio <= light_bound || warned,
            "open/closed p50 {ratio:.2} at light load{kept}, unexplained (acceptance 2×)"
        );
    }
    for (kept, (ratio, warned)) in ["", ", both ends kept warm"].iter().zip(bursts) {
        assert!(
            ratio <= burst_bound || warned,
            "open/closed p50 {ratio:.2} on the bursty stream{kept}, unexplained (acceptance 3×)"
        );
    }
}
