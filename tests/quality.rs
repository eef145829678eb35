//! Live signal quality against replay's offline report: a stream replayed through
//! `tickinfer serve`, the server's live counts (`tickinfer_signal_outcomes_total`,
//! scored, not seen, pending, IC) equal replay's report count for count under the same
//! label rule. On the bundled synthetic sample (one symbol, and three symbols over two
//! connections in both stage modes, with horizons in events, in ms and both, and a flat
//! threshold), and on the real LOBSTER day when `../shared` is here (skipped with a
//! message otherwise). Also: a manifest without `[label]` is served, said so and not
//! scored; `tickinfer stats` shows the last N.
mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use util::repo_root;
use util::server::{Client, Server};

fn tickinfer(args: &[&str]) -> String {
    util::run_ok(Command::new(env!("CARGO_BIN_EXE_tickinfer")).args(args))
}

fn sample() -> PathBuf {
    repo_root().join("data/sample/SYNTH_2026-01-05_sample.zip")
}

/// `models/lobster_direction.toml` with its `[label]` section replaced by `label`
/// (empty: none), written into `dir`.
fn manifest_with_label(dir: &Path, label: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("models/lobster_direction.toml")).unwrap();
    let head = text.split("\n[label]").next().unwrap();
    let onnx = repo_root().join("models/lobster_direction.onnx");
    let text =
        head.replace("onnx = \"lobster_direction.onnx\"", &format!("onnx = {:?}", onnx.to_str().unwrap()));
    let path = dir.join("labelled.toml");
    std::fs::write(&path, format!("{text}\n{label}\n")).unwrap();
    path
}

/// The sample's events as a CSV of three symbols (event i is symbol i % 3's), so that
/// replay sends them over its connections by symbol.
fn three_symbol_csv(dir: &Path) -> PathBuf {
    let mut table = tickinfer::replay::source::SymbolTable::new(&[]).unwrap();
    let src =
        tickinfer::replay::source::load(&sample(), tickinfer::replay::source::Format::Lobster, &mut table)
            .unwrap();
    let mut csv = String::from("timestamp_ns,symbol_id,bid_price,ask_price,bid_size,ask_size\n");
    for (i, e) in src.events.iter().enumerate() {
        let r = &e.req;
        csv += &format!(
            "{},{},{},{},{},{}\n",
            { r.timestamp_ns },
            i % 3,
            { r.bid_price } as f64 / 1e4,
            { r.ask_price } as f64 / 1e4,
            { r.bid_size },
            { r.ask_size }
        );
    }
    let path = dir.join("three.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

/// The label-rule flags of a manifest's `[label]`, for a replay against `--socket`.
fn rule_flags(manifest: &Path) -> Vec<String> {
    let m = tickinfer::manifest::Manifest::load(manifest).unwrap();
    let rule = m.label.expect("a [label] section").rule;
    let mut flags = vec!["--flat-bps".to_string(), rule.flat_bps.to_string()];
    if let Some(k) = rule.horizon_events {
        flags.extend(["--horizon".to_string(), k.to_string()]);
    }
    if let Some(h) = rule.horizon_ms {
        flags.extend(["--horizon-ms".to_string(), h.to_string()]);
    }
    flags
}

/// `tickinfer_signal_*` samples of a server's `/metrics`, by their line's name and labels.
fn signal_metrics(server: &Server) -> BTreeMap<String, f64> {
    let addr = server.metrics_address();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("tickinfer_signal_"))
        .map(|l| {
            let (name, v) = l.rsplit_once(' ').unwrap();
            (name.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

/// Serve `model` (with `server_args`), replay `input` through it against the socket with
/// `replay_args` and the manifest's label rule, and check the server's live counts equal
/// the replay's report: every cell of predicted × realised in `/metrics` and in
/// `tickinfer stats`, scored, not seen, pending, IC. The replay's summary.
fn live_equals_replay(
    model: &Path,
    input: &Path,
    format: &str,
    server_args: &[&str],
    replay_args: &[&str],
) -> serde_json::Value {
    let model_arg = model.to_str().unwrap();
    let mut args = vec!["--model", model_arg, "--metrics", "127.0.0.1:0"];
    args.extend(server_args);
    let server = Server::start(&args);
    let out = tempfile::tempdir().unwrap();
    let flags = rule_flags(model);
    #[rustfmt::skip]
    let mut replay: Vec<&str> = vec![
        "replay", "--socket", server.socket.to_str().unwrap(), "--input", input.to_str().unwrap(),
        "--format", format, "--client-poll", "block", "--out", out.path().to_str().unwrap(), "--json",
    ];
    replay.extend(flags.iter().map(String::as_str));
    replay.extend(replay_args);
    let s: serde_json::Value = serde_json::from_str(&tickinfer(&replay)).unwrap();
    assert_eq!(s["lost"], 0);
    let q = &s["quality"];
    let ok = s["by_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "0 ok")
        .map_or(0, |p| p[1].as_u64().unwrap());
    // Stats are published every 200 ms: wait until every answer is in.
    let stats = server.stats_when(|r| r["signal_quality"]["answers"].as_u64() == Some(ok));
    let live = &stats["signal_quality"];
    let metrics = signal_metrics(&server);
    let model_name = live["model"].as_str().unwrap();
    let names = ["sell", "flat", "buy"];
    for (r, realised) in names.iter().enumerate() {
        for (p, predicted) in names.iter().enumerate() {
            let want = q["confusion"][r][p].as_u64().unwrap();
            assert_eq!(
                live["outcomes"][r][p].as_u64().unwrap(),
                want,
                "tickinfer stats: predicted {predicted}, realised {realised}"
            );
            let key = format!(
                "tickinfer_signal_outcomes_total{{model=\"{model_name}\",role=\"primary\",predicted=\"{predicted}\",realised=\"{realised}\"}}"
            );
            assert_eq!(metrics[&key], want as f64, "{key}");
        }
    }
    let scored = q["evaluated"].as_u64().unwrap();
    assert!(scored > 1000, "a real test scores many answers: {q}");
    assert_eq!(live["since_load"]["scored"].as_u64(), Some(scored));
    assert_eq!(
        metrics[&format!("tickinfer_signal_scored_total{{model=\"{model_name}\",role=\"primary\"}}")],
        scored as f64
    );
    assert_eq!(live["pending"], q["pending"]);
    assert_eq!(live["unscored"]["not_seen"], q["not_seen"]);
    assert_eq!(live["since_load"]["unscored"], q["not_seen"], "nothing else unscored");
    assert_eq!(live["since_load"]["macro_f1"], q["macro_f1"]);
    assert_eq!(live["since_load"]["hit_rate"], q["hit_rate"]);
    // The same integer sums on both sides: the same IC to the last bit.
    assert_eq!(live["since_load"]["ic"], q["ic"]);
    eprintln!(
        "{}: {scored} scored live = replay, {} not seen, {} pending; macro-F1 {:.4}, hit rate {:.4}, IC {:.4}",
        input.file_name().unwrap().to_string_lossy(),
        q["not_seen"],
        q["pending"],
        q["macro_f1"].as_f64().unwrap(),
        q["hit_rate"].as_f64().unwrap(),
        q["ic"].as_f64().unwrap_or(f64::NAN)
    );
    s
}

#[test]
fn live_counts_equal_replay_on_the_bundled_sample() {
    let s = live_equals_replay(
        &repo_root().join("models/lobster_direction.toml"),
        &sample(),
        "lobster",
        &["--mode", "pipeline"],
        &["--window", "32"],
    );
    assert_eq!(s["quality"]["horizon_events"], 10);
    assert_eq!(s["quality"]["not_seen"], 0, "an events horizon never expires");
    assert_eq!(s["quality"]["pending"], 10, "the last 10 answers wait for their horizon");
}

/// Three symbols over two connections: the server scores in its scoring thread's order,
/// whatever the interleaving of the connections, and each symbol's horizon counts only
/// its own events. Horizons in events, in ms (the requests' timestamps), and both, with a
/// flat threshold; inline and pipeline stages.
#[test]
fn live_counts_equal_replay_across_connections_and_rules() {
    let dir = tempfile::tempdir().unwrap();
    let csv = three_symbol_csv(dir.path());
    for (label, mode) in [
        ("[label]\nhorizon_events = 7\nflat_bps = 0.0", "inline"),
        ("[label]\nhorizon_ms = 15\nflat_bps = 0.5", "pipeline"),
        ("[label]\nhorizon_events = 2\nhorizon_ms = 20\nflat_bps = 0.25", "inline"),
    ] {
        let model = manifest_with_label(dir.path(), label);
        let s = live_equals_replay(
            &model,
            &csv,
            "csv",
            &["--mode", mode],
            &["--connections", "2", "--window", "16"],
        );
        if label.contains("horizon_ms") {
            assert!(
                s["quality"]["not_seen"].as_u64().unwrap() > 0,
                "{label}: quiet spells exceed the horizon"
            );
        }
    }
}

/// The acceptance test: the real AMZN day through `serve` (the stateful default, whose
/// state the whole day warms); the server's live counts equal replay's report.
#[test]
fn live_counts_equal_replay_on_the_real_lobster_day_when_present() {
    let zip = repo_root().join("../shared/data/lobster/LOBSTER_SampleFile_AMZN_2012-06-21_1.zip");
    if !zip.exists() {
        return util::skip(
            "live_counts_equal_replay_on_the_real_lobster_day_when_present",
            "../shared/data/lobster is not present",
        );
    }
    let s = live_equals_replay(
        &repo_root().join("models/lobster_stateful.toml"),
        &zip,
        "lobster",
        &["--mode", "pipeline"],
        &["--window", "32"],
    );
    assert!(s["events"].as_u64().unwrap() > 57_000);
    assert_eq!(s["by_status"][0][1], s["events"], "every answer OK: {}", s["by_status"]);
}

#[test]
fn a_manifest_without_a_label_is_served_said_so_and_not_scored() {
    let dir = tempfile::tempdir().unwrap();
    let model = manifest_with_label(dir.path(), "");
    let model_arg = model.to_str().unwrap();
    let server = Server::start(&["--model", model_arg]);
    let mut c = Client::connect(&server.socket).unwrap();
    let reqs: Vec<_> = (0..50).map(|i| util::stream_request(i, 3)).collect();
    c.send(&reqs).unwrap();
    for _ in 0..50 {
        assert_eq!({ c.recv().unwrap().status }, 0);
    }
    let stats = server.stats_when(|r| r["signal_quality"]["answers"].as_u64() == Some(50));
    let q = &stats["signal_quality"];
    assert_eq!(q["rule"], serde_json::Value::Null);
    assert_eq!(q["unscored"]["no_label_rule"], 50);
    assert_eq!(q["since_load"]["scored"], 0);
    assert!(server.log().contains("has no [label] section in its manifest"), "{}", server.log());
    let text = tickinfer(&["stats", "--socket", server.socket.to_str().unwrap()]);
    assert!(text.contains("not scored (its manifest has no [label] section"), "{text}");
}

#[test]
fn stats_show_the_last_window_beside_since_load() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server.socket).unwrap();
    let n = 400;
    let reqs: Vec<_> = (0..n).map(|i| util::stream_request(i, (i % 4) as u16)).collect();
    for chunk in reqs.chunks(100) {
        c.send(chunk).unwrap();
        for _ in chunk {
            assert_eq!({ c.recv().unwrap().status }, 0);
        }
    }
    // 4 symbols, 100 events each, horizon 10: 90 scored per symbol, 10 pending.
    let stats = server.stats_when(|r| r["signal_quality"]["answers"].as_u64() == Some(n));
    let q = &stats["signal_quality"];
    assert_eq!((q["since_load"]["scored"].as_u64(), q["pending"].as_u64()), (Some(360), Some(40)));
    assert_eq!(q["last"], q["since_load"], "fewer than the window resolved: the same set");
    assert_eq!(q["since_load"]["coverage"], 1.0);
    let text = tickinfer(&["stats", "--socket", server.socket.to_str().unwrap()]);
    for want in [
        "signal quality of lobster_direction: realised = mid 10 same-symbol events later, flat within 0 bps; \
         reference macro-F1 0.3686",
        "answers 400, scored 360, pending 40, unscored 0",
        "last 360 ",
        "since load",
        "always-majority",
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
}

/// A reload starts the counts afresh for the new model: the old model's pending answers
/// are dropped, and the new manifest's rule (here none) applies from its first answer.
#[test]
fn a_reload_starts_the_counts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let unlabelled = manifest_with_label(dir.path(), "");
    let server = Server::start(&[]);
    let socket = server.socket.to_str().unwrap();
    let mut c = Client::connect(&server.socket).unwrap();
    let reqs: Vec<_> = (0..60).map(|i| util::stream_request(i, 1)).collect();
    c.send(&reqs[..40]).unwrap();
    for _ in 0..40 {
        c.recv().unwrap();
    }
    let before = server.stats_when(|r| r["signal_quality"]["answers"] == 40);
    assert_eq!(
        (
            before["signal_quality"]["since_load"]["scored"].as_u64(),
            before["signal_quality"]["pending"].as_u64()
        ),
        (Some(30), Some(10))
    );
    tickinfer(&["reload", "--socket", socket, "--model", unlabelled.to_str().unwrap()]);
    c.send(&reqs[40..]).unwrap();
    for _ in 0..20 {
        c.recv().unwrap();
    }
    let after = server.stats_when(|r| r["signal_quality"]["answers"] == 20);
    let q = &after["signal_quality"];
    assert_eq!(q["rule"], serde_json::Value::Null, "the new manifest has no [label]");
    assert_eq!(
        (q["unscored"]["no_label_rule"].as_u64(), q["since_load"]["scored"].as_u64(), q["pending"].as_u64()),
        (Some(20), Some(0), Some(0))
    );
}
